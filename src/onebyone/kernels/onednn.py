"""CPU path: oneDNN's convolution, for inference (epilogue fused) and training.

On channels-last input ``torch.ops.mkldnn._convolution_pointwise`` runs the 1x1
convolution with bias and a unary post-op in one pass; its ``.binary``
overload adds the residual (and can follow the add with ReLU). Other
activations after a residual run in place on the fresh output. On NCHW input
ATen's convolution (oneDNN too) followed by the epilogue in place measured
faster than the post-op form, so NCHW takes that route.

Inference on channels-last input packs each weight once into oneDNN's blocked
layout and keeps it while the weight is unchanged (same storage, shape and
version counter), so weight-heavy layers stop paying a reorder per call.
Training runs ATen's convolution (oneDNN's primitives, forward and backward)
with the epilogue as autograd ops: on these CPUs oneDNN's convolution beats the BLAS behind
``matmul``, and a Python ``autograd.Function`` around the fused op cost more
than the memory pass it saved.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from onebyone.kernels.epilogue import LEAKY_RELU_SLOPE, apply_activation
from onebyone.kernels.gemm import is_channels_last

__all__ = ["conv1x1", "fused_convolution", "is_available", "packed_weight", "unsupported"]

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
        if len(entries) >= _MAX_PACKED_PER_WEIGHT:
            entries.clear()
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w4.detach(), list(padding), list(stride), list(dilation), groups, list(x.shape)
        )
        entries[key] = packed
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


def _forward(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: tuple[int, int],
    groups: int,
    activation: str | None,
) -> torch.Tensor:
    """``act(conv(x) + bias + residual)`` with as much as oneDNN fuses, the rest in place.

    Channels-last runs the post-op convolution. NCHW runs ATen's convolution (oneDNN
    as well) and the epilogue in place: measured faster here than NCHW post-ops.
    """
    if not is_channels_last(x):
        y = torch.ops.aten.convolution(
            x, w4, bias, list(stride), [0, 0], [1, 1], False, [0, 0], groups
        )
        if residual is not None:
            if activation == "relu" and y.dtype == torch.float32:
                return torch.ops.aten._add_relu_(y, residual)  # one pass for both
            y = y.add_(residual)
        return apply_activation(y, activation, inplace=True)
    return fused_convolution(
        x, w4, bias, residual, stride=stride, groups=groups, activation=activation
    )


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
    """``act(conv1x1(x) + bias + residual)`` as one oneDNN convolution.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))`` in ``x``'s memory format.
    """
    k, cg = weight.shape
    w4 = weight.reshape(k, cg, 1, 1)  # (K, C/g) -> (K, C/g, 1, 1), a view
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, residual)
    ):
        # Training: ATen's convolution and epilogue under PyTorch's C++ autograd measured
        # faster on the CPU than a Python autograd.Function around the fused op.
        y = torch.ops.aten.convolution(
            x, w4, bias, list(stride), [0, 0], [1, 1], False, [0, 0], groups
        )
        if residual is not None:
            y = y.add_(residual)  # the convolution's backward does not need its output
        return apply_activation(y, activation, inplace=False)
    # A packed weight makes oneDNN write channels-last output: pack for channels-last input only.
    if is_channels_last(x) and not torch.compiler.is_compiling():
        w4 = packed_weight(weight, w4, x, stride=stride, groups=groups)
    return _forward(x, w4, bias, residual, stride, groups, activation)
