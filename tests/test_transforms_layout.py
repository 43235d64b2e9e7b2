"""to_channels_last, prepack_weights and cast: same function, other layout or dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.kernels import onednn
from onebyone.transforms import FusedConv1x1, FusedConv2d, cast, prepack_weights
from transform_models import ResidualBlock, assert_unchanged, randomize_norms, snapshot


def test_channels_last_keeps_the_function_and_the_callers_layout() -> None:
    model = randomize_norms(ResidualBlock())
    before = snapshot(model)
    converted = obo.to_channels_last(model)
    assert converted.module.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 6, 6)
    with torch.inference_mode():
        y = converted(x)
        y_cl = converted(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous()
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert obo.verify(model, converted, x).max_rel < 1e-5
    assert_unchanged(model, before)


def test_prepack_marks_every_fused_convolution_and_stays_exact(always_pack: None) -> None:
    model = randomize_norms(ResidualBlock(projection=True))
    fused = obo.fuse_epilogues(model)
    packed, count = prepack_weights(fused)
    layers = [m for m in packed.modules() if isinstance(m, (FusedConv1x1, FusedConv2d))]
    assert count == len(layers) == 4 and all(m.prepacked for m in layers)
    assert not any(
        m.prepacked for m in fused.modules() if isinstance(m, (FusedConv1x1, FusedConv2d))
    )
    # Packing pays where a layer has more filters than output pixels (K/g > N*H'*W').
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)  # 72 pixels
    assert obo.verify(model, packed, x).max_rel < 1e-5
    assert not any(id(m.weight) in onednn._PACKED for m in layers)
    x = torch.randn(1, 16, 2, 2).contiguous(memory_format=torch.channels_last)  # 4 pixels
    assert obo.verify(model, packed, x).max_rel < 1e-5
    assert all(id(m.weight) in onednn._PACKED for m in layers)  # made on the first call


def test_cast_computes_in_bfloat16_behind_a_float32_interface() -> None:
    model = randomize_norms(ResidualBlock())
    low = cast(obo.fuse_epilogues(model), torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 16, 6, 6)
    with torch.inference_mode():
        assert low(x).dtype == torch.float32
    report = obo.verify(model, low, x, rtol=5e-2)
    assert 0 < report.max_rel < 5e-2  # bfloat16 rounding is visible, and bounded


def test_cast_refuses_a_non_float_dtype() -> None:
    with pytest.raises(
        TypeError, match=r"argument `dtype`\. Expected a floating-point torch.dtype"
    ):
        cast(nn.Linear(2, 2), torch.int8)
