"""Network-in-Network for CIFAR-10 (Lin, Chen and Yan, 2013) from ``MlpConv`` blocks.

Three mlpconv layers (5x5 -> 192, 1x1 -> 160, 1x1 -> 96; 5x5 -> 192, 1x1 -> 192,
1x1 -> 192; 3x3 -> 192, 1x1 -> 192, 1x1 -> classes), each layer with a bias
and ReLU, 3x3 stride-2 max pooling and dropout 0.5 after the first two, and
global average pooling in place of fully connected layers: the last 1x1
layer produces one map per class. Pooling uses ``ceil_mode`` so a 32x32 input
gives 16x16 and 8x8 maps, as in the authors' Caffe model. The paper gives no
initialisation; the weights start Kaiming-normal (fan-in), biases at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, probability
from onebyone.nn.blocks import MlpConv

__all__ = ["NIN_LAYERS", "NiN", "nin"]

NIN_LAYERS: tuple[tuple[int, tuple[int, ...]], ...] = (
    # (kernel size of the first conv, output channels of its layers); the last
    # mlpconv gets one more 1x1 layer with num_classes outputs
    (5, (192, 160, 96)),
    (5, (192, 192, 192)),
    (3, (192, 192)),
)


class NiN(nn.Module):
    """Network-in-Network (CIFAR-10 variant): three mlpconv layers and global average pooling.

    Args:
        num_classes: maps produced by the last 1x1 convolution (10 for CIFAR-10).
        dropout: dropout probability after the first two mlpconv layers.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``; built for ``32 x 32``.

    Example:
        >>> import torch
        >>> from onebyone.models import NiN
        >>> NiN()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        classes = _checks.positive_int("num_classes", num_classes)
        p = probability("dropout", dropout)
        layers: list[nn.Module] = []
        channels = 3
        for i, (k, widths) in enumerate(NIN_LAYERS):
            last = i == len(NIN_LAYERS) - 1
            widths = (*widths, classes) if last else widths
            layers.append(MlpConv(channels, widths, k))
            if not last:
                layers += [nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Dropout(p)]
            channels = widths[-1]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = classes

        for conv in convolutions(self):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, num_classes, H/4, W/4)
        return torch.flatten(self.avgpool(x), 1)  # (N, num_classes)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def nin(*, num_classes: int = 10, dropout: float = 0.5) -> NiN:
    """Network-in-Network for CIFAR-10, 966,986 parameters (10 classes)."""
    return NiN(num_classes=num_classes, dropout=dropout)
