"""``optimize``: fold -> merge -> fuse -> layout, verified against the original, measured.

Two execution engines run the optimised model behind the same ``nn.Module``
interface:

- ``"torch"``: the fused graph itself, a readable ``torch.fx.GraphModule`` of
  ``FusedConv1x1`` / ``FusedConv2d`` modules (oneDNN fused convolutions with
  pre-packed weights on channels-last activations);
- ``"onnxruntime"``: the folded and merged graph written to ONNX by
  ``to_onnx`` and run by ONNX Runtime (whose own kernels and fusions then
  apply); inputs of other shapes run through the torch engine.

``engine="auto"`` builds both, checks both against the original and keeps
the faster one on the example input, as measured. Either way onebyone's part
is the 1x1 algebra before the engine (folding, merging, fusing) and the
proof that the outputs are unchanged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from onebyone import _checks
from onebyone.kernels import onednn
from onebyone.transforms._fx import activation_of, compute_nodes, is_add, trace
from onebyone.transforms.fold import _BN_TYPES, check_eval, check_model, fold_owned
from onebyone.transforms.fuse import fuse_owned
from onebyone.transforms.fused import FusedConv1x1, FusedConv2d
from onebyone.transforms.layout import cast, channels_last_owned
from onebyone.transforms.merge import merge_owned
from onebyone.transforms.onnx_export import OnnxExportError, build_onnx
from onebyone.transforms.ort_engine import OnnxRuntimeModule, onnxruntime_available
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import (
    VerificationError,
    VerifyReport,
    _tolerance,
    as_inputs,
    check,
    compare,
    default_tolerance,
    flatten_outputs,
    run_model,
)

__all__ = ["ENGINES", "PREPARE_BUDGET_S", "LayerCounts", "OptimizeReport", "optimize"]

ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
PREPARE_BUDGET_S = 1.8
"""``auto`` times the engines after their warm-up runs while preparation stays within this."""
_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class LayerCounts:
    """Operations on a model's ``torch.fx`` graph, by kind.

    ``total`` counts every computing node (module calls, functions, methods);
    ``convolutions`` includes fused ones, ``activations`` and ``adds`` only the
    standalone ones (a fused epilogue is part of its convolution).
    """

    total: int
    convolutions: int
    batch_norms: int
    activations: int
    adds: int

    def __str__(self) -> str:
        return (
            f"{self.total} ops ({self.convolutions} conv, {self.batch_norms} batch norm, "
            f"{self.activations} activation, {self.adds} add)"
        )


def count_layers(model: nn.Module) -> LayerCounts | None:
    """``LayerCounts`` of ``model``'s traced graph, or ``None`` when it does not trace."""
    graph, _ = trace(model)
    if graph is None:
        return None
    modules = dict(model.named_modules())
    nodes = compute_nodes(graph)
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, FusedConv1x1, FusedConv2d)
    convs = norms = acts = adds = 0
    for n in nodes:
        m = modules.get(str(n.target)) if n.op == "call_module" else None
        if m is not None and (isinstance(m, conv_types) or type(m).__name__ == "Conv1x1"):
            convs += 1
        elif isinstance(m, _BN_TYPES):
            norms += 1
        elif activation_of(n, modules) is not None:
            acts += 1
        elif is_add(n):
            adds += 1
    return LayerCounts(len(nodes), convs, norms, acts, adds)


