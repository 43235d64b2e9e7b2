"""What the module transforms cannot prove they keep, they leave alone and name: hooks,
weight_norm / spectral_norm / parametrize, subclasses with their own forward, children of
an untraced container that run outside its chain. With an example input, a transform
checks its result before returning it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import onebyone as obo
from onebyone.nn import Conv1x1
from onebyone.transforms import FusedConv1x1, FusedConv2d, VerificationError
from onebyone.transforms import fold as fold_module
from onebyone.transforms import merge as merge_module
from transform_models import SharedOutput, assert_unchanged, snapshot

from helpers import randomize_norms

TRANSFORMS: dict[str, Callable[..., tuple[nn.Module, obo.PassReport]]] = {
    "fold": lambda model, x: obo.fold_batchnorm(model, x, with_report=True),
    "fuse": lambda model, x: obo.fuse_epilogues(model, x, with_report=True),
    "merge": lambda model, x: obo.merge_pointwise(model, x, with_report=True),
}


def _layers(first: type[nn.Conv2d] = nn.Conv2d) -> nn.Sequential:
    """Every pattern once: conv -> BN (fold), -> ReLU (fuse), 1x1 -> 1x1 -> BN (merge)."""
    return nn.Sequential(
        first(3, 8, 3, padding=1) if first is nn.Conv2d else first(3, 8, 1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        first(8, 8, 1),
        nn.Conv2d(8, 6, 1),
        nn.BatchNorm2d(6),
    )


class Wrapped(nn.Module):
    """The layers called as one container, behind a Python branch torch.fx cannot trace."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y if bool(y.sum() > -1e30) else -y


