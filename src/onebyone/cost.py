"""Closed-form costs of one layer: parameters, MACs, FLOPs, bytes, intensity.

Every count follows one convention, stated in ``CONVENTION`` and in every
report: a MAC is one multiply-accumulate; FLOPs = 2 x MACs; bias adds and the
other elementwise operations (activations, residual adds, a norm's scale and
shift, pooling reads) are counted apart and are not part of FLOPs;
parameters count weights, biases and norm affine terms, not running
statistics (the torchvision convention); bytes are a layer's compulsory
traffic: every input element it reads, every parameter, every output element
written, each once.

``onebyone.profile`` (in ``onebyone.profiling``) applies the same formulas to
every layer a model runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from onebyone import _checks
from onebyone.geometry import conv_output_size, same_padding

__all__ = ["CONVENTION", "Cost", "conv_cost"]

CONVENTION = (
    "MAC = one multiply-accumulate; FLOPs = 2 x MACs; bias adds and other elementwise "
    "ops are counted apart, not in FLOPs; params count weights, biases and norm affine "
    "terms, not running statistics (torchvision convention); bytes = each layer's "
    "compulsory reads (inputs, parameters) and writes (outputs)."
)
"""The counting convention every cost report states."""


@dataclass(frozen=True)
class Cost:
    """The cost of one layer, or of several added together with ``+``.

    Args:
        params: parameter elements (weights, biases, norm affine terms; not
            running statistics).
        macs: multiply-accumulates of the weighted sums (convolutions, linear
            layers, matrix products; attention's ``QK^T`` and weights times
            ``V``, every score computed, a causal mask's too, as PyTorch's
            counter does).
        bias_adds: additions of a bias, one per output element that has one.
        other_ops: other elementwise arithmetic: one per element for each
            activation, add or multiply; 2 per element for a norm with stored
            statistics (scale and shift), 5 when it computes them; one per
            input element read by a pooling window or a mean; 5 per element
            of a softmax (max, subtract, exp, sum, divide); per attention
            score, 1 for the scale, 1 for a mask and 5 for the softmax.
        bytes_read: bytes of inputs and parameters read, each element once.
        bytes_written: bytes of outputs written.

    ``flops`` is ``2 * macs``; ``bytes_moved`` is ``bytes_read + bytes_written``;
    ``arithmetic_intensity`` is ``flops / bytes_moved`` (FLOPs per byte).

    Example:
        >>> import onebyone as obo
        >>> a = obo.conv_cost(192, 32, 5, input_size=28, padding=2)
        >>> reduction = obo.conv_cost(192, 16, input_size=28)
        >>> b = reduction + obo.conv_cost(16, 32, 5, input_size=28, padding=2)
        >>> a.macs, b.macs
        (120422400, 12443648)
    """

    params: int = 0
    macs: int = 0
    bias_adds: int = 0
    other_ops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _checks.invalid(f.name, "a non-negative int", value, kind=TypeError)
            if value < 0:
                raise _checks.invalid(f.name, "a non-negative int", value)

    @property
    def flops(self) -> int:
        """Floating-point operations of the weighted sums: ``2 * macs``."""
        return 2 * self.macs

    @property
    def bytes_moved(self) -> int:
        """``bytes_read + bytes_written``."""
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved (``0.0`` when nothing moves)."""
        moved = self.bytes_moved
        return self.flops / moved if moved else 0.0

    def __add__(self, other: object) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)}
        )

    def __radd__(self, other: object) -> Cost:
        # sum(costs) starts from 0
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, int | float]:
        """The counts and the derived ``flops``, ``bytes_moved``, ``arithmetic_intensity``."""
        out: dict[str, int | float] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["flops"] = self.flops
        out["bytes_moved"] = self.bytes_moved
        out["arithmetic_intensity"] = self.arithmetic_intensity
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        """Inverse of ``to_dict`` (derived keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def touched(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """How many of ``size`` input positions a sliding window reads along one axis.

    Window ``o`` reads positions ``o*stride - pad + i*dilation`` for ``i < kernel``;
    positions outside ``[0, size)`` are padding and cost nothing.
    """
    if out_size <= 0:
        return 0
    if dilation == 1 and kernel >= stride:  # the windows tile one interval
        lo = max(0, -pad)
        hi = min(size, (out_size - 1) * stride - pad + kernel)
        return max(0, hi - lo)
    seen = {
        p
        for o in range(out_size)
        for i in range(kernel)
        if 0 <= (p := o * stride - pad + i * dilation) < size
    }
    return len(seen)


def window_reads(
    size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int
) -> int:
    """Input positions read along one axis, summed over the windows (overlaps count again)."""
    total = 0
    for o in range(out_size):
        start = o * stride - pad
        first = -(start // dilation) if start < 0 else 0  # ceil(-start / dilation)
        last = min(kernel - 1, (size - 1 - start) // dilation)
        total += max(0, last - first + 1)
    return total


def conv_counts(
    *,
    batch: int,
    in_channels: int,
    out_channels: int,
    groups: int,
    kernel: Sequence[int],
    in_size: Sequence[int],
    out_size: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    bias: bool,
    itemsize: int,
) -> Cost:
    """The cost of one convolution with every size spelled out (any number of spatial axes).

    ``pad`` is the padding before each axis (after it does not change the count).
    """
    out_pixels = math.prod(out_size)
    taps = math.prod(kernel)
    weights = out_channels * (in_channels // groups) * taps
    biases = out_channels if bias else 0
    outputs = batch * out_channels * out_pixels
    read_pixels = math.prod(
        touched(n, o, k, s, p, d)
        for n, o, k, s, p, d in zip(in_size, out_size, kernel, stride, pad, dilation, strict=True)
    )
    return Cost(
        params=weights + biases,
        macs=outputs * (in_channels // groups) * taps,
        bias_adds=outputs if bias else 0,
        bytes_read=itemsize * (batch * in_channels * read_pixels + weights + biases),
        bytes_written=itemsize * outputs,
    )


def _padding(
    value: object, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding ``(before, after)`` of each axis from an int >= 0, a pair of them,
    ``"valid"`` or ``"same"`` (PyTorch's: the odd one after, stride 1 only)."""
    expected = "an int >= 0, a pair of ints >= 0, 'valid' or 'same'"
    if isinstance(value, str):
        if value == "valid":
            return ((0, 0), (0, 0))
        if value == "same":
            if stride != (1, 1):
                raise _checks.invalid("padding", "'same' only with stride=1", value)
            return same_padding(kernel[0], dilation[0]), same_padding(kernel[1], dilation[1])
        raise _checks.invalid("padding", expected, value)
    pair = (value, value) if _checks._is_int(value) else value
    if isinstance(pair, Sequence) and len(pair) == 2 and all(_checks._is_int(v) for v in pair):
        top, left = (int(v) for v in pair)
        if top >= 0 and left >= 0:
            return ((top, top), (left, left))
        raise _checks.invalid("padding", expected, value)
    raise _checks.invalid("padding", expected, value, kind=TypeError)