@dataclass
class OptimizeReport:
    """What ``optimize`` did and measured.

    Attributes:
        engine: the engine of the returned model (``"torch"`` or ``"onnxruntime"``).
        dtype: the dtype the optimised model computes in.
        passes: one ``PassReport`` per pass (fold, merge, fuse, layout).
        layers_before / layers_after: the original's and the fused graph's
            operations (``None`` when a model does not trace).
        verify: the returned model's errors against the original (``None`` when
            ``verify=False``).
        engine_ms: each engine's latency on the example input when ``auto``
            measured them (best of a few runs), and the errors of the candidates.
        latency_before_ms / latency_after_ms: median latency of the original and
            the returned model on the example input (``None`` when ``measure=False``).
        prepare_s: seconds spent preparing (everything but the final measurement).
        notes: anything worth knowing (an engine that could not be used and why).
    """

    engine: str
    dtype: torch.dtype
    passes: list[PassReport] = field(default_factory=list)
    layers_before: LayerCounts | None = None
    layers_after: LayerCounts | None = None
    verify: VerifyReport | None = None
    engine_ms: dict[str, float] = field(default_factory=dict)
    candidate_errors: dict[str, float] = field(default_factory=dict)
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    prepare_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """``latency_before_ms / latency_after_ms`` when both were measured."""
        if self.latency_before_ms is None or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    @property
    def max_abs_error(self) -> float | None:
        return None if self.verify is None else self.verify.max_abs

    @property
    def max_rel_error(self) -> float | None:
        return None if self.verify is None else self.verify.max_rel

    def pass_counts(self) -> dict[str, int]:
        """``{pass name: number of changes}``."""
        return {p.name: p.count for p in self.passes}

    def __str__(self) -> str:
        lines = [f"engine: {self.engine} ({self.dtype}), prepared in {self.prepare_s:.2f} s"]
        if self.engine_ms:
            measured = ", ".join(f"{k} {v:.2f} ms" for k, v in self.engine_ms.items())
            lines.append(f"engines on the example input: {measured}")
        lines.append(f"layers before: {self.layers_before}")
        lines.append(f"layers after:  {self.layers_after}")
        lines += [f"{p.name}: {p.count}" for p in self.passes]
        if self.verify is not None:
            lines.append(f"max error: abs {self.verify.max_abs:.3g}, rel {self.verify.max_rel:.3g}")
        if self.latency_before_ms is not None and self.latency_after_ms is not None:
            lines.append(
                f"latency: {self.latency_before_ms:.2f} ms -> {self.latency_after_ms:.2f} ms "
                f"({self.speedup:.2f}x)"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def time_calls(fn: Callable[[], object], *, runs: int, budget_s: float) -> list[float]:
    """Seconds of up to ``runs`` calls of ``fn`` (at least one), stopping after ``budget_s``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return times


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype):
        raise _checks.invalid(
            "dtype", "None, torch.float32 or torch.bfloat16", dtype, kind=TypeError
        )
    if dtype not in _DTYPES:
        raise _checks.invalid("dtype", "None, torch.float32 or torch.bfloat16", dtype)
    if dtype == torch.bfloat16 and not (
        onednn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        raise ValueError(
            "Invalid value for argument `dtype`. Expected a dtype this CPU computes natively "
            "(oneDNN reports no bfloat16 support here). Received dtype=torch.bfloat16."
        )
    return dtype


def _check_inputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    param = next(iter(model.parameters()), None)
    for t in inputs:
        if t.device.type != "cpu":
            raise ValueError(
                "Invalid value for argument `example_input`. Expected CPU tensors (optimize "
                f"targets CPU inference). Received a tensor on {t.device}."
            )
        if param is not None and t.is_floating_point() and t.dtype != param.dtype:
            raise TypeError(
                "Invalid value for argument `example_input`. Expected the model's dtype "
                f"{param.dtype}. Received a tensor of dtype {t.dtype}."
            )
    if param is not None and param.dtype != torch.float32:
        raise TypeError(
            "Invalid value for argument `model`. Expected float32 parameters (pass "
            "dtype=torch.bfloat16 to compute in bfloat16). Received parameters of dtype "
            f"{param.dtype}."
        )


def _torch_engine(fused: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, PassReport]:
    report = PassReport("layout")
    model: nn.Module = channels_last_owned(fused)
    report.applied.append("activations and weights channels-last (inputs converted once)")
    if dtype != torch.float32:
        model = cast(model, dtype)
        report.applied.append(f"parameters cast to {dtype}; inputs cast at the entry")
    return model, report


def _onnxruntime_engine(
    merged: nn.Module, inputs: Sequence[torch.Tensor], reference: object, fallback: nn.Module
) -> tuple[OnnxRuntimeModule, int]:
    proto, arrays = build_onnx(merged, tuple(inputs), external=True)
    outputs = [t for _, t in flatten_outputs(reference)]
    single = isinstance(reference, torch.Tensor)
    module = OnnxRuntimeModule(
        proto.SerializeToString(),
        arrays,
        input_shapes=[tuple(t.shape) for t in inputs],
        output_shapes=[tuple(t.shape) for t in outputs],
        single_output=single,
        output_list=isinstance(reference, list),
        fallback=fallback,
    )
    return module, len(proto.graph.node)


def optimize(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    verify: bool = True,
    engine: str = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    measure: bool = True,
) -> tuple[nn.Module, OptimizeReport]:
    """Make ``model`` faster for CPU inference and prove its outputs unchanged.

    Applies ``fold_batchnorm`` -> ``merge_pointwise`` (only merges that save
    multiplies) -> ``fuse_epilogues`` -> channels-last layout and weight
    pre-packing, then builds the engine (see the module docstring), runs it on
    ``example_input`` and compares every output with the original's.

    Args:
        model: a float32 model in eval mode; it is not modified.
        example_input: a tensor or tuple of tensors the model accepts (CPU).
        dtype: ``None`` / ``torch.float32``, or ``torch.bfloat16`` to compute in
            bfloat16 where the CPU supports it (torch engine; its error is
            reported and checked against bfloat16's tolerance).
        verify: compare with the original and raise ``VerificationError`` when an
            output differs by more than ``atol + rtol * max |reference|``.
        engine: ``"auto"`` (build both, keep the faster as measured on the example
            input: one warm-up run each, then timed runs while preparation stays
            within ``PREPARE_BUDGET_S``; past it the warm-up runs decide, and the
            report says so), ``"torch"`` or ``"onnxruntime"``.
        rtol, atol: tolerances; default per dtype (float32: ``1e-4``, ``1e-6``;
            bfloat16: ``6e-2``, ``1e-3``).
        measure: time the original and the result on the example input for the report.

    Returns:
        ``(optimised model, OptimizeReport)``. The model is an ``nn.Module`` with the
        original's call signature; inputs it was not built for (other shapes) run
        through the torch engine.

    Raises:
        ValueError: ``model`` in training mode, an input the model rejects, a
            non-CPU input, an unsupported ``dtype`` or ``engine``, or the requested
            engine cannot run this model.
        TypeError: wrong argument types or a non-float32 model.
        VerificationError: the result's outputs differ beyond the tolerance.

    Shape:
        Unchanged: the result computes ``model``'s function.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()).eval()
        >>> fast, report = obo.optimize(model, torch.randn(1, 3, 32, 32), engine="torch")
        >>> report.pass_counts()["fold_batchnorm"], report.verify.ok
        (1, True)
    """
    start = time.perf_counter()
    check_model(model)
    check_eval(model)
    inputs = as_inputs(example_input)
    compute_dtype = _check_dtype(dtype)
    _checks.choice("engine", engine, ENGINES)
    for name, flag in (("verify", verify), ("measure", measure)):
        if not isinstance(flag, bool):
            raise _checks.invalid(name, "True or False", flag, kind=TypeError)
    _check_inputs(model, inputs)
    d_rtol, d_atol = default_tolerance(compute_dtype)
    rtol = d_rtol if rtol is None else _tolerance("rtol", rtol)
    atol = d_atol if atol is None else _tolerance("atol", atol)

    reference = run_model(model, inputs, "original")
    report = OptimizeReport(engine=engine, dtype=compute_dtype)
    folded, fold_report = fold_owned(model, inputs, owned=False)
    merged, merge_report = merge_owned(folded, True, owned=True)
    # ``merged`` also feeds the ONNX export: a traced model is fused into a new GraphModule
    # (new containers, new fused modules) without changing it; otherwise fuse a copy
    fused, fuse_report = fuse_owned(merged, owned=merge_report.traced)
    report.layers_before = count_layers(model)
    report.layers_after = count_layers(fused)
    torch_model, layout_report = _torch_engine(fused, compute_dtype)
    report.passes = [fold_report, merge_report, fuse_report, layout_report]

    candidates: dict[str, nn.Module] = {}
    if engine in ("auto", "torch"):
        candidates["torch"] = torch_model
    if engine in ("auto", "onnxruntime"):
        why = None
        if compute_dtype != torch.float32:
            why = f"ONNX Runtime's CPU kernels are used in float32 only, not {compute_dtype}"
        elif not onnxruntime_available():
            why = "onnxruntime is not installed"
        if why is None:
            try:
                ort_model, onnx_nodes = _onnxruntime_engine(merged, inputs, reference, torch_model)
                candidates["onnxruntime"] = ort_model
                report.notes.append(
                    f"ONNX graph: {onnx_nodes} nodes (before ONNX Runtime's own fusions)"
                )
            except (OnnxExportError, RuntimeError) as exc:
                why = f"ONNX export or session failed: {exc}"
        if why is not None:
            if engine == "onnxruntime":
                raise ValueError(
                    "Invalid value for argument `engine`. Expected an engine that can run this "
                    f"model. Received engine='onnxruntime': {why}."
                )
            report.notes.append(f"onnxruntime engine not used: {why}")

    # check every candidate (this is also its warm-up run)
    checked: dict[str, VerifyReport] = {}
    first_runs: dict[str, float] = {}
    for name, candidate in list(candidates.items()):
        t = time.perf_counter()
        output = run_model(candidate, inputs, f"optimised ({name})")
        first_runs[name] = time.perf_counter() - t
        try:
            result = compare(reference, output, rtol=rtol, atol=atol)
        except VerificationError as exc:  # the outputs' structure or shapes differ
            if engine != "auto" or len(candidates) == 1:
                raise
            report.notes.append(f"{name} engine dropped: {exc}")
            del candidates[name]
            continue
        report.candidate_errors[name] = result.max_rel
        if verify and not result.ok:
            if engine != "auto" or len(candidates) == 1:
                check(result)
            report.notes.append(
                f"{name} engine dropped: outputs beyond the tolerance "
                f"({result.max_rel:.3g} relative)"
            )
            del candidates[name]
            continue
        checked[name] = result

    chosen = next(iter(candidates))
    if len(candidates) > 1:
        round_s = sum(first_runs[name] for name in candidates)  # a timed round costs about this
        if time.perf_counter() - start + round_s <= PREPARE_BUDGET_S:
            chosen = _fastest(candidates, inputs, report, start + PREPARE_BUDGET_S)
        else:  # the first (warm-up) runs decide; they include one-time costs for both
            report.engine_ms = {name: first_runs[name] * 1e3 for name in candidates}
            chosen = min(report.engine_ms, key=report.engine_ms.__getitem__)
            report.notes.append(
                "engine chosen by the warm-up runs: a timed round would have taken the "
                f"preparation past {PREPARE_BUDGET_S:g} s"
            )
    report.engine = chosen
    report.verify = checked[chosen] if verify else None
    report.prepare_s = time.perf_counter() - start
    result_model = candidates[chosen]
    if measure:
        with torch.inference_mode():
            before = time_calls(lambda: model(*inputs), runs=7, budget_s=1.0)
            after = time_calls(lambda: result_model(*inputs), runs=7, budget_s=1.0)
        report.latency_before_ms = statistics.median(before) * 1e3
        report.latency_after_ms = statistics.median(after) * 1e3
    return result_model, report


def _fastest(
    candidates: dict[str, nn.Module],
    inputs: Sequence[torch.Tensor],
    report: OptimizeReport,
    deadline: float,
) -> str:
    """Time the candidates alternately (best of up to 3 rounds; no new round after 0.3 s
    or past ``deadline``, a ``time.perf_counter()`` value) and pick the fastest."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(3):
            for name, candidate in candidates.items():
                t = time.perf_counter()
                candidate(*inputs)
                times[name].append(time.perf_counter() - t)
            now = time.perf_counter()
            if now - start > 0.3 or now + (now - start) > deadline:
                break
    report.engine_ms = {name: min(ts) * 1e3 for name, ts in times.items()}
    return min(report.engine_ms, key=report.engine_ms.__getitem__)
