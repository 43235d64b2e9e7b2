"""MobileNet v1 (Howard et al., 2017) from ``DepthwiseSeparable`` blocks.

The layers are the paper's Table 1 (the last depthwise layer has stride 1, as
in every released implementation: Table 1's "s2" there would shrink 7x7 to 4x4).
Widths scale as in Keras' ``MobileNet(alpha=...)``: ``int(channels * width_mult)``.
Each convolution is followed by batch norm and ReLU, as in the paper (Keras
uses ReLU6). Not in torchvision; the weights start as in torchvision's
MobileNetV2 (Kaiming normal, fan-out; classifier normal(0, 0.01)).
"""

from __future__ import annotations

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, init_norms, probability, ratio
from onebyone.nn.blocks import DepthwiseSeparable
from onebyone.nn.conv import ConvNormAct

__all__ = ["MOBILENET_V1_LAYERS", "MobileNetV1", "mobilenet_v1"]

MOBILENET_V1_LAYERS: tuple[tuple[int, int], ...] = (
    # (pointwise output channels, depthwise stride) of the 13 separable layers
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet v1: a 3x3 stem (32 channels, stride 2), 13 depthwise-separable layers, FC.

    Args:
        num_classes: outputs of the final ``nn.Linear``.
        width_mult: the paper's width multiplier alpha (1.0, 0.75, 0.5, 0.25 published).
        dropout: dropout probability before the classifier (Keras' default 0.001).

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``.

    Example:
        >>> import torch
        >>> from onebyone.models import MobileNetV1
        >>> MobileNetV1(num_classes=10, width_mult=0.25)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self, *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.001
    ) -> None:
        super().__init__()
        classes = _checks.positive_int("num_classes", num_classes)
        alpha = ratio("width_mult", width_mult)
        p = probability("dropout", dropout)

        def width(c: int) -> int:
            return max(1, int(c * alpha))

        channels = width(32)
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, stride=2)]
        for c, s in MOBILENET_V1_LAYERS:
            layers.append(DepthwiseSeparable(channels, width(c), stride=s))
            channels = width(c)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p)
        self.fc = nn.Linear(channels, classes)
        self.num_classes, self.width_mult = classes, alpha

        for conv in convolutions(self):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1024 * alpha, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1024 * alpha)
        return self.fc(self.dropout(x))

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        if self.width_mult != 1.0:
            parts.append(f"width_mult={self.width_mult}")
        return ", ".join(parts)


def mobilenet_v1(
    *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.001
) -> MobileNetV1:
    """MobileNet v1, 4,231,976 parameters at ``width_mult=1`` (1000 classes)."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
