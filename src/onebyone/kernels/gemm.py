"""Portable path: the pointwise convolution as matrix products on views.

Runs on any device and dtype and is differentiable through PyTorch's autograd:
the path for float16 and float64 on the CPU, for devices without a faster
kernel, and for thin NCHW float32 inference (``routing.thin_nchw``).
Channels-last input already is the ``(N*H*W, C)`` matrix of pixels: one
``addmm`` (groups: one batched GEMM). NCHW input is the batch of
``(C/g, H*W)`` matrices: one ``baddbmm`` over ``N*g`` of them. The residual
(or else the bias) enters the GEMM as its accumulator ``C`` in ``C + A @ B``,
so the epilogue costs no extra pass for it.
"""

from __future__ import annotations

import torch

from onebyone.activations import apply_activation
from onebyone.kernels.epilogue import add_then_activate_

__all__ = ["conv1x1", "is_channels_last", "unsupported"]


def unsupported(x: torch.Tensor, needs_grad: bool) -> str | None:
    """The GEMM path runs everywhere."""
    return None


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is stored NHWC (and not also plain contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


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
    """``act(conv1x1(x) + bias + residual)`` through addmm/baddbmm.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))``; the output is
        channels-last exactly when ``x`` is.
    """
    n, c = x.shape[:2]
    k = weight.shape[0]
    g = groups
    cg, kg = c // g, k // g
    sh, sw = stride
    if is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1)[:, ::sh, ::sw, :]  # (N, H', W', C), a view
        ho, wo = pixels.shape[1], pixels.shape[2]
        rows = pixels.reshape(n * ho * wo, c)  # (N*P, C)
        acc = None if residual is None else residual.permute(0, 2, 3, 1).reshape(-1, k)  # (N*P, K)
        if g == 1:
            start = acc if acc is not None else bias
            y = rows @ weight.t() if start is None else torch.addmm(start, rows, weight.t())
            pending_bias = bias if acc is not None else None
        else:
            per_group = rows.view(-1, g, cg).transpose(0, 1)  # (g, N*P, C/g)
            y = torch.bmm(per_group, weight.view(g, kg, cg).transpose(1, 2))  # (g, N*P, K/g)
            y = y.transpose(0, 1).contiguous().view(-1, k)  # (N*P, K), one copy
            if acc is not None:
                y = y.add_(acc)
            pending_bias = bias
        if pending_bias is not None:
            y = y.add_(pending_bias)
        out = y.view(n, ho, wo, k).permute(0, 3, 1, 2)  # (N, K, H', W') channels-last
    else:
        cols = x[:, :, ::sh, ::sw]  # (N, C, H', W')
        ho, wo = cols.shape[2], cols.shape[3]
        cols = cols.reshape(n * g, cg, ho * wo)  # (N*g, C/g, P)
        if g == 1:
            w_batch = weight.expand(n, k, c)  # every image shares the weight: no copy
        else:
            w_batch = weight.view(g, kg, cg).expand(n, g, kg, cg).reshape(n * g, kg, cg)
        if residual is not None:
            start = residual.reshape(n * g, kg, ho * wo)  # (N*g, K/g, P)
        elif bias is not None:
            start = bias.view(g, kg, 1).expand(n, g, kg, 1).reshape(n * g, kg, 1)
        else:
            start = None
        y = torch.bmm(w_batch, cols) if start is None else torch.baddbmm(start, w_batch, cols)
        out = y.view(n, k, ho, wo)
        if residual is not None and bias is not None:  # the residual took the accumulator's place
            if not torch.is_grad_enabled():
                return add_then_activate_(out, bias.view(1, k, 1, 1), activation)
            out = out.add_(bias.view(1, k, 1, 1))
    return apply_activation(out, activation, inplace=not torch.is_grad_enabled())
