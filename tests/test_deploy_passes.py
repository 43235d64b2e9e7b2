"""The 1x1 algebra on the ATen graph: a 1x1 merged into the convolution next to it, and
parallel branches summed into one convolution (``onebyone.deploy.passes``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import nn

from onebyone.deploy import optimize
from onebyone.deploy.capture import capture
from onebyone.deploy.passes import (
    CONVOLUTIONS,
    NORM,
    fold_norms,
    merge_branches,
    merge_pointwise,
)
from onebyone.deploy.program import Program
from onebyone.geometry import is_pointwise
from onebyone.transforms.branches import (
    diagonal_kernel,
    kernel_then_pointwise,
    pad_kernel,
    pointwise_then_kernel,
    sum_branch_weights,
)
from onebyone.transforms.report import PassReport

from helpers import calibrate_norms, randomize_norms

# float32 rounding of a few layers, relative to the output's largest value
EXACT = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def run_passes(
    model: nn.Module, x: torch.Tensor, *passes: Callable[[Program], PassReport]
) -> tuple[torch.export.ExportedProgram, list[PassReport]]:
    cap = capture(model, (x,))
    assert cap.program is not None, cap.attempts
    program = Program(cap.program)
    reports = [run(program) for run in passes]
    program.finish()
    return cap.program, reports


def count(program: torch.export.ExportedProgram, targets: object) -> int:
    wanted = set(targets)  # type: ignore[call-overload]
    return sum(n.op == "call_function" and n.target in wanted for n in program.graph.nodes)


def check_exact(model: nn.Module, program: torch.export.ExportedProgram, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, actual = model(x), program.module()(x)
    assert relative_error(actual, expected) < EXACT


# ------------------------------------------------------------------ the predicate


@pytest.mark.parametrize(
    ("kernel", "padding", "expected"),
    [
        ((1, 1), (0, 0), True),
        (1, 0, True),
        ((1, 1), "valid", True),
        ((1, 1), "same", True),
        ((3, 3), (0, 0), False),  # the case the ATen merge once took for a 1x1
        ((1, 3), (0, 0), False),
        ((1, 1), (1, 1), False),
        ((1, 1), (0, 1), False),
    ],
)
def test_is_pointwise_needs_a_1x1_kernel_and_no_padding(
    kernel: object, padding: object, expected: bool
) -> None:
    assert is_pointwise(kernel, padding) is expected


# ------------------------------------------------------------------ tensor math


def test_branch_math_matches_the_branches_summed() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    w3, w1 = torch.randn(6, 3, 3, 3).double(), torch.randn(6, 3, 1, 1).double()
    b3, s = torch.randn(6).double(), torch.rand(6).double() + 0.5
    conv = nn.functional.conv2d
    expected = conv(x, w3, b3, padding=1, groups=2) + s.view(1, -1, 1, 1) * conv(x, w1, groups=2)
    expected = expected + 2.0 * x  # the identity, as a grouped diagonal kernel
    identity = diagonal_kernel(torch.ones(6).double(), groups=2)
    w, b = sum_branch_weights(
        [w3, w1, identity], [b3, None, None], [torch.ones(6), s, torch.full((6,), 2.0)], (3, 3)
    )
    torch.testing.assert_close(conv(x, w, b, padding=1, groups=2), expected)
    with pytest.raises(ValueError, match="kernel_size"):
        pad_kernel(torch.ones(1, 1, 2, 2), (3, 3))


def test_chain_math_matches_the_layers_in_turn() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 10, 10, dtype=torch.float64)
    a, ab = torch.randn(7, 5, 1, 1).double(), torch.randn(7).double()
    k, kb = torch.randn(3, 7, 3, 3).double(), torch.randn(3).double()
    conv = nn.functional.conv2d
    w, b = pointwise_then_kernel(a, ab, k, kb)  # exact: the k x k does not pad
    torch.testing.assert_close(conv(x, w, b), conv(conv(x, a, ab), k, kb))
    k2, k2b = torch.randn(7, 5, 3, 3).double(), torch.randn(7).double()
    a2, a2b = torch.randn(4, 7).double(), torch.randn(4).double()
    w, b = kernel_then_pointwise(k2, k2b, a2, a2b)
    expected = conv(conv(x, k2, k2b, stride=2, padding=1), a2[:, :, None, None], a2b)
    torch.testing.assert_close(conv(x, w, b, stride=2, padding=1), expected)


# ------------------------------------------------------------------ 1x1 next to k x k


def test_the_issue_model_merges_a_3x3_and_a_1x1_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 8, 12, 12)
    fast, report = optimize(model, x, engine="torch", measure=False)
    merge = next(p for p in report.passes if p.name == "merge_pointwise")
    assert merge.count == 1, merge
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < EXACT
        assert relative_error(fast(x[:1]), model(x[:1])) < EXACT


@pytest.mark.parametrize(
    ("layers", "merged"),
    [
        # a k x k, then a 1x1 that narrows it: strides multiply, any padding
        (lambda: [nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 4, 1)], True),
        (lambda: [nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1, stride=2)], True),
        # a 1x1 that widens, then a k x k: exact when the k x k does not pad ...
        (lambda: [nn.Conv2d(4, 32, 1), nn.Conv2d(32, 4, 3, stride=2)], True),
        # ... or when the 1x1 has no bias (the padding then reads zeros either way)
        (lambda: [nn.Conv2d(4, 32, 1, bias=False), nn.Conv2d(32, 4, 3, padding=1)], True),
        (lambda: [nn.Conv2d(4, 32, 1), nn.Conv2d(32, 4, 3, padding=1)], False),
        (lambda: [nn.Conv2d(8, 4, 3), nn.Conv2d(4, 16, 1)], False),  # merged costs more
        (lambda: [nn.Conv2d(8, 16, 3, groups=2), nn.Conv2d(16, 4, 1)], False),
        (lambda: [nn.Conv2d(8, 16, 3), nn.Conv2d(16, 4, 3)], False),  # no 1x1
    ],
    ids=["kxk-1x1-stride", "kxk-1x1-strided-1x1", "1x1-kxk", "1x1-nobias-padded-kxk",
         "1x1-bias-padded-kxk", "costlier", "grouped", "two-kxk"],
)  # fmt: skip
def test_a_1x1_merges_into_the_adjacent_convolution_where_exact_and_cheaper(
    layers: Callable[[], list[nn.Module]], merged: bool
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*layers()).eval()
    x = torch.randn(2, int(model[0].in_channels), 13, 13)
    program, (report,) = run_passes(model, x, merge_pointwise)
    assert report.count == int(merged), report
    assert count(program, CONVOLUTIONS) == 2 - int(merged)
    check_exact(model, program, x)
    if not merged and any(m.kernel_size == (1, 1) for m in model):
        assert report.skipped, report  # a refusal says why


def test_a_padded_kxk_after_a_biased_1x1_is_refused_with_the_reason() -> None:
    model = nn.Sequential(nn.Conv2d(4, 32, 1), nn.Conv2d(32, 4, 3, padding=1)).eval()
    _, (report,) = run_passes(model, torch.randn(2, 4, 9, 9), merge_pointwise)
    assert report.count == 0 and "padding" in report.skipped[0][1], report


# ------------------------------------------------------------------ parallel branches


class Branches(nn.Module):
    """``sum`` of convolution + norm branches and a norm on the identity, RepVGG-style."""

    def __init__(
        self, channels: int, kernels: list[dict], identity: str | None = "norm", after=False
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, bias=False, **k), nn.BatchNorm2d(channels))
            for k in kernels
        )
        self.identity = identity
        self.norm = nn.BatchNorm2d(channels)
        self.after = nn.BatchNorm2d(channels) if after else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = sum(conv(x) for conv in self.convs)
        if self.identity == "norm":
            out = out + self.norm(x)
        elif self.identity == "plain":
            out = out + x
        if self.after is not None:
            out = self.after(out)
        return torch.relu(out)


def _branch_case(model: nn.Module, x: torch.Tensor) -> tuple[torch.export.ExportedProgram, list]:
    model = randomize_norms(model).eval()
    program, reports = run_passes(model, x, fold_norms, merge_branches)
    check_exact(model, program, x)
    return program, reports


@pytest.mark.parametrize(
    ("kernels", "identity", "after"),
    [
        ([dict(kernel_size=3, padding=1), dict(kernel_size=1)], "norm", False),  # RepVGG
        ([dict(kernel_size=3, padding=1, groups=4), dict(kernel_size=1, groups=4)], "norm", False),
        ([dict(kernel_size=3, padding=1, groups=8)] * 2 + [dict(kernel_size=1, groups=8)],
         "plain", True),  # MobileOne depthwise / RepViT: a norm after the sum, folded too
        ([dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0)),
          dict(kernel_size=3, padding=1)], None, False),  # ACNet's asymmetric kernels
        ([dict(kernel_size=5, padding=4, dilation=2), dict(kernel_size=1)], "norm", False),
        ([dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=1, stride=2)], None, False),
    ],
    ids=["repvgg", "grouped", "depthwise-norm-after", "asymmetric", "dilated", "strided"],
)  # fmt: skip
def test_parallel_branches_become_one_convolution(
    kernels: list[dict], identity: str | None, after: bool
) -> None:
    torch.manual_seed(0)
    model = Branches(8, kernels, identity, after)
    program, (_, merge) = _branch_case(model, torch.randn(2, 8, 10, 10))
    assert len([a for a in merge.applied if "->" in a]) == 1 and not merge.skipped, merge
    assert count(program, CONVOLUTIONS) == 1
    assert count(program, [NORM]) == 0  # the identity's norm and the one after, folded


def test_an_identity_branch_computed_by_a_convolution_is_still_the_identity() -> None:
    # RepViT's first block: the block's input (its identity branch) is a convolution's output
    torch.manual_seed(0)
    block = Branches(8, [dict(kernel_size=3, padding=1, groups=8), dict(kernel_size=1, groups=8)],
                     "plain", after=True)  # fmt: skip
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), block)
    program, (_, merge) = _branch_case(model, torch.randn(2, 3, 10, 10))
    assert count(program, CONVOLUTIONS) == 2 and count(program, [NORM]) == 0, merge


class Mixer(nn.Module):
    """FastViT's RepMixer: ``x + gamma * (mixer(x) - norm(x))``, plus a constant term."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mixer = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.norm = nn.BatchNorm2d(channels)
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * (self.mixer(x) - self.norm(x)) + 0.25


