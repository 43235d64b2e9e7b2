"""Modules built on ``onebyone.conv1x1``."""

from onebyone.nn.blocks import (
    Bottleneck,
    ChannelFusion,
    DepthwiseSeparable,
    Fire,
    Inception,
    InvertedResidual,
    MlpConv,
    ShuffleUnit,
    SqueezeExcite,
    channel_shuffle,
)
from onebyone.nn.conv import Conv1x1, ConvNormAct, activation_module

__all__ = [
    "Bottleneck",
    "ChannelFusion",
    "Conv1x1",
    "ConvNormAct",
    "DepthwiseSeparable",
    "Fire",
    "Inception",
    "InvertedResidual",
    "MlpConv",
    "ShuffleUnit",
    "SqueezeExcite",
    "activation_module",
    "channel_shuffle",
]
