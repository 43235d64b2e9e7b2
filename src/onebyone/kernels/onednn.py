"""CPU path: oneDNN's convolution, for inference (epilogue fused) and training.

Inference takes one of two routes, chosen by shape (see ``packing_pays``):

- ATen's convolution (oneDNN's primitive, which ATen caches) with the bias,
  then the residual and the activation in place on the fresh output (one pass
  for residual + ReLU in float32). This is the route for NCHW input and for most
  channels-last layers: it launches in a few microseconds.
- For channels-last layers whose weight outweighs their output pixels,
  ``torch.ops.mkldnn._convolution_pointwise`` with bias and activation as
  post-ops (its ``.binary`` overload adds the residual), on a weight packed
  once into oneDNN's blocked layout and kept while the weight is unchanged
  (same storage, shape and version counter). Its setup costs about 25 us per
  call, less than reordering such a weight on every call.

Training runs ATen's convolution (oneDNN's primitives, forward and backward)
with the epilogue as autograd ops: on these CPUs oneDNN's convolution beats the BLAS behind
``matmul``, and a Python ``autograd.Function`` around the fused op cost more
than the memory pass it saved.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from onebyone._checks import remember
from onebyone.kernels.epilogue import (
    LEAKY_RELU_SLOPE,
    add_then_activate_,
    apply_activation,
    records_grad,
)
from onebyone.kernels.gemm import is_channels_last

__all__ = [
    "aten_forward",
    "conv1x1",
    "fused_convolution",
    "is_available",
    "packed_weight",
    "packing_pays",
    "unsupported",
]

# activation -> (oneDNN unary attribute, its scalars, its algorithm)
_UNARY: dict[str | None, tuple[str, list[Any], str]] = {
    None: ("none", [], ""),
    "relu": ("relu", [], ""),
    "relu6": ("hardtanh", [0.0, 6.0], ""),
    "leaky_relu": ("leaky_relu", [LEAKY_RELU_SLOPE], ""),
    "silu": ("swish", [], ""),
    "gelu": ("gelu", [], "none"),
    "hardswish": ("hardswish", [], ""),
    "sigmoid": ("sigmoid", [], ""),
    "tanh": ("tanh", [], ""),
}
# activations oneDNN fuses after the residual add (float32)
_AFTER_BINARY = (None, "relu")


def _probe() -> tuple[bool, frozenset[torch.dtype]]:
    """Whether the fused ops exist, and the dtypes oneDNN runs on this CPU (asked once)."""
    try:
        ops = torch.ops.mkldnn._convolution_pointwise
        available = torch.backends.mkldnn.is_available() and hasattr(ops, "binary")
    except (AttributeError, RuntimeError):
        return False, frozenset()
    dtypes = {torch.float32}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.add(torch.bfloat16)
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        dtypes.add(torch.float16)
    return available, frozenset(dtypes)


# Asked once at import: these queries are not traceable by torch.compile.
_AVAILABLE, _DTYPES = _probe()


def is_available() -> bool:
    """True when this PyTorch build has the fused oneDNN convolution ops."""
    return _AVAILABLE


def unsupported(x: torch.Tensor, needs_grad: bool) -> str | None:
    """Why this path cannot run on ``x``, or ``None`` when it can."""
    if not is_available():
        return "this PyTorch build has no torch.ops.mkldnn._convolution_pointwise"
    if x.device.type != "cpu":
        return f"oneDNN runs on CPU tensors, x is on {x.device}"
    if x.dtype not in _DTYPES:
        return f"oneDNN on this CPU does not run {x.dtype}"
    if x.numel() == 0 or 0 in x.shape:
        return "oneDNN rejects empty inputs"
    return None


# id(weight) -> {geometry and version -> packed weight}; an entry dies with its weight.
# (Not a WeakKeyDictionary: it compares keys with ==, which is elementwise on tensors.)
_PACKED: dict[int, dict[tuple[Any, ...], torch.Tensor]] = {}
_MAX_PACKED_PER_WEIGHT = 4


def _cache_of(owner: torch.Tensor) -> dict[tuple[Any, ...], torch.Tensor]:
    entries = _PACKED.get(id(owner))
    if entries is None:
        entries = _PACKED[id(owner)] = {}
        weakref.finalize(owner, _PACKED.pop, id(owner), None)
    return entries


def packed_weight(
    weight: torch.Tensor,
    w4: torch.Tensor,
    x: torch.Tensor,
    *,
    padding: tuple[int, int] | list[int] = (0, 0),
    stride: tuple[int, int] | list[int],
    dilation: tuple[int, int] | list[int] = (1, 1),
    groups: int,
) -> torch.Tensor:
    """``w4`` (the 4-D view of ``weight``) reordered for oneDNN, cached while ``weight``
    is unchanged: same storage, shape, strides and version counter."""
    owner = weight if weight._base is None else weight._base
    key = (
        weight.data_ptr(),
        tuple(weight.shape),
        weight.stride(),
        weight._version,  # bumped by every in-place write (optimizer steps, copy_, ...)
        weight.dtype,
        tuple(padding),
        tuple(stride),
        tuple(dilation),
        groups,
        tuple(x.shape),
    )
    entries = _cache_of(owner)
    packed = entries.get(key)
    if packed is None:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w4.detach(), list(padding), list(stride), list(dilation), groups, list(x.shape)
        )
        remember(entries, key, packed, _MAX_PACKED_PER_WEIGHT)
    return packed


def fused_convolution(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    *,
    padding: tuple[int, int] | list[int] = (0, 0),
    stride: tuple[int, int] | list[int],
    dilation: tuple[int, int] | list[int] = (1, 1),
    groups: int,
    activation: str | None,
) -> torch.Tensor:
    """``act(conv(x) + bias + residual)`` as one oneDNN convolution with post-ops (any
    kernel size); what oneDNN cannot fuse after the residual runs in place. No autograd.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')``; ``residual`` has the output's shape.
    """
    geometry = (list(padding), list(stride), list(dilation), groups)
    if residual is None:
        attr, scalars, algorithm = _UNARY[activation]
        return torch.ops.mkldnn._convolution_pointwise(
            x, w4, bias, *geometry, attr, scalars, algorithm
        )
    # bfloat16's fallback for a fused add+relu is unimplemented in some layouts.
    fused = activation if activation in _AFTER_BINARY and x.dtype == torch.float32 else None
    y = torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, w4, bias, *geometry, "add", 1.0, fused, [], None
    )
    return y if fused == activation else apply_activation(y, activation, inplace=True)


def packing_pays(filters_per_group: int, reduction: int, output_pixels: int) -> bool:
    """Whether a channels-last inference should run the packed post-op convolution.

    ``reduction`` is the length of each output's dot product (``C/g`` times the
    kernel's area) and ``output_pixels`` is ``N*H'*W'``.

    ATen's convolution reorders the weight on every call but costs a few
    microseconds to launch; the post-op form reuses a packed weight but pays about
    25 us per call to set up its primitive, and its fused residual measured no
    faster than an in-place add. Over the layer suite of ``benchmarks/bench_op.py``
    packing won exactly where the weight outweighs the output pixels: more filters
    per group than pixels (``K/g > N*H'*W'``), as in the 7x7 and 14x14 layers of
    ResNet-50 at batch 1. (As a GEMM of any kernel size, the weight is then larger
    than the input's patch matrix.) Below about two million multiply-adds the setup
    outweighs what packing saves, so tiny products never pack.
    """
    if filters_per_group <= output_pixels:
        return False
    return filters_per_group * reduction * output_pixels >= _PACKING_MIN_MACS


_PACKING_MIN_MACS = 1 << 21


def aten_forward(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: tuple[int, int] | list[int],
    groups: int,
    activation: str | None,
    *,
    padding: tuple[int, int] | list[int] = (0, 0),
    dilation: tuple[int, int] | list[int] = (1, 1),
) -> torch.Tensor:
    """``act(conv(x) + bias + residual)`` (any kernel size): ATen's convolution (oneDNN's
    primitive, cached by ATen) with bias, then the residual and activation in place.
    Arguments are checked by the caller; no autograd through the in-place epilogue.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')`` in ``x``'s memory format; ``residual`` has
        the output's shape.
    """
    y = torch.convolution(x, w4, bias, stride, padding, dilation, False, (0, 0), groups)
    if residual is not None:
        return add_then_activate_(y, residual, activation)
    return apply_activation(y, activation, inplace=True)


def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    groups: int,
    activation: str | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """``act(conv1x1(x) + bias + residual)`` through oneDNN.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))`` in ``x``'s memory format.
    """
    k, cg = weight.shape
    w4 = weight.reshape(k, cg, 1, 1)  # (K, C/g) -> (K, C/g, 1, 1), a view
    if records_grad(x, weight, bias, residual):
        # Training: ATen's convolution and epilogue under PyTorch's C++ autograd measured
        # faster on the CPU than a Python autograd.Function around the fused op.
        y = torch.convolution(x, w4, bias, stride, (0, 0), (1, 1), False, (0, 0), groups)
        if residual is not None:
            y = y.add_(residual)  # the convolution's backward does not need its output
        return apply_activation(y, activation, inplace=False)
    n, _, h, w = x.shape
    pixels = n * -(-h // stride[0]) * -(-w // stride[1])
    # A packed weight makes oneDNN write channels-last output: channels-last input only.
    # (Reordering NCHW activations around the call measured no faster than ATen's
    # NCHW convolution, even for the heaviest weights of the suite.)
    if (
        packing_pays(k // groups, cg, pixels)
        and is_channels_last(x)
        and not torch.compiler.is_compiling()
    ):
        w4 = packed_weight(weight, w4, x, stride=stride, groups=groups)
        return fused_convolution(
            x, w4, bias, residual, stride=stride, groups=groups, activation=activation
        )
    return aten_forward(x, w4, bias, residual, stride, groups, activation)
