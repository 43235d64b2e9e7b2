"""Portable path: the pointwise convolution as matrix products on views.

Runs on any device and dtype and is differentiable through PyTorch's autograd,
so it is the training path. Channels-last input is already the ``(N*H*W, C)``
matrix of pixels, so it becomes one ``addmm`` (groups: one batched GEMM);
NCHW input is ``N`` products ``W @ X[n]`` with ``X[n]`` the ``(C, H*W)`` view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onebyone.kernels.epilogue import apply_activation

__all__ = ["conv1x1", "unsupported"]


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
    """``act(conv1x1(x) + bias + residual)`` through matmul/bmm.

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
        if g == 1:
            y = F.linear(rows, weight, bias)  # (N*P, K)
        else:
            per_group = rows.view(-1, g, cg).transpose(0, 1)  # (g, N*P, C/g)
            y = torch.bmm(per_group, weight.view(g, kg, cg).transpose(1, 2))  # (g, N*P, K/g)
            y = y.transpose(0, 1).contiguous().view(-1, k)  # (N*P, K), one copy
            if bias is not None:
                y = y.add_(bias)
        out = y.view(n, ho, wo, k).permute(0, 3, 1, 2)  # (N, K, H', W') channels-last
    else:
        cols = x[:, :, ::sh, ::sw]  # (N, C, H', W')
        ho, wo = cols.shape[2], cols.shape[3]
        cols = cols.reshape(n, g, cg, ho * wo)  # (N, g, C/g, P)
        y = torch.matmul(weight.view(g, kg, cg), cols)  # (N, g, K/g, P)
        out = y.view(n, k, ho, wo)
        if bias is not None:
            out = out + bias.view(1, k, 1, 1)
    if residual is not None:
        out = out.add_(residual)  # out is this call's own buffer; no saved tensor is touched
    return apply_activation(out, activation, inplace=not torch.is_grad_enabled())
