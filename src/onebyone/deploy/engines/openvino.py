"""The ``"openvino"`` engine: ``openvino.convert_model`` on the transformed program.

The program is decomposed first (``torch.ops.onebyone.conv1x1`` into ATen's
convolution and its epilogue), converted (max poolings whose indices nothing reads
become one-output poolings, as from an ONNX export), and compiled (at the example's shapes, and
with the batch dynamic for other sizes) for the CPU with the
precision always set explicitly (``INFERENCE_PRECISION_HINT``: OpenVINO's own
default is bfloat16 on CPUs with native bfloat16), ``PERFORMANCE_HINT=LATENCY``
and as many threads as PyTorch uses. In int8, NNCF (``nncf.quantize``, in
``onebyone.deploy.quantize.openvino``) quantises the same conversion, calibrated on
``Graph.calibration``.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
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
from onebyone.functional import decompositions

__all__ = [
    "OpenVINOModule",
    "available",
    "convert",
    "float_precisions",
    "int8_float_precision",
    "openvino_module",
    "precisions",
    "set_precision",
    "single_output_pools",
]

_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def available() -> str | None:
    """``None`` when openvino imports, else the pip install to run."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed: pip install 'onebyone[openvino]'"
    return None


def precisions() -> tuple[str, ...]:
    """The precisions OpenVINO's CPU plugin computes natively here (int8 where NNCF is
    installed)."""
    return float_precisions() + (("int8",) if importlib.util.find_spec("nncf") else ())


def int8_float_precision() -> str:
    """What the layers an int8 model leaves in floating point compute in: ``"bfloat16"``
    where this CPU computes it natively (OpenVINO's own default there; measured 1.03-1.08x
    faster than float32 ones on a Zen 4 CPU), else ``"float32"``."""
    return "bfloat16" if "bfloat16" in float_precisions() else "float32"


