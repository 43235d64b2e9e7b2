"""CPU path: oneDNN's convolution, for inference (epilogue fused) and training.

Inference runs ATen's convolution (oneDNN's primitive, which ATen caches) with
the bias, then the residual and the activation in place on the fresh output
(one pass for residual + ReLU in float32).

A frozen model (``onebyone.optimize``'s torch engine) may also hold a weight
packed once into oneDNN's blocked layout (``pack_weight``: an opaque tensor, so
nothing can write to it behind the packed copy's back) and call
``fused_convolution``, oneDNN's convolution with bias and activation as
post-ops (its ``.binary`` overload adds the residual). Nothing here caches a
weight: a cache keyed on a weight's identity or version counter cannot see
writes through ``.data`` or NumPy, so the eager op never packs.

Training runs ATen's convolution (oneDNN's primitives, forward and backward)
with the epilogue as autograd ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from onebyone.activations import TABLE, apply_activation
from onebyone.kernels.epilogue import add_then_activate_, records_grad

__all__ = [
    "aten_forward",
    "conv1x1",
    "fused_convolution",
    "is_available",
    "pack_weight",
    "supports",
    "unsupported",
]


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


def supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes ``dtype`` natively on this CPU (and the fused ops exist)."""
    return _AVAILABLE and dtype in _DTYPES


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


def pack_weight(
    w4: torch.Tensor,
    input_shape: Sequence[int],
    *,
    padding: Sequence[int] = (0, 0),
    stride: Sequence[int],
    dilation: Sequence[int] = (1, 1),
    groups: int,
) -> torch.Tensor:
    """``w4 (K, C/g, kh, kw)`` reordered into oneDNN's blocked layout for inputs like
    ``input_shape`` (other shapes still compute correctly). The result is an opaque
    mkldnn tensor: it cannot be viewed, written or pickled, only convolved with.
    """
    return torch.ops.mkldnn._reorder_convolution_weight(
        w4.detach().contiguous(), list(padding), list(stride), list(dilation), groups,
        list(input_shape),
    )  # fmt: skip


def fused_convolution(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    *,
    padding: Sequence[int] = (0, 0),
    stride: Sequence[int],
    dilation: Sequence[int] = (1, 1),
    groups: int,
    activation: str | None,
) -> torch.Tensor:
    """``act(conv(x) + bias + residual)`` as one oneDNN convolution with post-ops (any
    kernel size); what oneDNN cannot fuse after the residual runs in place. No autograd.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')``; ``residual`` has the output's shape.
    """
    geometry = (list(padding), list(stride), list(dilation), groups)
    entry = None if activation is None else TABLE[activation]
    if residual is None:
        attr, scalars, algorithm = ("none", [], "") if entry is None else entry.onednn
        return torch.ops.mkldnn._convolution_pointwise(
            x, w4, bias, *geometry, attr, scalars, algorithm
        )
    # oneDNN fuses only some activations after its add (and bfloat16's fallback for a
    # fused add+relu is unimplemented in some layouts)
    fuses = entry is None or (entry.onednn_after_add and x.dtype == torch.float32)
    fused = None if entry is None or not fuses else entry.onednn[0]
    y = torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, w4, bias, *geometry, "add", 1.0, fused, [], None
    )
    return y if fuses else apply_activation(y, activation, inplace=True)


def aten_forward(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
    activation: str | None,
    *,
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
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
    return aten_forward(x, w4, bias, residual, stride, groups, activation)
