"""to_channels_last and cast: same function, other layout or dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import onebyone as obo
from onebyone.transforms import cast
from transform_models import ResidualBlock, assert_unchanged, snapshot

from helpers import randomize_norms


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
