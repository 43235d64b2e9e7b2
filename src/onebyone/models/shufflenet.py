"""ShuffleNet v1 (Zhang et al., 2017) from ``ShuffleUnit`` blocks.

The paper's Table 1 at scale 1x: a 3x3 stem (24 channels, stride 2), a 3x3 max
pool, three stages of 4, 8 and 4 units (the first of each with stride 2 and a
pooled, concatenated shortcut), bottlenecks a quarter of each stage's output,
no grouping in the very first 1x1 convolution, global pool and FC. Not in
torchvision; the weights start as in torchvision's ResNet (Kaiming normal,
fan-out), since the paper gives no initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, init_norms
from onebyone.nn.blocks import ShuffleUnit
from onebyone.nn.conv import ConvNormAct

__all__ = ["SHUFFLENET_STAGE_CHANNELS", "STAGE_REPEATS", "ShuffleNetV1", "shufflenet_v1"]

SHUFFLENET_STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    # groups -> output channels of stages 2, 3, 4 (the paper's Table 1, scale 1x)
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS: tuple[int, int, int] = (4, 8, 4)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 at scale 1x with ``groups`` groups in its pointwise convolutions.

    Args:
        num_classes: outputs of the final ``nn.Linear``.
        groups: 1, 2, 3, 4 or 8.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``.

    Example:
        >>> import torch
        >>> from onebyone.models import ShuffleNetV1
        >>> ShuffleNetV1(num_classes=10, groups=8)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, num_classes: int = 1000, groups: int = 3) -> None:
        super().__init__()
        classes = _checks.positive_int("num_classes", num_classes)
        if isinstance(groups, bool) or groups not in SHUFFLENET_STAGE_CHANNELS:
            raise _checks.invalid("groups", "one of 1, 2, 3, 4, 8", groups)
        self.conv1 = ConvNormAct(3, 24, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 24
        stages: list[nn.Sequential] = []
        widths = SHUFFLENET_STAGE_CHANNELS[groups]
        for i, (out, repeats) in enumerate(zip(widths, STAGE_REPEATS, strict=True)):
            units = [
                ShuffleUnit(
                    channels if j == 0 else out,
                    out,
                    groups=groups,
                    stride=2 if j == 0 else 1,
                    group_first=not (i == 0 and j == 0),
                )
                for j in range(repeats)
            ]
            stages.append(nn.Sequential(*units))
            channels = out
        self.stage2, self.stage3, self.stage4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        self.num_classes, self.groups = classes, groups

        for conv in convolutions(self):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        init_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))  # (N, 24, H/4, W/4)
        x = self.stage4(self.stage3(self.stage2(x)))  # (N, C_4, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, groups={self.groups}"


def shufflenet_v1(*, num_classes: int = 1000, groups: int = 3) -> ShuffleNetV1:
    """ShuffleNet v1 1x; about 1.87 M parameters with ``groups=3`` (1000 classes)."""
    return ShuffleNetV1(num_classes=num_classes, groups=groups)
