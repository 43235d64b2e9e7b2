"""ONNX Runtime int8: ``onnxruntime.quantization.quantize_static`` on the exported graph.

The float32 graph is the ONNX Runtime engine's own export of the program
(``engines.onnxruntime.export_onnx``); ``quant_pre_process`` infers its shapes and
folds what it can, then ``quantize_static`` calibrates on the user's batches (a
``CalibrationDataReader``) and writes a QDQ model: per-channel int8 weights, int8
activations, the format ONNX Runtime's CPU provider fuses into integer kernels.
The session runs behind the engine's own module (``OnnxRuntimeModule``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram

from onebyone import _files
from onebyone.deploy.engines import onnxruntime as ort_engine
from onebyone.deploy.quantize.data import Batch
from onebyone.deploy.signature import CallSpec

__all__ = ["OnnxRuntimeInt8Module", "available", "onnxruntime_int8_module", "quantize_onnx"]


def available() -> str | None:
    """``None`` when ONNX Runtime (with its quantisation tools) imports, else the install."""
    why = ort_engine.available()
    if why is not None:
        return why
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:  # pragma: no cover - shipped with onnxruntime
        return f"onnxruntime.quantization does not import ({exc}): pip install 'onebyone[onnx]'"
    return None


class OnnxRuntimeInt8Module(ort_engine.OnnxRuntimeModule):
    """A QDQ int8 ONNX model run by ONNX Runtime behind the original model's call signature.

    Args:
        model_bytes: the serialised QDQ model.
        calibration_s: seconds spent pre-processing, calibrating and quantising.
        **kwargs: ``OnnxRuntimeModule``'s arguments.

    Shape:
        The original model's.
    """

    def __init__(self, model_bytes: bytes, *, calibration_s: float, **kwargs: Any) -> None:
        super().__init__(model_bytes, **kwargs)
        self.calibration_s = calibration_s

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the QDQ ONNX model at ``path`` by ``onebyone._files``' rule (all or
        nothing); ``onnxruntime.InferenceSession`` reads it back and computes what this
        module computes.

        Returns:
            ``path``.
        """
        return _files.write_bytes(path, self.model_bytes)


class _Reader:
    """The calibration batches as ONNX Runtime's ``CalibrationDataReader`` (a structural
    subclass: ``get_next`` gives one feed per batch, then ``None``)."""

    def __init__(self, names: list[str], batches: Sequence[Batch]) -> None:
        self.feeds = [
            {n: t.contiguous().numpy() for n, t in zip(names, b.inputs, strict=True)}
            for b in batches
        ]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantisation tools without their progress lines and warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(model_bytes: bytes, calibration: Sequence[Batch]) -> bytes:
    """A float32 ONNX model as a QDQ int8 model calibrated on ``calibration``.

    ``quant_pre_process`` (shape inference, graph folding), then ``quantize_static``
    with ``QuantFormat.QDQ``, per-channel weights and min-max calibration.

    Raises:
        ValueError: no calibration batch.
        RuntimeError: the quantisation tools failed (their message).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError(
            "Invalid value for argument `calibration`. Expected at least one batch of real "
            "inputs. Received none."
        )
    import onnx

    graph = onnx.load_model_from_string(model_bytes).graph
    initializers = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    reader = _Reader(names, calibration)
    with tempfile.TemporaryDirectory(prefix="onebyone-int8-") as folder, _quiet():
        plain, prepared, quantised = (Path(folder) / n for n in ("f32.onnx", "pre.onnx",
                                                                  "int8.onnx"))  # fmt: skip
        plain.write_bytes(model_bytes)
        try:
            quant_pre_process(str(plain), str(prepared))
        except Exception:  # pre-processing only helps: quantise the plain graph without it
            prepared = plain
        quantize_static(
            str(prepared),
            str(quantised),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return quantised.read_bytes()


def onnxruntime_int8_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    calibration: Sequence[Batch],
    spec: dict[str, Any],
    example: tuple[torch.Tensor, ...] = (),
    call: CallSpec | None = None,
    model_bytes: bytes | None = None,
) -> OnnxRuntimeInt8Module:
    """Export ``program`` (the ONNX Runtime engine's export, traced on ``inputs``), quantise
    it with ``quantize_static`` on the calibration batches and open a session on it, its
    batch fixed to ``example``'s.

    Args:
        program: the exported program.
        inputs: the inputs the exporter traces with.
        calibration: the batches to calibrate on (``split_data``).
        spec: ``FlatModule``'s arguments (the call signature).
        example: the example input, whose batch size the first session fixes.
        call: the calls the program serves (names its dynamic dimensions in the file).
        model_bytes: the float32 export of ``program``, when made already.

    Shape:
        The original model's.
    """
    plain = ort_engine.export_onnx(program, inputs, call) if model_bytes is None else model_bytes
    start = time.perf_counter()
    model_bytes = quantize_onnx(plain, calibration)
    seconds = time.perf_counter() - start
    batch = example[0].shape[0] if example and example[0].dim() >= 1 else None
    return OnnxRuntimeInt8Module(
        model_bytes, calibration_s=seconds, threads=torch.get_num_threads(), batch=batch, **spec
    )
