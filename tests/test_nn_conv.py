"""Conv1x1: initialisation, state-dict interchange with Conv2d/Linear, conversions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from onebyone.nn import Conv1x1, activation_module

from helpers import assert_close


def test_parameters_and_init_like_conv2d():
    torch.manual_seed(0)
    layer = Conv1x1(64, 32, groups=2)
    assert layer.weight.shape == (32, 32)
    assert layer.bias is not None and layer.bias.shape == (32,)
    bound = 1 / math.sqrt(32)  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), ...)
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert layer.bias.abs().max() <= bound
    assert Conv1x1(8, 4, bias=False).bias is None


def test_forward_matches_conv2d_with_residual_and_activation():
    layer = Conv1x1(12, 8, stride=2, groups=4, activation="silu")
    conv = layer.to_conv2d()
    x = torch.randn(2, 12, 5, 5)
    r = torch.randn(2, 8, 3, 3)
    assert isinstance(conv, nn.Sequential)
    ref = nn.functional.silu(conv[0](x) + r)
    assert_close(layer(x, residual=r), ref)
    assert_close(layer(x), conv(x))


def test_loads_conv2d_and_linear_state_dicts():
    conv = nn.Conv2d(6, 4, 1)
    layer = Conv1x1(6, 4)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 3, 5)
    assert_close(layer(x), conv(x))
    lin = nn.Linear(6, 4)
    layer.load_state_dict(lin.state_dict())
    assert_close(layer(x), lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(RuntimeError, match="size mismatch"):
        layer.load_state_dict(nn.Conv2d(6, 5, 1).state_dict())


def test_round_trips():
    conv = nn.Conv2d(8, 6, 1, stride=(2, 1), groups=2, bias=False)
    layer = Conv1x1.from_conv2d(conv)
    assert layer.stride == (2, 1) and layer.groups == 2 and layer.bias is None
    x = torch.randn(1, 8, 5, 4)
    assert_close(layer(x), conv(x))
    back = layer.to_conv2d()
    assert isinstance(back, nn.Conv2d)
    assert torch.equal(back.weight, conv.weight)
    lin = nn.Linear(5, 3)
    layer = Conv1x1.from_linear(lin, activation="relu")
    pixels = torch.randn(2, 5, 3, 4)
    per_pixel = lin(pixels.permute(0, 2, 3, 1)).relu().permute(0, 3, 1, 2)  # (N, K, H, W)
    assert_close(layer(pixels), per_pixel)
    lin_back = layer.to_linear()
    assert isinstance(lin_back, nn.Sequential)
    rows = torch.randn(4, 5)
    assert_close(lin_back(rows), lin(rows).relu())
    assert torch.equal(lin_back[0].weight, lin.weight) and torch.equal(lin_back[0].bias, lin.bias)


def test_copies_do_not_share_storage():
    conv = nn.Conv2d(4, 4, 1)
    layer = Conv1x1.from_conv2d(conv)
    with torch.no_grad():
        layer.weight.zero_()
    assert conv.weight.abs().sum() > 0


def test_conversion_errors():
    with pytest.raises(ValueError, match=r"argument `module`.*kernel_size=\(1, 1\)"):
        Conv1x1.from_conv2d(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"argument `module`.*padding=0"):
        Conv1x1.from_conv2d(nn.Conv2d(4, 4, 1, padding=1))
    with pytest.raises(TypeError, match=r"argument `module`.*nn.Conv2d.*Linear"):
        Conv1x1.from_conv2d(nn.Linear(4, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"argument `module`.*nn.Linear"):
        Conv1x1.from_linear(nn.Conv2d(4, 4, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stride=1 and groups=1.*groups=2"):
        Conv1x1(4, 4, groups=2).to_linear()


def test_dtype_device_and_repr():
    layer = Conv1x1(4, 8, stride=2, groups=2, bias=False, activation="relu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64
    assert repr(layer) == "Conv1x1(4, 8, stride=(2, 2), groups=2, bias=False, activation='relu')"
    assert layer(torch.randn(1, 4, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_training_step_updates_weights():
    layer = Conv1x1(4, 3, activation="relu")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    layer(torch.randn(2, 4, 3, 3)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, layer.weight)


def test_activation_module_names():
    x = torch.linspace(-8, 8, 33)
    assert torch.equal(activation_module("relu6")(x), torch.clamp(x, 0, 6))
    assert isinstance(activation_module(None), nn.Identity)