class Stages(nn.Module):
    """A backbone that runs the container's children one by one and returns every output
    (and does not trace)."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs if bool(x.sum() > -1e30) else outs[::-1]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 9, 9, generator=g), torch.randn(3, 3, 9, 9, generator=g)


def _check_same(model: nn.Module, result: nn.Module, x: torch.Tensor) -> None:
    report = obo.verify(model, result, x, rtol=1e-5, atol=1e-6)
    assert report.ok, report


def _hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    return out * 2 + 1


def _pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
    return (args[0] - 0.5,)


# where the hook sits -> the transforms that would change that module
HOOKED = {"0": ("fold", "fuse"), "1": ("fold", "fuse"), "2": ("fuse",), "3": ("fuse", "merge"),
          "5": ("fold", "fuse", "merge")}  # fmt: skip


@pytest.mark.parametrize("pre", [False, True], ids=["hook", "pre-hook"])
@pytest.mark.parametrize("where", [*HOOKED, "model"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_hooks_keep_their_module_and_are_named(name: str, where: str, pre: bool) -> None:
    model = randomize_norms(_layers())
    target = model if where == "model" else model.get_submodule(where)
    if pre:
        target.register_forward_pre_hook(_pre_hook)
    else:
        target.register_forward_hook(_hook)
    before = snapshot(model)
    x, other = _inputs()
    result, report = TRANSFORMS[name](model, x)
    _check_same(model, result, other)
    assert_unchanged(model, before)
    if where in HOOKED and name in HOOKED[where]:
        assert any("hook" in why for _, why in report.skipped), report
    if where == "model" and name == "fuse":  # a graph module would not run the model's hook
        assert not report.traced and type(result) is nn.Sequential
        assert any("hook" in why for w, why in report.skipped if w == "model"), report
    assert report.count > 0  # what the hooks do not reach is still transformed


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_model_with_its_own_hook_is_not_turned_into_a_graph_module(name: str) -> None:
    # the folded copy of a convolution whose output is also read elsewhere needs a graph
    # rewrite; so do fused epilogues and merged siblings
    model = randomize_norms(SharedOutput())
    model.register_forward_hook(_hook)
    x = torch.randn(2, 4, 7, 7)
    result, report = TRANSFORMS[name](model, x)
    assert type(result) is SharedOutput
    _check_same(model, result, torch.randn(3, 4, 7, 7))
    if name != "merge":
        assert any("hook" in why for _, why in report.skipped), report


def _weight_norm(conv: nn.Module) -> None:
    nn.utils.weight_norm(conv)
    with torch.no_grad():
        conv.weight_g.mul_(3.0)  # the norm now scales the weight: dropping it shows


def _spectral_norm(conv: nn.Module) -> None:
    nn.utils.spectral_norm(conv)


def _parametrized(conv: nn.Module) -> None:
    parametrize.register_parametrization(conv, "weight", nn.Tanh())


NORMS = {
    "weight_norm": _weight_norm,
    "spectral_norm": _spectral_norm,
    "parametrized": _parametrized,
    "weight_norm (new style)": lambda conv: nn.utils.parametrizations.weight_norm(conv),
}


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_normalised_weight_is_left_alone_and_named(name: str, norm: str) -> None:
    model = _layers()
    for i in ("0", "4"):  # one before a norm, one in the middle of a 1x1 chain
        NORMS[norm](model.get_submodule(i))
    model = randomize_norms(model)
    before = snapshot(model)
    x, other = _inputs()
    result, report = TRANSFORMS[name](model, x)
    _check_same(model, result, other)
    assert_unchanged(model, before)
    expected = "parametrized" if "new style" in norm else norm
    assert any(expected in why for _, why in report.skipped), report


@pytest.mark.parametrize("name", TRANSFORMS)
def test_children_run_outside_their_container_are_not_rewritten(name: str) -> None:
    x, other = _inputs()
    backbone = Stages(randomize_norms(_layers())).eval()
    result, report = TRANSFORMS[name](backbone, x)
    _check_same(backbone, result, other)  # every stage's output, not only the last
    assert report.count == 0 and not report.traced
    assert any("outside the container's chain" in why for _, why in report.skipped), report
    # the same layers called as one container: shown on the example, and transformed
    wrapped = Wrapped(backbone.layers).eval()
    result, report = TRANSFORMS[name](wrapped, x)
    _check_same(wrapped, result, other)
    assert report.count > 0
    # without an example nothing shows how the container runs: nothing changes
    with_no_example = getattr(obo, {"fold": "fold_batchnorm", "fuse": "fuse_epilogues",
                                    "merge": "merge_pointwise"}[name])  # fmt: skip
    kept, report = with_no_example(wrapped, with_report=True)
    assert report.count == 0 and any("pass example_input" in w for _, w in report.skipped)
    _check_same(wrapped, kept, other)


def _std_conv() -> type[nn.Conv2d]:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    from onebyone.models.external import import_timm

    import_timm()
    from timm.layers import StdConv2d

    return StdConv2d  # type: ignore[no-any-return]


def test_conversions_refuse_a_subclass_with_its_own_forward() -> None:
    std_conv = _std_conv()
    conv = std_conv(8, 4, 1)
    for convert in (Conv1x1.from_conv2d, FusedConv2d.from_conv, FusedConv1x1.from_module):
        with pytest.raises(TypeError, match=r"Received StdConv2d, which defines its own forward"):
            convert(conv)

    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"Received Scaled, which defines its own forward"):
        Conv1x1.from_linear(Scaled(4, 3))


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
def test_conversions_refuse_hooks_and_normalised_weights() -> None:
    conv = nn.utils.weight_norm(nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError, match=r"`module`.*Received Conv2d: under weight_norm"):
        Conv1x1.from_conv2d(conv)
    hooked = nn.Conv2d(8, 4, 1)
    hooked.register_forward_hook(_hook)
    with pytest.raises(ValueError, match=r"`conv`.*Received Conv2d: has a forward hook"):
        FusedConv1x1.from_module(hooked)
    parametrized = nn.Conv2d(8, 4, 1)
    nn.utils.parametrize.register_parametrization(parametrized, "weight", nn.Identity())
    with pytest.raises(ValueError, match=r"Received ParametrizedConv2d: parametrized \(weight"):
        Conv1x1.from_conv2d(parametrized)


@pytest.mark.parametrize("wrap", [False, True], ids=["traced", "untraced"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_timm_std_conv_is_left_alone(name: str, wrap: bool) -> None:
    layers = randomize_norms(_layers(first=_std_conv()))
    model = Wrapped(layers).eval() if wrap else layers
    x, other = _inputs()
    result, report = TRANSFORMS[name](model, x)
    _check_same(model, result, other)
    # traced (the subclass is one node of the graph) or not, it is named
    assert any("StdConv2d defines its own forward" in w for _, w in report.skipped), report


@pytest.mark.parametrize("name", TRANSFORMS)
def test_a_result_that_differs_on_the_example_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong_fold(weight: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = real_fold(weight, *args)  # type: ignore[arg-type]
        return 1.5 * w, b

    def wrong_merge(*args: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = real_merge(*args)  # type: ignore[arg-type]
        return 1.5 * w, b

    real_fold, real_merge = fold_module.fold_bn_weights, merge_module.merge_pointwise_weights
    monkeypatch.setattr(fold_module, "fold_bn_weights", wrong_fold)
    monkeypatch.setattr(merge_module, "merge_pointwise_weights", wrong_merge)
    model = randomize_norms(_layers())
    before = snapshot(model)
    transform = {"fold": "fold_batchnorm", "fuse": "fuse_epilogues", "merge": "merge_pointwise"}
    with pytest.raises(VerificationError, match=rf"{transform[name]} refused: .*differs"):
        TRANSFORMS[name](model, _inputs()[0])
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_global_module_hooks_leave_the_model_as_it_is(name: str) -> None:
    model = randomize_norms(_layers())
    x, other = _inputs()
    handle = nn.modules.module.register_module_forward_hook(lambda m, args, out: None)
    try:
        result, report = TRANSFORMS[name](model, x)
    finally:
        handle.remove()
    assert report.count == 0
    assert any("global module forward hook" in why for _, why in report.skipped), report
    _check_same(model, result, other)


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "convert",
    [obo.to_channels_last, lambda m: obo.transforms.cast(m, torch.float64)],
    ids=["to_channels_last", "cast"],
)
def test_layout_and_dtype_copy_a_weight_norm_model(convert: Callable[..., nn.Module]) -> None:
    model = _layers()
    _weight_norm(model.get_submodule("0"))
    model = randomize_norms(model)
    x, _ = _inputs()
    _check_same(model, convert(model), x)  # it copied (no deepcopy error) and kept the norm
