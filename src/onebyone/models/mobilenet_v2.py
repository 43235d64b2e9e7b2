"""MobileNetV2 (Sandler et al., 2018) from ``InvertedResidual`` blocks.

Layout, channel rounding (``make_divisible``), ReLU6, batch-norm settings,
dropout placement and initialisation follow torchvision's ``mobilenetv2.py``,
so a torchvision checkpoint loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, init_norms, probability, ratio
from onebyone.nn.blocks import InvertedResidual
from onebyone.nn.conv import ConvNormAct

__all__ = ["INVERTED_RESIDUAL_SETTING", "MobileNetV2", "make_divisible", "mobilenet_v2"]

INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    # expansion t, channels c, repeats n, first stride s (the paper's Table 2)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below it nor 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(nn.Module):
    """MobileNetV2: a 3x3 stem, 17 inverted residual blocks, a 1x1 to 1280, a linear head.

    Args:
        num_classes: outputs of the final ``nn.Linear``.
        width_mult: multiplies every width (rounded to multiples of 8); the last
            1x1 keeps 1280 channels unless ``width_mult > 1``.
        dropout: dropout probability before the classifier.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``.

    Example:
        >>> import torch
        >>> from onebyone.models import MobileNetV2
        >>> MobileNetV2(num_classes=10, width_mult=0.5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self, *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        classes = _checks.positive_int("num_classes", num_classes)
        alpha = ratio("width_mult", width_mult)
        p = probability("dropout", dropout)
        channels = make_divisible(32 * alpha)
        self.last_channel = make_divisible(1280 * max(1.0, alpha))
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, stride=2, activation="relu6")]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * alpha)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(InvertedResidual(channels, out, stride=stride, expand_ratio=t))
                channels = out
        layers.append(ConvNormAct(channels, self.last_channel, 1, activation="relu6"))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p), nn.Linear(self.last_channel, classes))
        self.num_classes, self.width_mult = classes, alpha

        for conv in convolutions(self):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        init_norms(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1280, H/32, W/32)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (N, 1280)
        return self.classifier(x)

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        if self.width_mult != 1.0:
            parts.append(f"width_mult={self.width_mult}")
        return ", ".join(parts)


def mobilenet_v2(
    *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2, 3,504,872 parameters at ``width_mult=1`` (1000 classes)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
