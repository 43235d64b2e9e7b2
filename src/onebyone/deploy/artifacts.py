"""Deployable files of an optimised model: ONNX, and OpenVINO's IR (``.xml`` + ``.bin``).

Both are written atomically: into a temporary file or folder beside the target, then
renamed, so a failure leaves nothing behind and an existing target is replaced only
when the new one is complete. Serve them with an existing engine (ONNX Runtime,
OpenVINO Model Server, Triton Inference Server).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram

from onebyone import _files
from onebyone.deploy.engines import onnxruntime as ort_engine
from onebyone.deploy.engines import openvino as ov_engine
from onebyone.transforms.verify import VerificationError, VerifyReport, check, compare, run_model

__all__ = ["VerificationError", "save_onnx", "save_openvino"]


def _checked(
    module: nn.Module, original: nn.Module, inputs: tuple[torch.Tensor, ...], tolerance: float
) -> VerifyReport:
    reference = run_model(original, inputs, "original")
    report = compare(reference, run_model(module, inputs, "written"), rtol=tolerance,
                     atol=tolerance * 1e-2)  # fmt: skip
    check(report)
    return report


def _spec(program: ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    return {
        "in_spec": program.call_spec.in_spec,
        "out_spec": program.call_spec.out_spec,
        "input_dtypes": [t.dtype for t in inputs],
    }


def save_onnx(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    original: nn.Module,
    tolerance: float = 1e-4,
) -> tuple[Path, VerifyReport]:
    """Write ``program`` as an ONNX file at ``path``, atomically, once ONNX Runtime has run
    it and its outputs matched ``original``'s on ``inputs`` within ``tolerance``.

    Returns:
        ``(path, the written graph's errors)``.

    Raises:
        VerificationError: the exported graph differs from the original (nothing written).
        RuntimeError: the exporter failed.
        OSError: the folder is not writable.
    """
    target = Path(path)
    data = ort_engine.export_onnx(program, inputs)
    module = ort_engine.OnnxRuntimeModule(
        data, threads=torch.get_num_threads(), **_spec(program, inputs)
    )
    verified = _checked(module, original, inputs, tolerance)
    _files.write_bytes(target, data)
    return target, verified


def save_openvino(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    folder: str | os.PathLike[str],
    *,
    original: nn.Module,
    tolerance: float = 1e-4,
) -> tuple[Path, VerifyReport]:
    """Write ``program`` as OpenVINO IR (``model.xml`` + ``model.bin``) into ``folder``,
    atomically, once OpenVINO has run it in float32 and its outputs matched
    ``original``'s on ``inputs`` within ``tolerance``.

    Returns:
        ``(path of model.xml, the written graph's errors)``.

    Raises:
        VerificationError: the converted graph differs from the original (nothing written).
        RuntimeError: the conversion failed.
        OSError: the parent folder is not writable.
    """
    import openvino as ov

    target = Path(folder)
    model = ov_engine.convert(program)
    module = ov_engine.OpenVINOModule(
        model, precision="float32", threads=torch.get_num_threads(), **_spec(program, inputs)
    )
    verified = _checked(module, original, inputs, tolerance)
    _files.write_folder(
        target, lambda temp: ov.save_model(model, str(temp / "model.xml"), compress_to_fp16=False)
    )
    return target / "model.xml", verified