def test_differences_and_per_channel_scales_of_branches_are_one_convolution() -> None:
    torch.manual_seed(0)
    program, (_, merge) = _branch_case(Mixer(6), torch.randn(2, 6, 7, 7))
    assert merge.count == 1, merge
    assert count(program, CONVOLUTIONS) == 1 and count(program, [NORM]) == 0


class TwoSources(nn.Module):
    """Two branches of ``x`` and a term of another tensor, that term scaled or not."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x) + self.scale * torch.relu(x)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_sum_over_two_sources_merges_the_branches_of_one(scale: float) -> None:
    torch.manual_seed(0)
    model = TwoSources(scale).eval()
    x = torch.randn(2, 4, 7, 7)
    program, (merge,) = run_passes(model, x, merge_branches)
    check_exact(model, program, x)
    if scale == 1.0:
        assert merge.count == 1 and count(program, CONVOLUTIONS) == 1, merge
    else:  # the sum would have to be rebuilt with its scale: left as it is, and said
        assert merge.count == 0 and "scaled" in merge.skipped[0][1], merge
        assert count(program, CONVOLUTIONS) == 2


class Apart(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module, read_twice: bool = False) -> None:
        super().__init__()
        self.first, self.second, self.read_twice = first, second, read_twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)
        out = a + self.second(x)
        return out * a.mean() if self.read_twice else out


@pytest.mark.parametrize(
    ("model", "side", "why"),
    [
        (lambda: Apart(nn.Conv2d(4, 4, 8), nn.Conv2d(4, 4, 1, stride=2)), 15, "stride"),
        (lambda: Apart(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 3, padding=1)),
         9, "dilation"),
        (lambda: Apart(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1)), 9, "groups"),
        (lambda: Apart(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), True), 9, "elsewhere"),
        (lambda: Apart(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4).train()), 9, "training"),
    ],
    ids=["stride", "dilation", "groups", "read-elsewhere", "training-norm"],
)  # fmt: skip
def test_branches_that_cannot_be_one_convolution_are_left_apart_and_named(
    model: Callable[[], nn.Module], side: int, why: str
) -> None:
    torch.manual_seed(0)
    module = model()
    if why != "training":
        module = module.eval()
    x = torch.randn(2, 4, side, side)
    program, (merge,) = run_passes(module, x, merge_branches)
    assert merge.count == 0 and len(merge.skipped) == 1, merge
    assert why in merge.skipped[0][1], merge
    assert count(program, CONVOLUTIONS) == sum(isinstance(m, nn.Conv2d) for m in module.modules())
    if why != "training":
        check_exact(module, program, x)


# ------------------------------------------------------------------ timm's re-parameterisable

TIMM = [
    pytest.param("repvgg_a0", id="repvgg_a0"),
    pytest.param("mobileone_s0", id="mobileone_s0", marks=pytest.mark.sweep),
    pytest.param("repvit_m0_9", id="repvit_m0_9", marks=pytest.mark.sweep),
    pytest.param("fastvit_t8", id="fastvit_t8", marks=pytest.mark.sweep),
    pytest.param("repghostnet_050", id="repghostnet_050", marks=pytest.mark.sweep),
]


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
@pytest.mark.parametrize("name", TIMM)
def test_timm_blocks_become_one_convolution_where_timm_reparameterises_them(name: str) -> None:
    from onebyone.models.external import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    model = calibrate_norms(timm.create_model(name, pretrained=False), torch.randn(2, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    program, (_, merge) = run_passes(model, x, fold_norms, merge_branches)
    check_exact(model, program, x)
    assert merge.count > 0 and not [w for w, why in merge.skipped if "training" in why], merge
    # timm's own per-block method gives the convolutions a re-parameterised model runs
    reparameterized = timm.utils.reparameterize_model(model)
    convs = sum(isinstance(m, nn.Conv2d) for m in reparameterized.modules())
    assert count(program, CONVOLUTIONS) == convs
    # no norm is left on an identity branch (any norm left reads no convolution's input)
    conv_inputs = {n.args[0] for n in program.graph.nodes if n.target in CONVOLUTIONS}
    left = [n for n in program.graph.nodes if n.target == NORM and n.args[0] in conv_inputs]
    assert not left, left
    # what timm leaves as norms (a norm before a linear head), and no more
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in reparameterized.modules())
    assert count(program, [NORM]) <= norms + sum(
        isinstance(m, nn.BatchNorm1d) for m in model.modules()
    )
