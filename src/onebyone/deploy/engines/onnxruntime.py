"""The ``"onnxruntime"`` engine: the transformed program through ``torch.onnx.export``.

The exporter (PyTorch's own, from the exported program: the batch dimension
stays symbolic) writes the ONNX graph; ONNX Runtime's CPU execution provider
runs it with all its graph optimisations, on as many threads as PyTorch uses. In
int8 the same export goes through ``onnxruntime.quantization.quantize_static``
(``onebyone.deploy.quantize.onnxruntime``: QDQ, per-channel weights, calibrated on
``Graph.calibration``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import ExportedProgram

from onebyone import _files
from onebyone.deploy.engines.base import FlatModule
from onebyone.deploy.engines.registry import Graph, register
from onebyone.deploy.signature import CallSpec, DynamicDim

__all__ = ["OnnxRuntimeModule", "available", "export_onnx", "onnxruntime_module", "precisions"]

PRECISIONS: tuple[str, ...] = ("float32",)
"""What this engine computes in without a quantiser (ONNX Runtime's CPU kernels: float32)."""


def precisions() -> tuple[str, ...]:
    """float32, and int8 where ONNX Runtime's quantisation tools are installed."""
    try:
        quantiser = importlib.util.find_spec("onnxruntime.quantization") is not None
    except ImportError:  # onnxruntime itself is missing
        quantiser = False
    return (*PRECISIONS, "int8") if quantiser else PRECISIONS


def available() -> str | None:
    """``None`` when onnxruntime, onnx and onnxscript import, else the pip install to run."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or 'onnxruntime'} is not installed: pip install 'onebyone[onnx]'"
    return None


def export_onnx(
    program: ExportedProgram, inputs: tuple[torch.Tensor, ...], call: CallSpec | None = None
) -> bytes:
    """The program as a serialised ONNX model (``torch.onnx.export``, opset of the exporter),
    its dynamic dimensions named after what they are (``batch``, ``height``, ``width``:
    ``call``'s names) and every other dimension static.

    Raises:
        RuntimeError: the exporter failed (its first line says why).
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, inputs, dynamo=True, verbose=False)
    if onnx_program is None:  # pragma: no cover - the dynamo exporter returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = onnx_program.model_proto
    if call is not None:
        _name_dims(proto, call)
    return bytes(proto.SerializeToString())


def _name_dims(proto: Any, call: CallSpec) -> None:
    """Rename export's symbols (``s77``) to the dimensions' names, everywhere in the graph."""
    names = {d.symbol: d.name for dims in call.dims for d in dims if isinstance(d, DynamicDim)}
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


class OnnxRuntimeModule(FlatModule):
    """Runs an ONNX model with ONNX Runtime behind the original model's call signature.

    The graph keeps a symbolic batch dimension. Calls at the batch size the model was
    optimised for run a session with that dimension fixed
    (``add_free_dimension_override_by_name``: ONNX Runtime then plans its memory and
    shapes ahead, measured a few percent faster); other batch sizes run a second
    session, made on their first call. Inputs go in as NumPy views of the tensors'
    memory and outputs come back as tensors over ONNX Runtime's arrays: no copies.
    Sessions are rebuilt after a copy or unpickling.

    Args:
        model_bytes: the serialised ONNX model.
        threads: ONNX Runtime's intra-op threads.
        batch: the batch size to fix in the first session (``None``: none fixed).
        **spec: ``FlatModule``'s arguments.

    Shape:
        The original model's.
    """

    def __init__(
        self, model_bytes: bytes, *, threads: int, batch: int | None = None, **spec: Any
    ) -> None:
        super().__init__(**spec)
        self.model_bytes = model_bytes
        self.threads = threads
        self.batch = batch
        self._batch_symbol = _batch_symbol(model_bytes) if batch is not None else None
        self._sessions: dict[bool, tuple[Any, Any]] = {}  # fixed -> (session, its run)
        self._session(fixed=self._batch_symbol is not None)  # made now: errors surface here

    def _session(self, *, fixed: bool) -> Any:
        made = self._sessions.get(fixed)
        if made is not None:
            return made[0]
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if fixed and self._batch_symbol is not None and self.batch is not None:
            options.add_free_dimension_override_by_name(self._batch_symbol, self.batch)
        session = ort.InferenceSession(
            self.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._names = [i.name for i in session.get_inputs()]
        self._sessions[fixed] = (session, _runner(session))
        return session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sessions"] = {}
        return state

    def run_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        fixed = self._batch_symbol is not None and bool(arrays)
        if fixed:
            batch = self.batch
            for a in arrays:
                if not a.ndim or a.shape[0] != batch:
                    fixed = False
                    break
        made = self._sessions.get(fixed)
        if made is None:
            self._session(fixed=fixed)
            made = self._sessions[fixed]
        return made[1](dict(zip(self._names, arrays, strict=True)), None)  # no run options

    def single(self, shape: tuple[int, ...]) -> Any:
        if len(self._names) != 1 or not self._one_tensor:
            return None
        fixed = self._batch_symbol is not None and len(shape) >= 1 and shape[0] == self.batch
        if len(self._session(fixed=fixed).get_outputs()) != 1:
            return None
        run, name = self._sessions[fixed][1], self._names[0]
        return lambda array: run({name: array}, None)[0]


def _runner(session: Any) -> Any:
    """``session.run`` on all outputs, called with a feed of every input and run options.

    The session's compiled entry point (``InferenceSession._sess.run``) is called
    directly where it exists: the Python ``run`` around it checks the feed's names
    (``OnnxRuntimeModule`` always passes every input) and, for execution providers
    other than the CPU's, retries on another provider. Those checks cost 0.5-1% of a
    MobileNetV2 call at batch 1, measured call by call against ``session.run``.
    """
    names = [o.name for o in session.get_outputs()]
    compiled = getattr(getattr(session, "_sess", None), "run", None)
    if compiled is None:  # another onnxruntime layout: the public call
        return functools.partial(session.run, names)
    return functools.partial(compiled, names)


def _batch_symbol(model_bytes: bytes) -> str | None:
    """The name of the symbolic batch dimension, when every input starts with the same one."""
    import onnx

    graph = onnx.load_model_from_string(model_bytes).graph
    names = set()
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            return None
        names.add(dims[0].dim_param)
    return names.pop() if len(names) == 1 else None


def onnxruntime_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
    spec: dict[str, Any],
    call: CallSpec,
    example: tuple[torch.Tensor, ...] = (),
    model_bytes: bytes | None = None,
) -> OnnxRuntimeModule:
    """Export ``program`` (traced on ``inputs``; ``model_bytes``: exported already) and
    open an ONNX Runtime session on it, its batch fixed to ``example``'s when the batch
    is dynamic."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX Runtime's CPU kernels here have no native {precision}")
    if model_bytes is None:
        model_bytes = export_onnx(program, inputs, call)
    dynamic = call.dynamic_batch and example and example[0].dim() >= 1
    batch = example[0].shape[0] if dynamic else None
    return OnnxRuntimeModule(model_bytes, threads=torch.get_num_threads(), batch=batch, **spec)


class OnnxRuntimeEngine:
    """``torch.onnx.export`` + ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"

    def available(self) -> str | None:
        return available()

    def precisions(self) -> tuple[str, ...]:
        return precisions()

    def build(self, graph: Graph, precision: str) -> nn.Module:
        if graph.program is None or graph.spec is None:
            raise ValueError("needs a torch.export capture")
        program, call = graph.program, graph.spec
        exported = graph.memo("onnx", lambda: export_onnx(program, graph.traced, call))
        if precision == "int8":
            from onebyone.deploy.quantize.onnxruntime import onnxruntime_int8_module

            return onnxruntime_int8_module(
                program,
                graph.traced,
                calibration=graph.calibration,
                spec=graph.flat(),
                example=graph.inputs,
                call=call,
                model_bytes=exported,
            )
        return onnxruntime_module(
            program,
            graph.traced,
            precision=precision,
            spec=graph.flat(),
            call=call,
            example=graph.inputs,
            model_bytes=exported,
        )

    def save(self, built: Any, path: str | os.PathLike[str]) -> Path:
        """Write ``built`` (ONNX bytes, or an ``OnnxRuntimeModule`` optionally inside
        ``optimize``'s returned module) as the ONNX file ``path``."""
        module = getattr(built, "engine", built)
        data = module.model_bytes if isinstance(module, OnnxRuntimeModule) else built
        if not isinstance(data, bytes):
            raise TypeError(
                "Invalid value for argument `built`. Expected ONNX bytes or an ONNX Runtime "
                f"module of optimize. Received {type(built).__name__}."
            )
        return _files.write_bytes(path, data)


ENGINE = register(OnnxRuntimeEngine())