def conv_cost(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int] = 1,
    *,
    input_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    batch: int = 1,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Cost:
    """Exact cost of one 2-D convolution (a 1x1 one by default), in closed form.

    The arguments mean what they mean for ``torch.nn.Conv2d``. Convention
    (``onebyone.cost.CONVENTION``): a MAC is one multiply-accumulate; FLOPs =
    2 x MACs; bias adds are counted apart (``bias_adds``); params count
    weights, biases and norm affine terms, not running statistics (the
    torchvision convention), here the weight ``(K, C/groups, kh, kw)`` and the
    bias; bytes count every input
    element the windows touch (a strided 1x1 layer reads only the sampled
    pixels), the parameters and the output, each once, at ``dtype``'s size.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        kernel_size: int or ``(kh, kw)``.
        input_size: ``H`` (square) or ``(H, W)``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``"valid"`` or ``"same"`` (stride 1).
        dilation: int or ``(dh, dw)``.
        groups: channel groups; must divide ``C`` and ``K``.
        batch: ``N``.
        bias: whether the layer adds a bias.
        dtype: element type, for the byte counts.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')`` with
        ``H' = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1`` (likewise ``W'``); ``"same"``
        pads ``dh*(kh - 1)`` in all, the odd one after as PyTorch does, so ``H' = H``;
        ``macs = N*K*H'*W' * (C/groups)*kh*kw``.

    Example:
        >>> import onebyone as obo
        >>> c = obo.conv_cost(256, 64, input_size=56)
        >>> c.params, c.macs, c.flops, c.bias_adds
        (16448, 51380224, 102760448, 200704)
    """
    c, k, g = _checks.channels(in_channels, out_channels, groups)
    kernel = _checks.pair("kernel_size", kernel_size)
    size = _checks.pair("input_size", input_size)
    strides = _checks.pair("stride", stride)
    dilations = _checks.pair("dilation", dilation)
    pads = _padding(padding, kernel, dilations, strides)
    pad = (pads[0][0], pads[1][0])  # before each axis
    n = _checks.positive_int("batch", batch)
    if not isinstance(bias, bool):
        raise _checks.invalid("bias", "True or False", bias, kind=TypeError)
    if not isinstance(dtype, torch.dtype):
        raise _checks.invalid("dtype", "a torch.dtype", dtype, kind=TypeError)
    # conv_output_size pads both sides alike: the extra after (`same`) lengthens the axis
    out = tuple(
        conv_output_size(s + after - before, kk, st, before, d)
        for s, (before, after), d, kk, st in zip(
            size, pads, dilations, kernel, strides, strict=True
        )
    )
    if min(out) < 1:
        smallest = tuple(
            d * (kk - 1) + 1 - before - after
            for (before, after), d, kk in zip(pads, dilations, kernel, strict=True)
        )
        raise _checks.invalid(
            "input_size",
            f"at least {smallest} for kernel_size={kernel}, padding={padding!r}, "
            f"dilation={dilations}",
            input_size,
        )
    return conv_counts(
        batch=n,
        in_channels=c,
        out_channels=k,
        groups=g,
        kernel=kernel,
        in_size=size,
        out_size=out,
        stride=strides,
        pad=pad,
        dilation=dilations,
        bias=bias,
        itemsize=dtype.itemsize,
    )
