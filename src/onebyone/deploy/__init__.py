"""Whole-model ``optimize``: capture with ``torch.export``, the 1x1 algebra on the ATen
graph, the engines users pick (torch, ONNX Runtime, OpenVINO), verification, artifacts."""

from onebyone.deploy.artifacts import save_int8, save_onnx, save_openvino
from onebyone.deploy.capture import Capture, capture
from onebyone.deploy.optimize import (
    DEFAULT_TOLERANCES,
    ENGINES,
    PRECISIONS,
    EngineUnavailableError,
    optimize,
)
from onebyone.deploy.passes import drop_whole_slices, fold_norms, merge_pointwise
from onebyone.deploy.program import Program
from onebyone.deploy.report import Candidate, OptimizeReport

__all__ = [
    "DEFAULT_TOLERANCES",
    "ENGINES",
    "PRECISIONS",
    "Candidate",
    "Capture",
    "EngineUnavailableError",
    "OptimizeReport",
    "Program",
    "capture",
    "drop_whole_slices",
    "fold_norms",
    "merge_pointwise",
    "optimize",
    "save_int8",
    "save_onnx",
    "save_openvino",
]
