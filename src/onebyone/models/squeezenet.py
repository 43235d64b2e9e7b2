"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016) from ``Fire`` modules.

Layout (``features`` numbered as in torchvision), max pools with ``ceil_mode``,
dropout before the final 1x1 convolution and the initialisation follow
torchvision's ``squeezenet.py``, so a torchvision checkpoint loads with
``load_state_dict(strict=True)``. The classifier is a 1x1 convolution to
``num_classes`` maps, a ReLU and a global average pool: no fully connected layer.
"""

from __future__ import annotations

import torch
from torch import nn

from onebyone import _checks
from onebyone.models._common import convolutions, probability
from onebyone.nn.blocks import Fire
from onebyone.nn.conv import Conv1x1

__all__ = ["SQUEEZENET_VERSIONS", "SqueezeNet", "squeezenet1_0", "squeezenet1_1"]

SQUEEZENET_VERSIONS: tuple[str, ...] = ("1_0", "1_1")

# Fire(in, squeeze, expand1x1, expand3x3) settings; "M" is a 3x3 max pool with stride 2
_LAYOUT: dict[str, list[tuple[int, int, int, int] | str]] = {
    "1_0": [
        "M",
        (96, 16, 64, 64),
        (128, 16, 64, 64),
        (128, 32, 128, 128),
        "M",
        (256, 32, 128, 128),
        (256, 48, 192, 192),
        (384, 48, 192, 192),
        (384, 64, 256, 256),
        "M",
        (512, 64, 256, 256),
    ],
    "1_1": [
        "M",
        (64, 16, 64, 64),
        (128, 16, 64, 64),
        "M",
        (128, 32, 128, 128),
        (256, 32, 128, 128),
        "M",
        (256, 48, 192, 192),
        (384, 48, 192, 192),
        (384, 64, 256, 256),
        (512, 64, 256, 256),
    ],
}
# stem convolution (out channels, kernel, stride): no padding in either version
_STEM = {"1_0": (96, 7, 2), "1_1": (64, 3, 2)}


class SqueezeNet(nn.Module):
    """SqueezeNet: a stem convolution, eight Fire modules, a 1x1-convolution classifier.

    Args:
        version: ``"1_0"`` (the paper) or ``"1_1"`` (the authors' cheaper revision).
        num_classes: output maps of the final 1x1 convolution.
        dropout: dropout probability before it.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``; ``H, W >= 21`` (1.0) or ``>= 17`` (1.1).

    Example:
        >>> import torch
        >>> from onebyone.models import SqueezeNet
        >>> SqueezeNet("1_1", num_classes=10)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self, version: str = "1_0", *, num_classes: int = 1000, dropout: float = 0.5
    ) -> None:
        super().__init__()
        _checks.choice("version", version, SQUEEZENET_VERSIONS)
        classes = _checks.positive_int("num_classes", num_classes)
        p = probability("dropout", dropout)
        out, k, s = _STEM[version]
        layers: list[nn.Module] = [nn.Conv2d(3, out, k, stride=s), nn.ReLU()]
        for item in _LAYOUT[version]:
            if item == "M":
                layers.append(nn.MaxPool2d(3, stride=2, ceil_mode=True))
            else:
                layers.append(Fire(*item))
        self.features = nn.Sequential(*layers)
        final_conv = Conv1x1(512, classes, activation="relu")
        self.classifier = nn.Sequential(nn.Dropout(p), final_conv, nn.AdaptiveAvgPool2d(1))
        self.version, self.num_classes = version, classes

        for conv in convolutions(self):
            if conv is final_conv:
                nn.init.normal_(conv.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.features(x))  # (N, num_classes, 1, 1)
        return torch.flatten(x, 1)

    def extra_repr(self) -> str:
        return f"version={self.version!r}, num_classes={self.num_classes}"


def squeezenet1_0(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet 1.0, 1,248,424 parameters (1000 classes)."""
    return SqueezeNet("1_0", num_classes=num_classes, dropout=dropout)


def squeezenet1_1(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    """SqueezeNet 1.1, 1,235,496 parameters (1000 classes)."""
    return SqueezeNet("1_1", num_classes=num_classes, dropout=dropout)
