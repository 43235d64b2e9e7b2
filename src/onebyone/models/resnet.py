"""ResNet-50/101/152 (He et al., 2015) from ``Bottleneck`` blocks.

Module names, paddings, batch-norm settings (eps 1e-5, momentum 0.1) and the
initialisation follow torchvision's ``resnet.py``, so a torchvision checkpoint
loads with ``load_state_dict(strict=True)``; the 1x1 convolutions are
``Conv1x1`` layers and accept torchvision's 4-D weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, flag, init_norms
from onebyone.nn.blocks import BOTTLENECK_VARIANTS, Bottleneck

__all__ = ["ResNet", "resnet50", "resnet101", "resnet152"]

EXPANSION = 4
STAGE_WIDTHS = (64, 128, 256, 512)
"""Bottleneck width of each stage; its output has ``4 x`` as many channels."""


class ResNet(nn.Module):
    """A bottleneck ResNet: stem, four stages of ``Bottleneck`` blocks, pooled classifier.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: outputs of the final ``nn.Linear``.
        variant: ``"v1.5"`` (stride on the 3x3, torchvision) or ``"v1"`` (stride
            on the first 1x1, the paper).
        zero_init_residual: start every block's last norm at zero, so each block
            begins as the identity.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``; ``H, W >= 32``.

    Example:
        >>> import torch
        >>> from onebyone.models import ResNet
        >>> ResNet((1, 1, 1, 1), num_classes=10)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        variant: str = "v1.5",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise _checks.invalid("layers", "four block counts", layers, kind=TypeError)
        if len(layers) != 4:
            raise _checks.invalid("layers", "four block counts, one per stage", layers)
        depths = [_checks.positive_int("layers", n) for n in layers]
        classes = _checks.positive_int("num_classes", num_classes)
        _checks.choice("variant", variant, BOTTLENECK_VARIANTS)
        flag("zero_init_residual", zero_init_residual)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        stages: list[nn.Sequential] = []
        for i, (width, depth) in enumerate(zip(STAGE_WIDTHS, depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                out = width * EXPANSION
                blocks.append(Bottleneck(channels, width, out, stride=stride, variant=variant))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, classes)
        self.layers, self.num_classes, self.variant = tuple(depths), classes, variant

        for conv in convolutions(self):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3 is not None:
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 2048, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 2048)
        return self.fc(x)

    def extra_repr(self) -> str:
        parts = [f"layers={self.layers}", f"num_classes={self.num_classes}"]
        if self.variant != "v1.5":
            parts.append(f"variant={self.variant!r}")
        return ", ".join(parts)


def resnet50(
    *, num_classes: int = 1000, variant: str = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50: ``(3, 4, 6, 3)`` bottlenecks, 25,557,032 parameters (1000 classes)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, variant=variant,
                  zero_init_residual=zero_init_residual)  # fmt: skip


def resnet101(
    *, num_classes: int = 1000, variant: str = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-101: ``(3, 4, 23, 3)`` bottlenecks, 44,549,160 parameters (1000 classes)."""
    return ResNet((3, 4, 23, 3), num_classes=num_classes, variant=variant,
                  zero_init_residual=zero_init_residual)  # fmt: skip


def resnet152(
    *, num_classes: int = 1000, variant: str = "v1.5", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-152: ``(3, 8, 36, 3)`` bottlenecks, 60,192,808 parameters (1000 classes)."""
    return ResNet((3, 8, 36, 3), num_classes=num_classes, variant=variant,
                  zero_init_residual=zero_init_residual)  # fmt: skip
