"""fuse_epilogues and the fused modules: conv (+ folded BN) -> activation (+ residual add)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import onebyone as obo
from onebyone.kernels.epilogue import apply_activation
from onebyone.nn import Conv1x1
from onebyone.transforms import FusedConv1x1, FusedConv2d
from transform_models import (
    SMALLER_MODELS,
    AddAfterActivation,
    ResidualBlock,
    SharedOutput,
    Untraceable,
    assert_unchanged,
    conv_bn_relu,
    snapshot,
    tally,
)

from helpers import randomize_norms

CASES = [(act, pos) for act in (None, *obo.ACTIVATIONS) for pos in ("before", "after")]


def _reference(
    conv: nn.Module, x: torch.Tensor, act: str | None, pos: str, r: torch.Tensor | None
) -> torch.Tensor:
    weight = conv.weight if conv.weight.dim() == 4 else conv.weight[:, :, None, None]
    padding = getattr(conv, "padding", 0)
    y = F.conv2d(
        x, weight, conv.bias, conv.stride, padding, getattr(conv, "dilation", 1), conv.groups
    )
    if r is not None and pos == "before":
        y = y + r
    y = apply_activation(y, act, inplace=False)
    return y + r if r is not None and pos == "after" else y


def _fused(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FusedConv1x1, FusedConv2d))]


@pytest.mark.parametrize(("act", "pos"), CASES)
def test_fused_conv2d_matches_its_definition(act: str | None, pos: str) -> None:
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
    fused = FusedConv2d.from_conv(conv, activation=act, residual_position=pos)
    x = torch.randn(2, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        for residual in (None, r):
            expected = _reference(conv, x, act, pos, residual)
            torch.testing.assert_close(fused(x, residual), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("act", "pos"), CASES[::3])
def test_fused_conv1x1_matches_its_definition(act: str | None, pos: str) -> None:
    conv = Conv1x1(6, 8, stride=(1, 2))
    fused = FusedConv1x1.from_module(conv, activation=act, residual_position=pos)
    x, r = torch.randn(2, 6, 5, 7), torch.randn(2, 8, 5, 4)
    with torch.inference_mode():
        for residual in (None, r):
            expected = _reference(conv, x, act, pos, residual)
            torch.testing.assert_close(fused(x, residual), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [FusedConv2d, FusedConv1x1])
def test_fused_modules_train_and_run_float64_through_pytorch(cls: type) -> None:
    conv: nn.Module = (
        nn.Conv2d(4, 4, 1).double()
        if cls is FusedConv1x1
        else nn.Conv2d(4, 4, 3, padding=1).double()
    )
    make = cls.from_module if cls is FusedConv1x1 else cls.from_conv
    fused = make(conv, activation="tanh", residual_position="before")
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    r = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    y = fused(x, r)
    torch.testing.assert_close(y, _reference(conv, x, "tanh", "before", r))
    y.sum().backward()
    assert x.grad is not None and fused.weight.grad is not None


@pytest.mark.parametrize("cls", [FusedConv2d, FusedConv1x1])
def test_a_trainable_bias_alone_still_gets_its_gradient(cls: type) -> None:
    conv = nn.Conv2d(4, 3, 1) if cls is FusedConv1x1 else nn.Conv2d(4, 3, 3, padding=1)
    make = cls.from_module if cls is FusedConv1x1 else cls.from_conv
    fused = make(conv, activation="relu")
    fused.weight.requires_grad_(False)  # a frozen weight, a trainable bias
    x = torch.randn(1, 4, 5, 5)
    y = fused(x)
    torch.testing.assert_close(y, _reference(conv, x, "relu", "before", None))
    y.sum().backward()
    expected = (y > 0).sum(dim=(0, 2, 3)).to(y.dtype)  # d sum(relu(z)) / d bias
    torch.testing.assert_close(fused.bias.grad, expected)


def test_residual_of_another_shape_is_broadcast() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    r = torch.randn(1, 4, 1, 1)
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        for pos in ("before", "after"):
            for fused in (
                FusedConv2d.from_conv(conv, activation="relu", residual_position=pos),
                FusedConv1x1.from_module(
                    nn.Conv2d(3, 4, 1), activation="relu", residual_position=pos
                ),
            ):
                reference = fused.to_conv2d() if isinstance(fused, FusedConv1x1) else conv
                ref_conv = reference[0] if isinstance(reference, nn.Sequential) else reference
                expected = _reference(ref_conv, x, "relu", pos, r)
                torch.testing.assert_close(fused(x, r), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [FusedConv2d, FusedConv1x1])
def test_a_fused_module_reads_a_changed_weight_and_survives_copies(cls: type) -> None:
    conv = nn.Conv2d(3, 16, 1) if cls is FusedConv1x1 else nn.Conv2d(3, 16, 3)
    fused = (cls.from_module if cls is FusedConv1x1 else cls.from_conv)(conv, activation="relu")
    x = torch.randn(1, 3, 3, 3).contiguous(memory_format=torch.channels_last)  # 16 > pixels
    with torch.inference_mode():
        fused(x)
        clone, restored = copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))
        torch.testing.assert_close(clone(x), fused(x))
        torch.testing.assert_close(restored(x), fused(x))
    fused.weight.data.mul_(2)  # bumps no version counter
    with torch.inference_mode():
        expected = _reference(fused, x, "relu", "before", None)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fused_module_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"argument `residual_position`\. Expected one of"):
        FusedConv2d(3, 3, 3, residual_position="middle")
    with pytest.raises(ValueError, match=r"argument `activation`"):
        FusedConv1x1(3, 3, activation="swish")
    with pytest.raises(ValueError, match=r"argument `padding`\. Expected numeric zero padding"):
        FusedConv2d(3, 3, 3, padding="same")
    with pytest.raises(TypeError, match=r"argument `conv`\. Expected a Conv1x1 or a 1x1"):
        FusedConv1x1.from_module(nn.Conv2d(3, 3, 3))


def test_conv_bn_relu_becomes_one_fused_convolution() -> None:
    model = conv_bn_relu()
    before = snapshot(model)
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert report.applied == ["0 <- 1", "0 -> relu"]
    assert len(_fused(fused)) == 1 and _fused(fused)[0].activation == "relu"
    assert obo.verify(model, fused, torch.randn(2, 6, 9, 9)).max_rel < 1e-5
    assert_unchanged(model, before)


@pytest.mark.parametrize("projection", [False, True])
def test_residual_block_fuses_its_add_and_relus(projection: bool) -> None:
    model = randomize_norms(ResidualBlock(projection=projection))
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert isinstance(fused, fx.GraphModule)
    epilogues = [a for a in report.applied if "->" in a]
    assert sum("+ residual -> relu" in a for a in epilogues) == 1
    assert "conv1 -> relu" in epilogues and "conv2 -> relu" in epilogues
    counts = tally(fused)
    assert (counts.activations, counts.adds, counts.batch_norms) == (0, 0, 0)
    assert counts.convolutions == (4 if projection else 3)
    assert obo.verify(model, fused, torch.randn(2, 16, 8, 8)).max_rel < 1e-5


def test_residual_added_after_the_activation() -> None:
    model = randomize_norms(AddAfterActivation())
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert "conv -> silu -> + residual" in report.applied
    (layer,) = _fused(fused)
    assert layer.residual_position == "after"
    assert obo.verify(model, fused, torch.randn(2, 8, 6, 6)).max_rel < 1e-5


def test_conv1x1_with_its_own_activation_takes_a_later_add() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = Conv1x1(4, 4, activation="relu6")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + x

    model = M().eval()
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert report.applied == ["conv -> relu6 -> + residual"]
    assert obo.verify(model, fused, torch.randn(1, 4, 5, 5)).max_rel < 1e-6


def test_an_in_place_op_on_the_input_blocks_moving_the_convolution() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Conv2d(3, 4, 1)
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.pre(x)
            y = self.conv(h)
            h.mul_(2.0)  # changes the residual and the conv's input after the conv ran
            return torch.relu(y + h)

    model = M().eval()
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert any("in-place" in why for _, why in report.skipped)
    assert obo.verify(model, fused, torch.randn(1, 3, 5, 5)).max_rel < 1e-6


def test_shared_output_and_untraceable_models_stay_exact() -> None:
    shared = randomize_norms(SharedOutput())
    assert obo.verify(shared, obo.fuse_epilogues(shared), torch.randn(2, 4, 7, 7)).max_rel < 1e-5
    untraceable = randomize_norms(Untraceable())
    fused, report = obo.fuse_epilogues(untraceable, torch.randn(1, 3, 8, 8), with_report=True)
    assert not report.traced
    assert any("does not trace" in why for _, why in report.skipped)
    assert "body.0 -> relu" in report.applied and isinstance(fused.body[2], nn.Identity)
    assert obo.verify(untraceable, fused, torch.randn(1, 3, 8, 8)).max_rel < 1e-5


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Expected a model in eval mode"):
        obo.fuse_epilogues(conv_bn_relu().train())


@pytest.mark.parametrize("name", SMALLER_MODELS)
def test_every_builtin_model_fuses_every_epilogue(name: str) -> None:
    model = randomize_norms(obo.create_model(name))
    before = snapshot(model)
    fused = obo.fuse_epilogues(model)
    original, after = tally(model), tally(fused)
    # every convolution is fused; every activation and add followed a convolution
    assert len(_fused(fused)) == original.convolutions == after.convolutions
    assert (after.activations, after.adds, after.batch_norms) == (0, 0, 0)
    assert obo.verify(model, fused, torch.randn(1, 3, 32, 32)).ok
    assert_unchanged(model, before)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_conv2d_bfloat16_residual_relu(groups: int, channels_last: bool) -> None:
    """oneDNN has no bfloat16 fallback for a fused add+relu in some layouts: never use it."""
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups).to(torch.bfloat16)
    fused = FusedConv2d.from_conv(conv, activation="relu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16).to(memory_format=fmt)
    r = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = F.relu(conv(x).float() + r.float())
        torch.testing.assert_close(fused(x, residual=r).float(), expected, rtol=3e-2, atol=3e-2)


class _WriteThroughView(nn.Module):
    """An in-place write through a view of the convolution's input, between it and its add."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0  # own the input, so the caller's tensor is never written
        y = self.conv(x)
        if self.how == "view":
            x.view(-1).mul_(0.5)
        else:
            self.act(x[:, :2])
        return y + x


@pytest.mark.parametrize("how", ["view", "slice"])
def test_a_write_through_a_view_of_the_input_keeps_the_residual_apart(how: str) -> None:
    model = _WriteThroughView(how).eval()
    x = torch.randn(2, 4, 5, 5)
    fused, report = obo.fuse_epilogues(model, with_report=True)
    assert any("in-place" in why for _, why in report.skipped)
    assert obo.verify(model, fused, x).max_rel < 1e-6
