"""Module-level transforms that use the algebra of 1x1 convolutions: fold, merge, fuse,
layout, and ``verify``. (The whole-model ``optimize`` is ``onebyone.deploy``.)"""

from onebyone.transforms.fold import fold_batchnorm, fold_bn_weights, fold_conv_bn
from onebyone.transforms.fuse import fuse_epilogues
from onebyone.transforms.fused import FusedConv1x1, FusedConv2d
from onebyone.transforms.layout import CastDtype, ChannelsLast, cast, to_channels_last
from onebyone.transforms.merge import merge_pointwise, merge_pointwise_weights
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import (
    OutputError,
    VerificationError,
    VerifyReport,
    verify,
)

__all__ = [
    "CastDtype",
    "ChannelsLast",
    "FusedConv1x1",
    "FusedConv2d",
    "OutputError",
    "PassReport",
    "VerificationError",
    "VerifyReport",
    "cast",
    "fold_batchnorm",
    "fold_bn_weights",
    "fold_conv_bn",
    "fuse_epilogues",
    "merge_pointwise",
    "merge_pointwise_weights",
    "to_channels_last",
    "verify",
]
