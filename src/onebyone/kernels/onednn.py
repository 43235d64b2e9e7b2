"""CPU inference path: oneDNN's convolution with fused post-ops.

``torch.ops.mkldnn._convolution_pointwise`` runs the 1x1 convolution with bias
and a unary post-op in one pass; its ``.binary`` overload adds the residual
(and can follow the add with ReLU). Other activations after a residual run in
place on the fresh output. No autograd: this path serves calls that need no
gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from onebyone.kernels.epilogue import LEAKY_RELU_SLOPE, apply_activation

__all__ = ["conv1x1", "is_available", "unsupported"]

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
    if needs_grad:
        return "oneDNN's fused convolution has no backward; use backend='gemm' for training"
    if x.dtype not in _DTYPES:
        return f"oneDNN on this CPU does not run {x.dtype}"
    if x.numel() == 0 or 0 in x.shape:
        return "oneDNN rejects empty inputs"
    return None


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
    geometry = ([0, 0], list(stride), [1, 1], groups)
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