@functools.cache
def float_precisions() -> tuple[str, ...]:
    """The floating-point precisions OpenVINO's CPU plugin computes natively here."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("float32", "bfloat16") if "BF16" in capabilities else ("float32",)


def convert(program: ExportedProgram, call: CallSpec | None = None) -> Any:
    """The program as an ``openvino.Model`` (decomposed to ATen first) that owns its
    weights (``share_weights=False``: nothing reads the program's tensors later), its
    inputs declared with ``call``'s shapes: a static dimension static, a dynamic one
    over its proven range."""
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = program.run_decompositions(decompositions())
        model = ov.convert_model(plain, share_weights=False)
    if call is not None and len(call.dims) == len(model.inputs):
        model.reshape({port: ov.PartialShape([_dimension(d) for d in dims])
                       for port, dims in zip(model.inputs, call.dims, strict=True)})  # fmt: skip
    single_output_pools(model)
    return model


def single_output_pools(model: Any) -> int:
    """Replace each max pooling whose indices nothing reads by OpenVINO's one-output
    ``MaxPool`` (opset 1); returns how many were replaced.

    ``torch.export`` records a max pooling as ``max_pool2d_with_indices``, which
    ``convert_model`` turns into the two-output ``MaxPool`` (values and int64 indices).
    The CPU plugin computes the unread indices anyway and adds a ``Reorder`` and an
    ``Output`` for each (GoogLeNet: 15 ``Reorder`` nodes against 2 from the ONNX
    export, whose ``MaxPool`` has one output). A pooling is replaced only where the
    one-output form takes the same windows: no dilation, and an output of the same
    static spatial size (``ceil_torch`` rounding, PyTorch's ``ceil_mode``, differs
    from ``ceil`` only by dropping a last window that would start in the padding).
    """
    from openvino import opset1

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MaxPool" or op.get_output_size() != 2:
            continue
        if op.output(1).get_target_inputs():
            continue
        a = op.get_attributes()
        if any(d != 1 for d in a.get("dilations", ())):
            continue
        rounding = "ceil" if a["rounding_type"] == "ceil_torch" else a["rounding_type"]
        pool = opset1.max_pool(op.input_value(0), a["strides"], a["pads_begin"], a["pads_end"],
                               a["kernel"], rounding, a["auto_pad"])  # fmt: skip
        before, after = op.get_output_partial_shape(0), pool.get_output_partial_shape(0)
        if a["rounding_type"] == "ceil_torch" and not before[2:].is_static:
            continue
        if before != after:
            continue
        pool.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(pool.output(0))
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def _dimension(dim: int | DynamicDim) -> Any:
    import openvino as ov

    if isinstance(dim, int):
        return ov.Dimension(dim)
    return ov.Dimension(dim.low, -1 if dim.high is None else dim.high)


def set_precision(model: Any, precision: str) -> None:
    """Record ``precision`` in ``model``'s saved IR.

    The precision goes into the model's runtime options
    (``runtime_options/INFERENCE_PRECISION_HINT``, read by tools that honour them);
    for float32, every operation is also marked precise (``precise_0``, the attribute
    OpenVINO's own precision-sensitive passes set). A plain
    ``core.compile_model(xml, "CPU")`` still runs some operations of a float32 IR in
    bfloat16 on a CPU with native bfloat16 (the CPU plugin's default there, which
    neither record overrides for every operation): compile it with
    ``{"INFERENCE_PRECISION_HINT": "f32"}``.
    """
    model.set_rt_info(_HINTS[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    if precision == "float32":
        for op in model.get_ops():
            op.get_rt_info()["precise_0"] = ""


class OpenVINOModule(FlatModule):
    """Runs a compiled OpenVINO model behind the original model's call signature.

    The converted model keeps a symbolic batch dimension. Calls with the shapes the model
    was optimised for run a copy compiled with those shapes fixed (the CPU plugin then
    plans memory and picks kernels ahead); other shapes run the dynamic model, compiled
    on their first call.

    Args:
        model: the ``openvino.Model`` (kept to save it as IR, and to recompile after a
            copy).
        precision: ``"float32"`` or ``"bfloat16"`` (``INFERENCE_PRECISION_HINT``).
        threads: ``INFERENCE_NUM_THREADS``.
        shapes: the input shapes to compile a fixed-shape copy for, or ``None``.
        **spec: ``FlatModule``'s arguments.

    Shape:
        The original model's.
    """

    def __init__(
        self,
        model: Any,
        *,
        precision: str,
        threads: int,
        shapes: list[tuple[int, ...]] | None = None,
        **spec: Any,
    ) -> None:
        super().__init__(**spec)
        self.ov_model = model
        self.precision = precision
        self.threads = threads
        fits = shapes is not None and len(shapes) == len(model.inputs) and _dynamic(model)
        self.shapes = shapes if fits else None
        self._requests: dict[str, Any] = {}
        self._outputs = len(model.outputs)
        self._request("fixed" if self.shapes is not None else "dynamic")

    def _request(self, kind: str) -> Any:
        return self._infer(kind)[0]

    def _infer(self, kind: str) -> tuple[Any, Any]:
        """The infer request compiled for ``kind`` (``"fixed"``, ``"dynamic"``) and the
        function that runs it on a list of arrays."""
        made = self._requests.get(kind)
        if made is None:
            import openvino as ov

            model = self.ov_model
            if kind == "fixed":
                model = model.clone()
                model.reshape({port: ov.PartialShape(list(shape))
                               for port, shape in zip(model.inputs, self.shapes or [],
                                                      strict=True)})  # fmt: skip
            config = {
                "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads,
            }
            compiled = ov.Core().compile_model(model, "CPU", config)
            request = compiled.create_infer_request()
            made = self._requests[kind] = (request, _infer(request))
        return made

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenVINOModule:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            if key == "_requests":  # compiled again on first use
                clone.__dict__[key] = {}
            elif key == "ov_model":  # not changed after conversion: shared
                clone.__dict__[key] = value
            else:
                clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "an OpenVINO engine does not pickle; write its IR with "
            "onebyone.deploy.save_openvino (or `onebyone optimize --openvino DIR`)"
        )

    def run_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        shapes = self.shapes
        kind = "fixed" if shapes is not None and [a.shape for a in arrays] == shapes else "dynamic"
        made = self._requests.get(kind) or self._infer(kind)
        return made[1](arrays)

    def single(self, shape: tuple[int, ...]) -> Any:
        if len(self.ov_model.inputs) != 1 or self._outputs != 1 or not self._one_tensor:
            return None
        kind = "fixed" if self.shapes is not None and [shape] == self.shapes else "dynamic"
        request, run = self._infer(kind)
        compiled = _compiled(request)
        if compiled is None:  # another openvino layout: the public call
            return lambda array: run([array])[0]
        import openvino as ov

        tensor, port = ov.Tensor, request.model_outputs[0]
        return lambda array: compiled(request, tensor(array, shared_memory=True), False, True)[port]

    def extra_repr(self) -> str:
        fixed = f", fixed shapes {self.shapes}" if self.shapes is not None else ""
        return f"precision={self.precision!r}, threads={self.threads}{fixed}"


def _infer(request: Any) -> Any:
    """A function running ``request`` on a list of C-contiguous arrays, returning its
    outputs as arrays it owns.

    Each input is handed over as a tensor on the caller's memory, read in place
    (``CompiledModel.__call__`` shares its inputs too); the outputs are copied (the
    request reuses their memory on its next run). ``InferRequest.infer`` in Python
    dispatches on its inputs' types (arrays, lists, scalars; copied or shared) and wraps
    the results in an ``OVDict``; given ``openvino.Tensor`` inputs it needs neither, and
    the compiled method under it, called directly, takes 2-3% off a MobileNetV2 call at
    batch 1 in bfloat16 (measured call by call against ``CompiledModel.__call__``).
    """
    import openvino as ov

    ports = list(request.model_outputs)
    compiled = _compiled(request)
    if compiled is None:  # another openvino layout: the public call

        def public(arrays: list[np.ndarray]) -> list[np.ndarray]:
            feed = {i: ov.Tensor(a, shared_memory=True) for i, a in enumerate(arrays)}
            return list(request.infer(feed, share_inputs=True).to_tuple())

        return public

    def direct(arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) == 1:
            results = compiled(request, ov.Tensor(arrays[0], shared_memory=True), False, True)
        else:
            feed = {i: ov.Tensor(a, shared_memory=True) for i, a in enumerate(arrays)}
            results = compiled(request, feed, False, True)
        return [results[port] for port in ports]

    return direct


def _compiled(request: Any) -> Any:
    """The compiled ``infer(inputs, share_outputs, decode_strings)`` under the request's
    Python class, or ``None``."""
    return next((cls.__dict__["infer"] for cls in type(request).__mro__
                 if cls.__module__ == "openvino._pyopenvino" and "infer" in cls.__dict__),
                None)  # fmt: skip


def _dynamic(model: Any) -> bool:
    return any(port.get_partial_shape().is_dynamic for port in model.inputs)


def openvino_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
    spec: dict[str, Any],
    call: CallSpec,
    model: Any = None,
) -> OpenVINOModule:
    """Convert (``model``: converted already, a copy this module may own) and compile
    ``program`` for the CPU in ``precision``."""
    if precision not in float_precisions():
        raise ValueError(f"OpenVINO's CPU plugin does not compute {precision} natively here")
    if model is None:
        model = convert(program, call)
    set_precision(model, precision)
    return OpenVINOModule(
        model,
        precision=precision,
        threads=torch.get_num_threads(),
        shapes=[tuple(t.shape) for t in inputs],
        **spec,
    )


class OpenVINOEngine:
    """``openvino.convert_model`` + OpenVINO's CPU plugin."""

    name = "openvino"

    def available(self) -> str | None:
        return available()

    def precisions(self) -> tuple[str, ...]:
        return precisions()

    def build(self, graph: Graph, precision: str) -> nn.Module:
        if graph.program is None or graph.spec is None:
            raise ValueError("needs a torch.export capture")
        program, call = graph.program, graph.spec
        # one conversion per graph; each precision compiles (and marks) its own copy
        converted = graph.memo("openvino", lambda: convert(program, call)).clone()
        if precision == "int8":
            from onebyone.deploy.quantize.openvino import openvino_int8_module

            # the layers NNCF leaves in floating point run as OpenVINO runs them by
            # default: bfloat16 where this CPU computes it natively (int8 is lossy by
            # request already, and the candidate's error is measured as a whole)
            return openvino_int8_module(program, graph.inputs, calibration=graph.calibration,
                                        spec=graph.flat(), call=call, model=converted,
                                        float_precision=int8_float_precision())  # fmt: skip
        return openvino_module(program, graph.inputs, precision=precision, spec=graph.flat(),
                               call=call, model=converted)  # fmt: skip

    def save(self, built: Any, path: str | os.PathLike[str]) -> Path:
        """Write ``built`` (an ``openvino.Model``, or an ``OpenVINOModule`` optionally
        inside ``optimize``'s returned module: its model with its precision set) as IR,
        ``model.xml`` + ``model.bin`` in the folder ``path``; returns ``model.xml``."""
        import openvino as ov

        module = getattr(built, "engine", built)
        if isinstance(module, OpenVINOModule):
            model = module.ov_model.clone()
            set_precision(model, module.precision)
        elif isinstance(built, ov.Model):
            model = built
        else:
            raise TypeError(
                "Invalid value for argument `built`. Expected an openvino.Model or an "
                f"OpenVINO module of optimize. Received {type(built).__name__}."
            )
        return _files.write_folder(path, lambda temp: ov.save_model(
            model, str(temp / "model.xml"), compress_to_fp16=False)) / "model.xml"  # fmt: skip


ENGINE = register(OpenVINOEngine())
