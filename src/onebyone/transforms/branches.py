"""Parallel branches and chained layers as one convolution: the tensor math.

A 1x1 convolution is a k x k convolution whose kernel is zero outside its centre,
and an identity (or a per-channel scale such as an inference-mode norm) is a 1x1
convolution with a diagonal weight. So branches that read the same input with the
same stride, groups and centre, and whose outputs are summed,

    sum_b  s_b * (W_b * x + c_b)     (s_b a per-output-channel scale, W_b k_b x k_b)

are one convolution whose kernel is ``sum_b s_b W_b`` (each kernel zero-padded to
the largest, centred) and whose bias is ``sum_b s_b c_b``. Chained layers compose
the same way when one of them is 1x1: a 1x1 ``A`` after a k x k ``W`` is the k x k
kernel ``A @ W`` at every tap; a 1x1 ``A`` before it is ``W @ A`` at every tap.

Everything is computed in float64 and returned in the dtype of the first weight
given. The graph passes (``onebyone.deploy.passes``) decide where this is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "diagonal_kernel",
    "kernel_then_pointwise",
    "pad_kernel",
    "pointwise_then_kernel",
    "sum_branch_weights",
]


def _as_4d(weight: torch.Tensor) -> torch.Tensor:
    """``(K, C/g)`` -> ``(K, C/g, 1, 1)``; a 4-D weight unchanged."""
    return weight.reshape(*weight.shape, 1, 1) if weight.dim() == 2 else weight


def diagonal_kernel(
    scale: torch.Tensor, groups: int, kernel_size: Sequence[int] = (1, 1)
) -> torch.Tensor:
    """The kernel of ``x -> scale * x`` (per channel) as a grouped convolution.

    Output channel ``o`` reads input channel ``o``, which is entry ``o % (C / groups)``
    of its group's slice; the tap is the kernel's centre.

    Shape:
        ``scale (C,)`` -> ``(C, C / groups, kh, kw)``; ``kh``, ``kw`` odd.

    Example:
        >>> diagonal_kernel(torch.tensor([2.0, 3.0]), groups=2)[:, :, 0, 0].tolist()
        [[2.0], [3.0]]
    """
    channels = scale.shape[0]
    per_group = channels // groups
    kh, kw = kernel_size
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=scale.dtype, device=scale.device)
    rows = torch.arange(channels, device=scale.device)
    kernel[rows, rows % per_group, kh // 2, kw // 2] = scale
    return kernel


def pad_kernel(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """``weight`` zero-padded on every side to ``kernel_size``, its centre kept.

    Shape:
        ``(K, C/g, kh, kw)`` -> ``(K, C/g, KH, KW)`` with ``KH - kh`` and ``KW - kw`` even.

    Example:
        >>> pad_kernel(torch.ones(1, 1, 1, 1), (3, 3))[0, 0].tolist()
        [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    weight = _as_4d(weight)
    dh, dw = kernel_size[0] - weight.shape[2], kernel_size[1] - weight.shape[3]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            "Invalid value for argument `kernel_size`. Expected a size at least the weight's, "
            f"larger by an even number per side. Received kernel_size={tuple(kernel_size)} "
            f"for a weight of shape {tuple(weight.shape)}."
        )
    return torch.nn.functional.pad(weight, (dw // 2, dw // 2, dh // 2, dh // 2))


def sum_branch_weights(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    scales: Sequence[torch.Tensor],
    kernel_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One convolution for ``sum_b scales[b] * conv(x, weights[b], biases[b])``.

    Every branch must read the same input at the same stride, groups and centre;
    each kernel is padded to ``kernel_size`` (see ``pad_kernel``).

    Shape:
        ``weights[b] (K, C/g, kh_b, kw_b)``, ``biases[b] (K,)`` or ``None``,
        ``scales[b] (K,)`` -> ``W (K, C/g, KH, KW)``, ``b (K,)``.

    Example:
        >>> w, b = sum_branch_weights(
        ...     [torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)], [None, torch.ones(1)],
        ...     [torch.ones(1), torch.full((1,), 2.0)], (3, 3))
        >>> w[0, 0, 1].tolist(), b.tolist()
        ([1.0, 3.0, 1.0], [2.0])
    """
    dtype = weights[0].dtype
    total_w: torch.Tensor | None = None
    total_b: torch.Tensor | None = None
    for weight, bias, scale in zip(weights, biases, scales, strict=True):
        s = scale.detach().to(torch.float64)
        w = pad_kernel(weight.detach().to(torch.float64), kernel_size) * s.reshape(-1, 1, 1, 1)
        total_w = w if total_w is None else total_w + w
        if bias is not None:
            b = bias.detach().to(torch.float64) * s
            total_b = b if total_b is None else total_b + b
    if total_w is None:
        raise ValueError("Invalid value for argument `weights`. Expected at least one branch.")
    if total_b is None:
        total_b = torch.zeros(total_w.shape[0], dtype=torch.float64)
    return total_w.to(dtype), total_b.to(dtype)


def pointwise_then_kernel(
    pointwise: torch.Tensor,
    pointwise_bias: torch.Tensor | None,
    kernel: torch.Tensor,
    kernel_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 1x1 ``A`` followed by a k x k ``W`` as one k x k convolution: ``W @ A`` per tap.

    The bias ``W`` adds to ``A``'s bias is the sum over all taps, which equals what
    the chain computes only where no tap reads padding: exact when ``W`` does not
    pad, or ``A`` has no bias (the caller checks). Both ungrouped; ``A`` not strided.

    Shape:
        ``pointwise (M, C)`` or ``(M, C, 1, 1)``, ``kernel (K, M, kh, kw)``
        -> ``(K, C, kh, kw)``, ``(K,)`` or ``None``.

    Example:
        >>> w, b = pointwise_then_kernel(torch.ones(2, 1), None, torch.ones(1, 2, 3, 3), None)
        >>> w.shape, w[0, 0, 0, 0].item(), b
        (torch.Size([1, 1, 3, 3]), 2.0, None)
    """
    a = _as_4d(pointwise).detach().to(torch.float64)[:, :, 0, 0]  # (M, C)
    w = kernel.detach().to(torch.float64)  # (K, M, kh, kw)
    merged = torch.einsum("kmij,mc->kcij", w, a)
    bias = None
    if pointwise_bias is not None:
        bias = torch.einsum("kmij,m->k", w, pointwise_bias.detach().to(torch.float64))
    if kernel_bias is not None:
        extra = kernel_bias.detach().to(torch.float64)
        bias = extra if bias is None else bias + extra
    dtype = kernel.dtype
    return merged.to(dtype), None if bias is None else bias.to(dtype)


def kernel_then_pointwise(
    kernel: torch.Tensor,
    kernel_bias: torch.Tensor | None,
    pointwise: torch.Tensor,
    pointwise_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A k x k ``W`` followed by a 1x1 ``A`` as one k x k convolution: ``A @ W`` per tap.

    Exact for any padding, stride and dilation of ``W`` (the 1x1 mixes channels of each
    output pixel); both ungrouped.

    Shape:
        ``kernel (M, C, kh, kw)``, ``pointwise (K, M)`` or ``(K, M, 1, 1)``
        -> ``(K, C, kh, kw)``, ``(K,)`` or ``None``.

    Example:
        >>> w, b = kernel_then_pointwise(torch.ones(2, 1, 3, 3), torch.ones(2),
        ...                                 torch.ones(1, 2), None)
        >>> w[0, 0, 0, 0].item(), b.tolist()
        (2.0, [2.0])
    """
    a = _as_4d(pointwise).detach().to(torch.float64)[:, :, 0, 0]  # (K, M)
    w = kernel.detach().to(torch.float64)  # (M, C, kh, kw)
    merged = torch.einsum("km,mcij->kcij", a, w)
    bias = None
    if kernel_bias is not None:
        bias = a @ kernel_bias.detach().to(torch.float64)
    if pointwise_bias is not None:
        extra = pointwise_bias.detach().to(torch.float64)
        bias = extra if bias is None else bias + extra
    dtype = pointwise.dtype
    return merged.to(dtype), None if bias is None else bias.to(dtype)
