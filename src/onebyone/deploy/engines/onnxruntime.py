"""The ``"onnxruntime"`` engine: the transformed program through ``torch.onnx.export``.

The exporter (PyTorch's own, from the exported program: the batch dimension
stays symbolic) writes the ONNX graph; ONNX Runtime's CPU execution provider
runs it with all its graph optimisations, on as many threads as PyTorch uses.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.utils import _pytree as pytree

from onebyone.deploy.engines.base import FlatModule

__all__ = ["OnnxRuntimeModule", "available", "export_onnx", "onnxruntime_module"]

PRECISIONS: tuple[str, ...] = ("float32",)
"""What this engine computes in (ONNX Runtime's CPU kernels: float32)."""


def available() -> str | None:
    """``None`` when onnxruntime, onnx and onnxscript import, else the pip install to run."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or 'onnxruntime'} is not installed: pip install 'onebyone[onnx]'"
    return None


def export_onnx(program: ExportedProgram, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """The program as a serialised ONNX model (``torch.onnx.export``, opset of the exporter).

    Raises:
        RuntimeError: the exporter failed (its first line says why).
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, inputs, dynamo=True, verbose=False)
    if onnx_program is None:  # pragma: no cover - the dynamo exporter returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    return bytes(onnx_program.model_proto.SerializeToString())


class OnnxRuntimeModule(FlatModule):
    """Runs an ONNX model with ONNX Runtime behind the original model's call signature.

    Inputs go in as NumPy views of the tensors' memory and outputs come back as
    tensors over ONNX Runtime's arrays: no copies. The session is rebuilt after a
    copy or unpickling.

    Args:
        model_bytes: the serialised ONNX model.
        threads: ONNX Runtime's intra-op threads.
        **spec: ``FlatModule``'s arguments.

    Shape:
        The original model's.
    """

    def __init__(self, model_bytes: bytes, *, threads: int, **spec: Any) -> None:
        super().__init__(**spec)
        self.model_bytes = model_bytes
        self.threads = threads
        self._session: Any = self._make_session()

    def _make_session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(
            self.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._names = [i.name for i in session.get_inputs()]
        return session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._session is None:
            self._session = self._make_session()
        feed = {
            n: t.detach().contiguous().numpy() for n, t in zip(self._names, inputs, strict=True)
        }
        return [torch.from_numpy(o) for o in self._session.run(None, feed)]


def onnxruntime_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
    spec: dict[str, Any],
) -> OnnxRuntimeModule:
    """Export ``program`` and open an ONNX Runtime session on it."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX Runtime's CPU kernels run float32, not {precision}")
    model_bytes = export_onnx(program, inputs)
    return OnnxRuntimeModule(model_bytes, threads=torch.get_num_threads(), **spec)


def flat_spec(program: ExportedProgram) -> tuple[pytree.TreeSpec, pytree.TreeSpec]:
    """The program's input and output pytree specs."""
    return program.call_spec.in_spec, program.call_spec.out_spec
