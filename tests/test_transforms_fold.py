"""fold_batchnorm: eval-mode batch norm folded into the layer before it."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import onebyone as obo
from onebyone.nn import Conv1x1
from onebyone.transforms import fold_bn_weights, fold_conv_bn
from transform_models import (
    BN_TYPES,
    SMALLER_MODELS,
    CalledTwice,
    LinearHead,
    ResidualBlock,
    SharedOutput,
    Untraceable,
    assert_unchanged,
    conv_bn_relu,
    snapshot,
    tally,
)

from helpers import randomize_norms


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, BN_TYPES) for m in model.modules())


def test_fold_bn_weights_matches_the_norm_of_the_convolution() -> None:
    conv = nn.Conv2d(6, 8, 3, groups=2, padding=1, dtype=torch.float64)
    bn = randomize_norms(nn.BatchNorm2d(8, eps=1e-3).double())
    w, b = fold_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    expected = bn(conv(x))
    got = torch.nn.functional.conv2d(x, w, b, padding=1, groups=2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fold_bn_weights_without_bias_or_affine() -> None:
    weight = torch.randn(4, 3, dtype=torch.float64)
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    w, b = fold_bn_weights(weight, None, mean, var, 1e-5, None, None)
    scale = 1 / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(w, weight * scale[:, None])
    torch.testing.assert_close(b, -mean * scale)


def test_fold_bn_weights_rejects_mismatched_statistics() -> None:
    with pytest.raises(ValueError, match=r"argument `running_mean`.*Expected shape \(4,\)"):
        fold_bn_weights(torch.ones(4, 3), None, torch.ones(5), torch.ones(4), 1e-5, None, None)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "bias"),
    [
        (3, 1, 1, 1, 1, False),
        (3, 2, 1, 1, 1, True),
        ((3, 5), 1, 2, 1, 1, False),
        (3, 1, 2, 2, 3, True),
        (3, 1, 1, 1, 6, False),  # depthwise
        (1, 2, 0, 1, 1, False),
    ],
)
def test_conv_bn_relu_folds_for_every_geometry(
    kernel: int, stride: int, padding: int, dilation: int, groups: int, bias: bool
) -> None:
    k = 6 if groups == 6 else 12
    model = conv_bn_relu(6, k, kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias)  # fmt: skip
    before = snapshot(model)
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 1 and report.traced
    assert isinstance(folded, nn.Sequential) and isinstance(folded[1], nn.Identity)
    assert folded[0].bias is not None and _norms(folded) == 0
    x = torch.randn(2, 6, 11, 13)
    assert obo.verify(model, folded, x, rtol=1e-5).max_rel < 1e-5
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("conv", "bn", "shape"),
    [
        (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), (2, 3, 10)),
        (nn.Conv3d(3, 5, 3, padding=1), nn.BatchNorm3d(5), (1, 3, 4, 5, 6)),
        (Conv1x1(3, 5, bias=False, stride=2), nn.BatchNorm2d(5), (2, 3, 7, 7)),
        (nn.Linear(3, 5), nn.BatchNorm1d(5), (4, 3)),
    ],
    ids=["conv1d", "conv3d", "conv1x1", "linear"],
)
def test_other_layers_fold(conv: nn.Module, bn: nn.Module, shape: tuple[int, ...]) -> None:
    model = randomize_norms(nn.Sequential(conv, bn))
    x = torch.randn(shape)
    folded = obo.fold_batchnorm(model, x)
    assert type(folded[0]) is type(conv) and _norms(folded) == 0
    assert obo.verify(model, folded, x).max_rel < 1e-5


def test_residual_block_keeps_its_class_and_folds_every_norm() -> None:
    model = randomize_norms(ResidualBlock(projection=True))
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert type(folded) is ResidualBlock and report.count == 4
    assert sorted(report.applied) == sorted(
        ["conv1 <- bn1", "conv2 <- bn2", "conv3 <- bn3", "shortcut.0 <- shortcut.1"]
    )
    assert _norms(folded) == 0
    assert obo.verify(model, folded, torch.randn(2, 16, 8, 8)).ok


def test_shared_conv_output_folds_into_a_copy() -> None:
    model = randomize_norms(SharedOutput())
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert isinstance(folded, fx.GraphModule)
    assert report.count == 1 and "output shared" in report.applied[0]
    # the original convolution still serves the other user, the copy carries the norm
    assert isinstance(folded.get_submodule("conv"), nn.Conv2d)
    assert _norms(folded) == 0
    assert obo.verify(model, folded, torch.randn(2, 4, 9, 9)).max_rel < 1e-5


def test_module_called_twice_folds_each_call_separately() -> None:
    model = randomize_norms(CalledTwice())
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 2 and _norms(folded) == 0
    assert obo.verify(model, folded, torch.randn(2, 4, 5, 5)).max_rel < 1e-5


def test_untraceable_model_folds_inside_sequential_and_says_why() -> None:
    model = randomize_norms(Untraceable())
    x = torch.randn(1, 3, 8, 8)
    folded, report = obo.fold_batchnorm(model, x, with_report=True)
    assert not report.traced and report.count == 1
    assert any("does not trace" in why for _, why in report.skipped)
    assert _norms(folded) == 0
    assert obo.verify(model, folded, x).max_rel < 1e-5
    # without an example nothing shows that `body` runs its children as one chain
    kept, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 0 and _norms(kept) == 1
    assert "pass example_input" in dict(report.skipped)["body.1"]


def test_linear_then_batchnorm1d_folds_and_the_head_is_exact() -> None:
    model = randomize_norms(LinearHead())
    x = torch.randn(4, 8, 5, 5)
    folded, report = obo.fold_batchnorm(model, x, with_report=True)
    assert report.applied == ["fc1 <- bn"]
    assert obo.verify(model, folded, x).max_rel < 1e-5


def test_linear_on_3d_activations_is_not_folded_when_the_example_shows_it() -> None:
    # BatchNorm1d normalises dim 1; a Linear on (N, L, F) maps dim 2: not foldable
    model = randomize_norms(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5)))
    x = torch.randn(2, 5, 5)
    folded, report = obo.fold_batchnorm(model, x, with_report=True)
    assert report.count == 0 and "not (N, F)" in report.skipped[0][1]
    assert obo.verify(model, folded, x).max_abs == 0.0


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(Conv1x1(3, 4, activation="relu"), nn.BatchNorm2d(4)), "activation"),
        (
            nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)),
            "running",
        ),
        (nn.Sequential(nn.MaxPool2d(2), nn.BatchNorm2d(3)), "not a convolution"),
    ],
    ids=["activation-between", "no-running-stats", "after-pooling"],
)
def test_unfoldable_pairs_are_reported(model: nn.Module, reason: str) -> None:
    model = randomize_norms(model)
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 0
    assert reason in report.skipped[0][1]
    assert obo.verify(model, folded, torch.randn(2, 3, 6, 6)).max_abs == 0.0


def test_conv1x1_called_with_a_residual_is_not_folded() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = Conv1x1(4, 4)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x, residual=x))

    model = randomize_norms(M())
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 0 and "residual" in report.skipped[0][1]
    assert obo.verify(model, folded, torch.randn(1, 4, 3, 3)).max_abs == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_is_kept(dtype: torch.dtype) -> None:
    model = conv_bn_relu().to(dtype)
    folded = obo.fold_batchnorm(model)
    assert {p.dtype for p in folded.parameters()} == {dtype}
    x = torch.randn(2, 6, 7, 7, dtype=dtype)
    assert obo.verify(model, folded, x).ok


def test_training_mode_is_refused() -> None:
    model = conv_bn_relu().train()
    with pytest.raises(ValueError, match=r"argument `model`\. Expected a model in eval mode"):
        obo.fold_batchnorm(model)


def test_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError, match=r"argument `model`\. Expected a torch.nn.Module"):
        obo.fold_batchnorm("resnet50")  # type: ignore[call-overload]


def test_fold_conv_bn_refuses_a_mismatched_norm() -> None:
    with pytest.raises(ValueError, match=r"argument `bn`.*has 5 channels, the layer 4"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5).eval())


@pytest.mark.parametrize("name", SMALLER_MODELS)
def test_every_builtin_model_folds_exactly(name: str) -> None:
    model = randomize_norms(obo.create_model(name))
    before = snapshot(model)
    x = torch.randn(1, 3, 32, 32)
    folded, report = obo.fold_batchnorm(model, x, with_report=True)
    assert report.traced
    counts = tally(folded)
    assert counts.batch_norms == 0
    assert report.count == _norms(model)
    assert obo.verify(model, folded, x).ok
    assert_unchanged(model, before)


class _SharedNorm(nn.Module):
    """One batch norm after two convolutions: ``bn(c1(x)) * bn(c2(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(3, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c1(x)) * self.bn(self.c2(x))


def test_a_norm_shared_by_two_convolutions_folds_into_each() -> None:
    model = randomize_norms(_SharedNorm())
    x = torch.randn(2, 3, 7, 7)
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 2
    assert obo.verify(model, folded, x).max_rel < 1e-5
    fused = obo.fuse_epilogues(model)
    assert obo.verify(model, fused, x).max_rel < 1e-5


def test_linear_then_batchnorm1d_without_an_example_is_left_alone() -> None:
    # the Linear's output layout decides foldability: (N, F) folds, (N, C, L) does not
    model = randomize_norms(nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5)))
    folded, report = obo.fold_batchnorm(model, with_report=True)
    assert report.count == 0
    assert "example_input" in report.skipped[0][1]
    x = torch.randn(2, 5, 5)  # (N, C, L): folding would be wrong by about 1
    assert obo.verify(model, folded, x).max_abs == 0.0
    folded_2d = obo.fold_batchnorm(model, torch.randn(3, 5))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in folded_2d.modules()) == 0
