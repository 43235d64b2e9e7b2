"""Closed-form layer costs: hand-computed layers, PyTorch's own counts, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onebyone as obo
from onebyone.cost import CONVENTION, Cost, touched, window_reads

# (conv_cost kwargs, params, macs, bias_adds, bytes_read, bytes_written), all by hand, float32
HAND = {
    "1x1 256->64 at 56": (
        dict(in_channels=256, out_channels=64, input_size=56),
        64 * 256 + 64, 64 * 56 * 56 * 256, 64 * 56 * 56,
        4 * (256 * 56 * 56 + 64 * 256 + 64), 4 * 64 * 56 * 56,
    ),
    # stride 2 on odd 57x31 keeps rows 0,2,..,56 (29) and cols 0,2,..,30 (16): only they are read
    "1x1 strided, grouped, biasless, odd": (
        dict(in_channels=72, out_channels=80, input_size=(57, 31), stride=2, groups=2, bias=False),
        80 * 36, 80 * 29 * 16 * 36, 0, 4 * (72 * 29 * 16 + 80 * 36), 4 * 80 * 29 * 16,
    ),
    # out = (15 + 2 - 2 - 1) // 2 + 1 = 8; the windows cover all 15 rows
    "3x3 depthwise stride 2": (
        dict(in_channels=32, out_channels=32, kernel_size=3, input_size=15, stride=2, padding=1,
             groups=32),
        32 * 9 + 32, 32 * 8 * 8 * 9, 32 * 8 * 8, 4 * (32 * 15 * 15 + 32 * 9 + 32), 4 * 32 * 8 * 8,
    ),
    # (3, 1) kernel, dilation 2 on H: out H = (9 + 2 - 4 - 1) + 1 = 7, W = 7
    "grouped, dilated, non-square": (
        dict(in_channels=12, out_channels=18, kernel_size=(3, 1), input_size=(9, 7),
             padding=(1, 0), dilation=(2, 1), groups=3),
        18 * 4 * 3 + 18, 18 * 7 * 7 * 4 * 3, 18 * 7 * 7, 4 * (12 * 9 * 7 + 18 * 4 * 3 + 18),
        4 * 18 * 7 * 7,
    ),
    # kernel 1 < stride 3 on 7: rows 0, 3, 6 are read, 3x3 pixels of 7x7
    "1x1 stride 3 skips pixels, batch 2": (
        dict(in_channels=4, out_channels=4, input_size=7, stride=3, batch=2),
        4 * 4 + 4, 2 * 4 * 3 * 3 * 4, 2 * 4 * 9, 4 * (2 * 4 * 9 + 20), 4 * 2 * 4 * 9,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HAND))
def test_hand_computed_layers(case):
    kwargs, params, macs, bias_adds, bytes_read, bytes_written = HAND[case]
    c = obo.conv_cost(**kwargs)
    assert (c.params, c.macs, c.bias_adds, c.bytes_read, c.bytes_written) == (
        params, macs, bias_adds, bytes_read, bytes_written,
    )  # fmt: skip
    assert c.flops == 2 * macs
    assert c.other_ops == 0
    assert c.bytes_moved == bytes_read + bytes_written
    assert c.arithmetic_intensity == pytest.approx(2 * macs / (bytes_read + bytes_written))


@pytest.mark.parametrize("case", list(HAND))
def test_params_equal_the_torch_layer(case):
    kwargs = dict(HAND[case][0])
    kwargs.pop("input_size")
    kwargs.pop("batch", None)
    c = obo.conv_cost(**kwargs, input_size=64)
    layer = nn.Conv2d(**{"kernel_size": 1, **kwargs})
    assert c.params == sum(p.numel() for p in layer.parameters())


def test_dtype_scales_only_bytes():
    f32 = obo.conv_cost(64, 32, 3, input_size=20, padding=1)
    f16 = obo.conv_cost(64, 32, 3, input_size=20, padding=1, dtype=torch.float16)
    f64 = obo.conv_cost(64, 32, 3, input_size=20, padding=1, dtype=torch.float64)
    assert (f16.macs, f16.params) == (f32.macs, f32.params) == (f64.macs, f64.params)
    assert 2 * f16.bytes_read == f32.bytes_read == f64.bytes_read // 2
    assert 2 * f16.bytes_written == f32.bytes_written == f64.bytes_written // 2


def test_padding_forms():
    same = obo.conv_cost(16, 32, 5, input_size=28, padding="same")
    assert same == obo.conv_cost(16, 32, 5, input_size=28, padding=2)
    assert obo.conv_cost(16, 32, 3, input_size=28, padding="valid") == obo.conv_cost(
        16, 32, 3, input_size=28, padding=0
    )
    assert obo.conv_cost(16, 32, 3, input_size=28, padding=(1, 0)).macs == 32 * 28 * 26 * 16 * 9


def test_why_one_by_one_the_inception_numbers():
    # GoogLeNet's 5x5 branch at 28x28 with 192 input maps: direct vs a 1x1 reduction to 16 first
    direct = obo.conv_cost(192, 32, 5, input_size=28, padding=2)
    reduced = obo.conv_cost(192, 16, input_size=28) + obo.conv_cost(
        16, 32, 5, input_size=28, padding=2
    )
    assert direct.macs == 28 * 28 * 32 * 192 * 25 == 120_422_400
    assert reduced.macs == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 16 * 25 == 12_443_648
    assert direct.params == 32 * 192 * 25 + 32
    assert reduced.params == 16 * 192 + 16 + 32 * 16 * 25 + 32
    assert 9.6 < direct.macs / reduced.macs < 9.7


def test_cost_adds_field_by_field():
    a = Cost(params=1, macs=2, bias_adds=3, other_ops=4, bytes_read=5, bytes_written=6)
    b = Cost(params=10, macs=20, bias_adds=30, other_ops=40, bytes_read=50, bytes_written=60)
    assert a + b == Cost(11, 22, 33, 44, 55, 66)
    assert sum([a, b, a]) == Cost(12, 24, 36, 48, 60, 72)
    assert (a + b).flops == 44
    assert Cost().arithmetic_intensity == 0.0
    with pytest.raises(TypeError):
        a + 1
    with pytest.raises(TypeError):
        1 + a


def test_cost_dict_round_trip_and_derived_keys():
    c = obo.conv_cost(32, 48, 3, input_size=9)
    d = c.to_dict()
    assert d["flops"] == 2 * c.macs and d["bytes_moved"] == c.bytes_read + c.bytes_written
    assert d["arithmetic_intensity"] == c.arithmetic_intensity
    assert Cost.from_dict(d) == c


def test_cost_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"`macs`. Expected a non-negative int. .*macs=-1"):
        Cost(macs=-1)
    with pytest.raises(TypeError, match=r"argument `params`. Expected a non-negative int"):
        Cost(params=1.5)  # type: ignore[arg-type]


def test_convention_is_stated():
    for phrase in ("multiply-accumulate", "FLOPs = 2 x MACs", "bias adds", "running statistics"):
        assert phrase in CONVENTION
        assert phrase in obo.conv_cost.__doc__.replace("\n    ", " ")


BAD = [
    (dict(in_channels=0), ValueError,
     r"`in_channels`. Expected a positive int \(>= 1\). Received in_channels=0"),
    (dict(in_channels=8, groups=3), ValueError,
     r"`groups`. Expected a divisor of in_channels=8. Received groups=3"),
    (dict(kernel_size=0), ValueError, r"`kernel_size`. Expected a positive int"),
    (dict(padding=-1), ValueError, r"`padding`. Expected an int >= 0, .* Received padding=-1"),
    (dict(padding="full"), ValueError,
     r"`padding`. Expected .*'valid' or 'same'. Received padding='full'"),
    (dict(padding=1.5), TypeError, r"`padding`. Expected"),
    (dict(padding="same", stride=2), ValueError,
     r"`padding`. Expected 'same' only with stride=1"),
    (dict(kernel_size=5, input_size=3), ValueError,
     r"`input_size`. Expected at least \(5, 5\) .* Received input_size=3"),
    (dict(dtype="float32"), TypeError,
     r"`dtype`. Expected a torch.dtype. Received dtype='float32'"),
    (dict(bias=1), TypeError, r"`bias`. Expected True or False. Received bias=1"),
    (dict(batch=0), ValueError, r"`batch`. Expected a positive int"),
    (dict(stride=(1, 2, 3)), ValueError, r"`stride`. Expected a positive int or a pair"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "kind", "message"), BAD)
def test_bad_arguments_name_themselves(kwargs, kind, message):
    full = {"in_channels": 8, "out_channels": 8, "input_size": 16, **kwargs}
    with pytest.raises(kind, match=message):
        obo.conv_cost(**full)


def _brute(size, out, kernel, stride, pad, dilation):
    positions = [o * stride - pad + i * dilation for o in range(out) for i in range(kernel)]
    inside = [p for p in positions if 0 <= p < size]
    return len(inside), len(set(inside))


@pytest.mark.parametrize("size", [1, 2, 5, 8])
@pytest.mark.parametrize("kernel", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize(("pad", "dilation"), [(0, 1), (1, 1), (2, 2), (0, 3)])
def test_window_counts_match_enumeration(size, kernel, stride, pad, dilation):
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    for n_out in {max(out, 1), out + 1}:  # out + 1: a ceil_mode pooling window
        got = window_reads(size, n_out, kernel, stride, pad, dilation)
        got_touched = touched(size, n_out, kernel, stride, pad, dilation)
        assert (got, got_touched) == _brute(size, n_out, kernel, stride, pad, dilation)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    c_per=st.integers(1, 3),
    k_per=st.integers(1, 3),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    extra=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    batch=st.integers(1, 2),
    bias=st.booleans(),
)
def test_conv_cost_agrees_with_pytorch(
    groups, c_per, k_per, kh, kw, stride, padding, dilation, extra, batch, bias
):
    c, k = groups * c_per, groups * k_per
    # the smallest input the kernel fits, plus some
    size = tuple(
        max(1, d * (kk - 1) + 1 - 2 * p) + e
        for d, kk, p, e in zip(dilation, (kh, kw), padding, extra, strict=True)
    )
    conv = nn.Conv2d(c, k, (kh, kw), stride, padding, dilation, groups, bias=bias)
    cost = obo.conv_cost(c, k, (kh, kw), input_size=size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, batch=batch, bias=bias)  # fmt: skip
    assert_pytorch_counts(cost, conv, (batch, c, *size))


def assert_pytorch_counts(cost: Cost, conv: nn.Conv2d, shape: tuple[int, ...]) -> None:
    """``cost`` against the layer's own run: its output shape, PyTorch's FLOP counter, and
    the input elements autograd says the windows read."""
    c, kh, kw = conv.in_channels, *conv.kernel_size
    c_per, bias = c // conv.groups, conv.bias is not None
    conv = copy.deepcopy(conv)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(shape, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = conv(x)
    y.sum().backward()  # every input element a window reads gets a non-zero gradient
    assert cost.params == sum(p.numel() for p in conv.parameters())
    forward_flops = sum(counter.get_flop_counts()["Global"].get(op, 0) for op in
                        (torch.ops.aten.convolution, torch.ops.aten._convolution))  # fmt: skip
    assert cost.flops == forward_flops
    assert cost.macs == y.numel() * c_per * kh * kw
    assert cost.bias_adds == (y.numel() if bias else 0)
    assert cost.bytes_written == 4 * y.numel()
    read = int((x.grad != 0).sum())
    assert cost.bytes_read == 4 * (read + cost.params)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, (2, 3), (4, 1)])
def test_same_padding_is_pytorchs_for_every_kernel(kernel, dilation):
    # PyTorch pads an even reach with the odd position after: the size is kept (56 -> 56)
    conv = nn.Conv2d(6, 8, kernel, padding="same", dilation=dilation)
    shape = (2, 6, 56, 13)
    cost = obo.conv_cost(6, 8, kernel, input_size=shape[2:], padding="same",
                         dilation=dilation, batch=2)  # fmt: skip
    assert cost.macs == 2 * 8 * 56 * 13 * 6 * conv.kernel_size[0] * conv.kernel_size[1]
    assert_pytorch_counts(cost, conv, shape)
    # profile() counts the layer from its call: the same numbers
    (row,) = obo.profile(conv, shape).layers
    assert row.output_shape == (2, 8, 56, 13)
    assert row.cost == cost
