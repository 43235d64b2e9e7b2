"""A 1x1 convolution is a fully connected layer applied at every pixel.

Seed 001: "This linear transformation across channels is equivalent to a fully
connected layer applied independently to each spatial location." Here one
``Conv1x1`` and the ``nn.Linear`` holding the very same weight matrix and bias
are run on the same input, the linear layer on the ``(N, H, W, C)`` view where
every pixel is one row, and the two outputs are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from onebyone import _checks
from onebyone.nn import Conv1x1

__all__ = ["FCEquivalence", "fc_equivalence"]


@dataclass(frozen=True)
class FCEquivalence:
    """Both outputs, the shared weights and one pixel worked through."""

    x: np.ndarray  # (N, C, H, W)
    weight: np.ndarray  # (K, C), shared by both layers
    bias: np.ndarray  # (K,)
    conv_output: np.ndarray  # (N, K, H, W), from Conv1x1
    linear_output: np.ndarray  # (N, K, H, W), from nn.Linear on the (N, H, W, C) view
    pixel: tuple[int, int, int]  # (n, row, col) worked through

    @property
    def max_abs_difference(self) -> float:
        return float(np.abs(self.conv_output - self.linear_output).max())

    @property
    def pixel_input(self) -> np.ndarray:
        """The ``C`` channel values at the worked pixel: the row the linear layer sees."""
        n, r, c = self.pixel
        return self.x[n, :, r, c]

    @property
    def pixel_output(self) -> np.ndarray:
        """The ``K`` values the convolution produced at the worked pixel."""
        n, r, c = self.pixel
        return self.conv_output[n, :, r, c]


def fc_equivalence(
    in_channels: int = 4,
    out_channels: int = 3,
    size: int | tuple[int, int] = (3, 4),
    *,
    batch: int = 2,
    seed: int = 0,
) -> FCEquivalence:
    """Run a ``Conv1x1`` and the ``nn.Linear`` with the same weights on one input.

    Args:
        in_channels: ``C``, the features per pixel.
        out_channels: ``K``, the outputs per pixel.
        size: ``H`` and ``W``.
        batch: ``N``.
        seed: seeds the weights and the input.

    Shape:
        ``(N, C, H, W) -> (N, K, H, W)`` for both; the linear layer sees ``(N*H*W, C)`` rows.

    Example:
        >>> fc_equivalence().max_abs_difference < 1e-6
        True
    """
    c = _checks.positive_int("in_channels", in_channels)
    k = _checks.positive_int("out_channels", out_channels)
    h, w = _checks.pair("size", size)
    n = _checks.positive_int("batch", batch)
    gen = torch.Generator().manual_seed(int(seed))
    conv = Conv1x1(c, k)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(k, c, generator=gen))
        assert conv.bias is not None
        conv.bias.copy_(torch.randn(k, generator=gen))
    linear = conv.to_linear()  # nn.Linear(C, K) holding the same (K, C) matrix and bias
    x = torch.randn(n, c, h, w, generator=gen)
    with torch.inference_mode():
        y_conv = conv(x)
        rows = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C): one row per pixel
        y_linear = linear(rows).permute(0, 3, 1, 2)  # (N, H, W, K) -> (N, K, H, W)
    return FCEquivalence(
        x=x.numpy(),
        weight=conv.weight.detach().numpy().copy(),
        bias=conv.bias.detach().numpy().copy(),
        conv_output=y_conv.numpy(),
        linear_output=y_linear.contiguous().numpy(),
        pixel=(n - 1, h // 2, w // 2),
    )
