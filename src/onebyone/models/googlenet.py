"""GoogLeNet / Inception v1 (Szegedy et al., 2014) from ``Inception`` modules.

By default this is torchvision's variant: every convolution is followed by
batch norm (eps 0.001) and ReLU, the "5x5" branch uses a 3x3 kernel, max pools
use ``ceil_mode``, dropout 0.2 before the classifier, no auxiliary classifiers.
Module names and shapes match torchvision's ``googlenet.py``, so its checkpoint
loads with ``load_state_dict(strict=True)``. ``faithful=True`` restores the
paper's 5x5 kernels (keeping batch norm); ``aux_logits=True`` adds the two
auxiliary classifiers used in training.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from onebyone import _checks
from onebyone.geometry import same_padding
from onebyone.models._common import (
    convolutions,
    flag,
    init_norms,
    probability,
    truncated_normal_,
)
from onebyone.nn.blocks import Inception
from onebyone.nn.conv import Conv1x1

__all__ = ["INCEPTION_SETTINGS", "GoogLeNet", "GoogLeNetOutputs", "googlenet"]

INCEPTION_SETTINGS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    # in_channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (the paper's Table 1)
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs when ``aux_logits=True`` (torchvision's field order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class BasicConv2d(nn.Module):
    """Conv (no bias) -> batch norm (eps 0.001) -> ReLU, with torchvision's ``conv``/``bn`` names.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')``, "same" padding for odd kernels.

    Example:
        >>> import torch
        >>> BasicConv2d(64, 192, 3)(torch.randn(1, 64, 56, 56)).shape
        torch.Size([1, 192, 56, 56])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1
    ) -> None:
        super().__init__()
        k = _checks.positive_int("kernel_size", kernel_size)
        self.conv: nn.Module
        if k == 1:
            self.conv = Conv1x1(in_channels, out_channels, stride=stride, bias=False)
        else:
            pad = same_padding(k)[0]
            self.conv = nn.Conv2d(
                in_channels, out_channels, k, stride=stride, padding=pad, bias=False
            )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv to 128, FC 1024, dropout, FC.

    Shape:
        ``(N, C, H, W) -> (N, num_classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, 4))  # (N, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)))  # (N, 1024)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """GoogLeNet: stem, nine Inception modules, global average pool, dropout, FC.

    Args:
        num_classes: outputs of the final ``nn.Linear``.
        aux_logits: add the auxiliary classifiers ``aux1``/``aux2``; in training mode
            ``forward`` then returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``.
        faithful: use the paper's 5x5 kernels in the third branch (not
            torchvision-compatible); default ``False`` uses torchvision's 3x3.
        transform_input: map inputs normalised with ImageNet's mean/std to the
            ``(x - 0.5) / 0.5`` range, as torchvision's pretrained GoogLeNet expects
            (torchvision sets it when loading its weights; default ``False``).
        dropout: dropout before the classifier.
        dropout_aux: dropout inside the auxiliary classifiers.

    Shape:
        ``(N, 3, H, W) -> (N, num_classes)``; ``H, W >= 15``.

    Example:
        >>> import torch
        >>> from onebyone.models import GoogLeNet
        >>> GoogLeNet(num_classes=10).eval()(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        aux_logits: bool = False,
        faithful: bool = False,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__()
        classes = _checks.positive_int("num_classes", num_classes)
        self.aux_logits = flag("aux_logits", aux_logits)
        self.faithful = flag("faithful", faithful)
        self.transform_input = flag("transform_input", transform_input)
        p, p_aux = probability("dropout", dropout), probability("dropout_aux", dropout_aux)
        self.conv1 = BasicConv2d(3, 64, 7, stride=2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        k5 = 5 if faithful else 3

        def inception(name: str) -> Inception:
            return Inception(*INCEPTION_SETTINGS[name], branch3_kernel=k5, conv_block=BasicConv2d)

        self.inception3a = inception("inception3a")
        self.inception3b = inception("inception3b")
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception("inception4a")
        self.inception4b = inception("inception4b")
        self.inception4c = inception("inception4c")
        self.inception4d = inception("inception4d")
        self.inception4e = inception("inception4e")
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = inception("inception5a")
        self.inception5b = inception("inception5b")
        self.aux1 = InceptionAux(512, classes, dropout=p_aux) if aux_logits else None
        self.aux2 = InceptionAux(528, classes, dropout=p_aux) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p)
        self.fc = nn.Linear(1024, classes)
        self.num_classes = classes

        # torchvision's init: normal(0, 0.01) truncated at two standard deviations
        for conv in convolutions(self):
            truncated_normal_(conv.weight, 0.01, 0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                truncated_normal_(m.weight, 0.01, 0.02)
        init_norms(self)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5  # undo ImageNet normalisation, then (x - 0.5) / 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if self.transform_input:
            x = self._transform(x)
        x = self.maxpool1(self.conv1(x))  # (N, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (N, 192, H/8, W/8)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (N, 480, H/16, W/16)
        x = self.inception4a(x)  # (N, 512, H/16, W/16)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (N, 528, H/16, W/16)
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))  # (N, 832, H/32, W/32)
        x = self.inception5b(self.inception5a(x))  # (N, 1024, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1024)
        logits = self.fc(self.dropout(x))
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def extra_repr(self) -> str:
        parts = [f"num_classes={self.num_classes}"]
        for name in ("aux_logits", "faithful", "transform_input"):
            if getattr(self, name):
                parts.append(f"{name}=True")
        return ", ".join(parts)


def googlenet(
    *,
    num_classes: int = 1000,
    aux_logits: bool = False,
    faithful: bool = False,
    transform_input: bool = False,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    """GoogLeNet as in torchvision, 6,624,904 parameters (1000 classes, no auxiliary heads)."""
    return GoogLeNet(
        num_classes=num_classes,
        aux_logits=aux_logits,
        faithful=faithful,
        transform_input=transform_input,
        dropout=dropout,
        dropout_aux=dropout_aux,
    )
