"""merge_pointwise: consecutive pointwise affine layers become one 1x1 convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.nn import Conv1x1
from onebyone.transforms import merge_pointwise_weights
from transform_models import SMALLER_MODELS, assert_unchanged, snapshot

from helpers import randomize_norms


def _convs(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, Conv1x1)) for m in model.modules())


def test_merged_weights_compose_the_two_maps() -> None:
    w1, b1 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w2, b2 = torch.randn(4, 5, 1, 1, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w, b = merge_pointwise_weights(w1, b1, w2, b2)
    assert w.shape == (4, 3, 1, 1) and b is not None
    x = torch.randn(7, 3, dtype=torch.float64)
    expected = (x @ w1.T + b1) @ w2.reshape(4, 5).T + b2
    torch.testing.assert_close(x @ w.reshape(4, 3).T + b, expected)


def test_merged_weights_without_biases_have_none() -> None:
    _, b = merge_pointwise_weights(torch.ones(2, 3), None, torch.ones(1, 2), None)
    assert b is None


def test_merged_weights_check_the_inner_size() -> None:
    with pytest.raises(ValueError, match=r"argument `w2`\. Expected 5 input channels"):
        merge_pointwise_weights(torch.ones(5, 3), None, torch.ones(4, 6), None)


def test_chain_of_pointwise_layers_becomes_one_layer() -> None:
    model = randomize_norms(
        nn.Sequential(
            nn.Conv2d(8, 16, 1, stride=2),
            Conv1x1(16, 12, stride=(1, 2), bias=False),
            nn.BatchNorm2d(12),
            Conv1x1(12, 6, activation="relu"),
        )
    )
    before = snapshot(model)
    merged, report = obo.merge_pointwise(model, with_report=True)
    assert report.count == 3
    assert _convs(merged) == 1 < _convs(model)
    last = merged[3]
    assert isinstance(last, Conv1x1) and last.stride == (2, 4) and last.activation == "relu"
    x = torch.randn(2, 8, 9, 11)
    assert obo.verify(model, merged, x).max_rel < 1e-5
    assert_unchanged(model, before)


def test_batchnorm_before_a_1x1_folds_forward() -> None:
    class PreNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 4, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.conv(self.bn(x)))

    model = randomize_norms(PreNorm())
    merged, report = obo.merge_pointwise(model, with_report=True)
    assert report.applied == ["bn -> conv"]
    assert isinstance(merged.bn, nn.Identity) and merged.conv.bias is not None
    assert obo.verify(model, merged, torch.randn(2, 8, 5, 5)).max_rel < 1e-5


def test_only_if_cheaper_keeps_a_bottleneck_apart() -> None:
    bottleneck = nn.Sequential(nn.Conv2d(64, 8, 1), nn.Conv2d(8, 64, 1)).eval()
    expansion = nn.Sequential(nn.Conv2d(8, 64, 1), nn.Conv2d(64, 8, 1)).eval()
    kept, report = obo.merge_pointwise(bottleneck, only_if_cheaper=True, with_report=True)
    assert report.count == 0 and "costs more" in report.skipped[0][1]
    assert _convs(kept) == 2
    merged = obo.merge_pointwise(expansion, only_if_cheaper=True)
    assert _convs(merged) == 1
    assert obo.verify(expansion, merged, torch.randn(1, 8, 6, 6)).max_rel < 1e-5
    # without the cost test the bottleneck merges too, and stays exact
    forced = obo.merge_pointwise(bottleneck)
    assert _convs(forced) == 1
    assert obo.verify(bottleneck, forced, torch.randn(1, 64, 6, 6)).max_rel < 1e-5


@pytest.mark.parametrize(
    ("layers", "reason"),
    [
        ([Conv1x1(4, 4, activation="relu"), Conv1x1(4, 4)], "activation"),
        ([nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 4, 1)], "grouped"),
        ([nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1)], "pads"),
        ([nn.BatchNorm2d(4), nn.BatchNorm2d(4)], "two batch norms"),
    ],
    ids=["activation", "grouped", "padded", "two-norms"],
)
def test_non_mergeable_pairs_are_reported(layers: list[nn.Module], reason: str) -> None:
    model = randomize_norms(nn.Sequential(*layers))
    merged, report = obo.merge_pointwise(model, with_report=True)
    assert report.count == 0 and reason in report.skipped[0][1]
    assert obo.verify(model, merged, torch.randn(1, 4, 6, 6)).max_abs == 0.0


def test_intermediate_with_another_user_is_not_merged() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) + y

    model = Branch().eval()
    merged, report = obo.merge_pointwise(model, with_report=True)
    assert report.count == 0 and "other users" in report.skipped[0][1]
    assert obo.verify(model, merged, torch.randn(1, 4, 3, 3)).max_abs == 0.0


def test_float64_model_stays_float64() -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 1), Conv1x1(5, 2)).double().eval()
    merged = obo.merge_pointwise(model)
    assert {p.dtype for p in merged.parameters()} == {torch.float64}
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert obo.verify(model, merged, x).max_rel < 1e-12


def test_training_mode_and_bad_flag_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Expected a model in eval mode"):
        obo.merge_pointwise(nn.Sequential(nn.Conv2d(2, 2, 1)))
    with pytest.raises(TypeError, match=r"argument `only_if_cheaper`\. Expected True or False"):
        obo.merge_pointwise(nn.Sequential(nn.Conv2d(2, 2, 1)).eval(), only_if_cheaper=1)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", SMALLER_MODELS)
def test_every_builtin_model_keeps_its_outputs(name: str) -> None:
    model = randomize_norms(obo.create_model(name))
    before = snapshot(model)
    folded = obo.fold_batchnorm(model)
    merged, report = obo.merge_pointwise(folded, with_report=True)
    x = torch.randn(1, 3, 32, 32)
    assert obo.verify(model, merged, x).ok
    # the norms are folded already, so every merge joins two convolutions into one
    assert _convs(merged) == _convs(folded) - report.count
    wide, wide_report = obo.merge_pointwise(folded, siblings=True, with_report=True)
    assert obo.verify(model, wide, x).ok
    if name == "googlenet":  # the first three branches of each of its 9 Inception modules
        assert sum("siblings" in a for a in wide_report.applied) == 9
    assert_unchanged(model, before)


class Branches(nn.Module):
    """Inception-like: three 1x1 convolutions read ``x``; two end in ReLU, one in SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 6, 1, bias=False)
        self.c = Conv1x1(8, 3)
        self.after = nn.Conv2d(6, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x))
        b = self.after(torch.relu(self.b(x)))
        c = torch.nn.functional.silu(self.c(x))
        return torch.cat([a, b, c], dim=1)


def test_sibling_convolutions_with_the_same_activation_become_one() -> None:
    model = Branches().eval()
    merged, report = obo.merge_pointwise(model, siblings=True, with_report=True)
    assert report.applied == ["a + b (siblings on one input) -> a_siblings"]
    wide = merged.get_submodule("a_siblings")
    assert isinstance(wide, Conv1x1) and wide.out_channels == 10 and wide.activation == "relu"
    x = torch.randn(2, 8, 5, 5)
    assert obo.verify(model, merged, x).max_rel < 1e-6
    # the split runs through fusion too
    fused = obo.fuse_epilogues(merged)
    assert obo.verify(model, fused, x).max_rel < 1e-6


def test_siblings_are_left_alone_by_default() -> None:
    _, report = obo.merge_pointwise(Branches().eval(), with_report=True)
    assert report.count == 0
    with pytest.raises(TypeError, match=r"argument `siblings`\. Expected True or False"):
        obo.merge_pointwise(Branches().eval(), siblings="yes")  # type: ignore[call-overload]
