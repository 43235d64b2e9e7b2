"""Deployable files of an optimised model: ONNX, and OpenVINO's IR (``.xml`` + ``.bin``).

An int8 model is written from the quantised module ``optimize`` measured
(``save_int8``): the QDQ ONNX model ONNX Runtime ran, or the IR NNCF made, reloaded
plainly and checked to compute what was measured. Each engine that writes files
(``engines.registry.Saver``) writes them atomically through ``onebyone._files``:
into a temporary file or folder beside the target, then renamed, so a failure
leaves nothing behind and an existing target is replaced only when the new one is
complete. Serve them with an existing engine (ONNX Runtime, OpenVINO Model Server,
Triton Inference Server).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import ExportedProgram

from onebyone import _checks
from onebyone.deploy.engines import onnxruntime as ort_engine
from onebyone.deploy.engines import openvino as ov_engine
from onebyone.deploy.engines.registry import saver
from onebyone.deploy.example import output_scale
from onebyone.deploy.signature import CallSpec
from onebyone.transforms.verify import (
    VerificationError,
    VerifyReport,
    check,
    compare,
    flatten_outputs,
    run_model,
)

__all__ = ["VerificationError", "save_int8", "save_onnx", "save_openvino"]


def _checked(
    module: nn.Module, original: nn.Module, inputs: tuple[torch.Tensor, ...], tolerance: float
) -> VerifyReport:
    # the original runs as a copy: its buffers and state stay as the caller left them
    reference = run_model(copy.deepcopy(original), inputs, "original")
    floor = tolerance * 1e-3 * output_scale(reference)
    report = compare(reference, run_model(module, inputs, "written"), rtol=tolerance,
                     atol=floor)  # fmt: skip
    check(report)
    return report


def _call(
    program: ExportedProgram, inputs: tuple[torch.Tensor, ...], original: nn.Module,
    call: CallSpec | None,
) -> tuple[CallSpec, dict[str, Any]]:  # fmt: skip
    spec = call if call is not None else CallSpec.of(program, original, len(inputs))
    flat = {
        "in_spec": spec.in_spec,
        "out_spec": spec.out_spec,
        "input_dtypes": spec.dtypes,
        "output_constants": spec.constants,
    }
    return spec, flat


def save_onnx(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    original: nn.Module,
    tolerance: float = 1e-4,
    call: CallSpec | None = None,
    built: bytes | None = None,
) -> tuple[Path, VerifyReport]:
    """Write ``program`` as an ONNX file at ``path``, atomically, once ONNX Runtime has run
    it and its outputs matched ``original``'s on ``inputs`` within ``tolerance``.

    The file's inputs declare the shapes the capture proved (``call``, by default read
    from ``program``): static dimensions static, dynamic ones named ``batch``,
    ``height``, ``width`` (``dim{i}`` for others). ``built``: the ONNX bytes
    ``optimize`` already exported from ``program`` (``report.exports["onnx"]``),
    written instead of exporting again (still run and checked first).

    Returns:
        ``(path, the written graph's errors)``.

    Raises:
        VerificationError: the exported graph differs from the original (nothing written).
        RuntimeError: the exporter failed.
        OSError: the folder is not writable.
    """
    target = Path(path)
    spec, flat = _call(program, inputs, original, call)
    data = built if built is not None else ort_engine.export_onnx(program, inputs, spec)
    module = ort_engine.OnnxRuntimeModule(data, threads=torch.get_num_threads(), **flat)
    verified = _checked(module, original, inputs, tolerance)
    saver("onnxruntime").save(data, target)
    return target, verified


def save_openvino(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    folder: str | os.PathLike[str],
    *,
    original: nn.Module,
    tolerance: float = 1e-4,
    precision: str = "float32",
    call: CallSpec | None = None,
    built: Any = None,
) -> tuple[Path, VerifyReport]:
    """Write ``program`` as OpenVINO IR (``model.xml`` + ``model.bin``) into ``folder``,
    atomically, once OpenVINO has run it in ``precision`` and its outputs matched
    ``original``'s on ``inputs`` within ``tolerance``.

    The IR carries its precision in its runtime options
    (``runtime_options/INFERENCE_PRECISION_HINT``), but OpenVINO's CPU plugin does not
    read them: on a CPU with native bfloat16 a plain ``core.compile_model(xml, "CPU")``
    still runs some operations of a float32 IR in bfloat16 (its default there), so
    compile it with ``{"INFERENCE_PRECISION_HINT": "f32"}`` to compute as checked here
    (a bfloat16 IR runs as checked when compiled plainly); its inputs declare the shapes
    the capture
    proved (``call``). ``built``: the ``openvino.Model`` ``optimize`` already converted
    (``report.exports["openvino"]``), saved instead of converting again (still run and
    checked first).

    Returns:
        ``(path of model.xml, the written graph's errors)``.

    Raises:
        VerificationError: the converted graph differs from the original (nothing written).
        RuntimeError: the conversion failed.
        OSError: the parent folder is not writable.
    """
    target = Path(folder)
    spec, flat = _call(program, inputs, original, call)
    model = built.clone() if built is not None else ov_engine.convert(program, spec)
    ov_engine.set_precision(model, precision)
    module = ov_engine.OpenVINOModule(
        model, precision=precision, threads=torch.get_num_threads(), **flat
    )
    verified = _checked(module, original, inputs, tolerance)
    return saver("openvino").save(model, target), verified


def save_int8(
    module: nn.Module, path: str | os.PathLike[str], inputs: tuple[torch.Tensor, ...]
) -> tuple[Path, VerifyReport]:
    """Write an int8 engine module of ``optimize`` (``report.int8_modules[engine]``) as the
    quantised model it runs (a QDQ ``.onnx`` file at ``path``, or the int8 IR in the
    folder ``path``), reload it plainly (``onnxruntime.InferenceSession``;
    ``openvino.Core().compile_model(xml, "CPU")``) and check that it computes what
    ``module`` computes on ``inputs`` (relative error at most ``1e-4``).

    Returns:
        ``(the written file: .onnx or model.xml, the reloaded model's errors)``.

    Raises:
        TypeError: ``module`` is no int8 module with a ``save``.
        VerificationError: the reloaded model differs (the file is removed).
    """
    from onebyone.deploy.quantize.onnxruntime import OnnxRuntimeInt8Module
    from onebyone.deploy.quantize.openvino import OpenVINOInt8Module

    if not isinstance(module, (OnnxRuntimeInt8Module, OpenVINOInt8Module)):
        raise _checks.invalid(
            "module", "an int8 module of optimize (report.int8_modules)",
            type(module).__name__, kind=TypeError,
        )  # fmt: skip
    written = module.save(path)
    arrays = [t.detach().contiguous().numpy() for t in inputs]
    if isinstance(module, OnnxRuntimeInt8Module):
        import onnxruntime as ort

        session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        raw = session.run(None, dict(zip(names, arrays, strict=True)))
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(written), "CPU")
        result = compiled(arrays)
        raw = [result[port] for port in compiled.outputs]
    reloaded = tuple(torch.from_numpy(np.asarray(a).copy()) for a in raw)
    expected = tuple(t for _, t in flatten_outputs(module(*inputs)))
    floor = 1e-7 * output_scale(expected)
    report = compare(expected, reloaded, rtol=1e-4, atol=floor)
    try:
        check(report)
    except VerificationError:
        target = Path(written)
        for file in (target, target.with_suffix(".bin")) if target.suffix == ".xml" else (target,):
            file.unlink(missing_ok=True)
        raise
    return Path(written), report
