"""Transforms that use the algebra of 1x1 convolutions, and ``optimize``."""

from onebyone.transforms.fold import fold_batchnorm, fold_bn_weights, fold_conv_bn
from onebyone.transforms.fuse import fuse_epilogues
from onebyone.transforms.fused import FusedConv1x1, FusedConv2d
from onebyone.transforms.layout import (
    CastDtype,
    ChannelsLast,
    cast,
    to_channels_last,
)
from onebyone.transforms.merge import merge_pointwise, merge_pointwise_weights
from onebyone.transforms.onnx_export import OnnxExportError, export_onnx, to_onnx
from onebyone.transforms.optimize import ENGINES, LayerCounts, OptimizeReport, optimize
from onebyone.transforms.ort_engine import OnnxRuntimeModule
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import (
    OutputError,
    VerificationError,
    VerifyReport,
    verify,
)

__all__ = [
    "ENGINES",
    "CastDtype",
    "ChannelsLast",
    "FusedConv1x1",
    "FusedConv2d",
    "LayerCounts",
    "OnnxExportError",
    "OnnxRuntimeModule",
    "OptimizeReport",
    "OutputError",
    "PassReport",
    "VerificationError",
    "VerifyReport",
    "cast",
    "export_onnx",
    "fold_batchnorm",
    "fold_bn_weights",
    "fold_conv_bn",
    "fuse_epilogues",
    "merge_pointwise",
    "merge_pointwise_weights",
    "optimize",
    "to_channels_last",
    "to_onnx",
    "verify",
]
