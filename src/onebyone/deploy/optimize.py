"""``optimize``: capture, the 1x1 algebra, the engines users pick, verification, the fastest.

A model goes: ``torch.export`` with a dynamic batch (``capture``) -> norm folding
and pointwise merging on the ATen graph (``passes``) -> each engine that is
installed and computes the chosen precision natively here (``engines``: torch,
ONNX Runtime, OpenVINO; int8 through their quantisers, calibrated on the first
batches of the user's data) -> every candidate checked against the original on the
example, on a second input of another batch size and on the data -> the fastest
candidate within the tolerance (float32) or the accuracy budget (``max_drop``, a
lossy candidate on the held-out data), each timed on its own with the original
model, which is kept when nothing beats it. A model ``torch.export`` cannot capture
goes through the module-level transforms (``torch.fx``, else the eager model) on the
torch engine.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram

from onebyone import _checks
from onebyone.deploy.capture import capture, one_line
from onebyone.deploy.engines import onnxruntime as ort_engine  # noqa: F401  (registers)
from onebyone.deploy.engines import openvino as ov_engine  # noqa: F401  (registers)
from onebyone.deploy.engines import torch as torch_engine  # noqa: F401  (registers)
from onebyone.deploy.engines.registry import REGISTRY, Graph, names
from onebyone.deploy.example import Check, Example, output_scale, run_reference
from onebyone.deploy.passes import drop_whole_slices, fold_norms, merge_branches, merge_pointwise
from onebyone.deploy.program import Program
from onebyone.deploy.quantize import pt2e
from onebyone.deploy.quantize.budget import DEFAULT_MAX_DROP, accuracy_report, check_max_drop
from onebyone.deploy.quantize.cpu import int8_instructions
from onebyone.deploy.quantize.data import Batch, calibration_count
from onebyone.deploy.report import Candidate, OptimizeReport
from onebyone.deploy.served import Served, freeze
from onebyone.deploy.signature import dim_name
from onebyone.deploy.timing import Timing, machine_load, time_alone
from onebyone.transforms.fold import check_eval, check_model, fold_batchnorm
from onebyone.transforms.fuse import fuse_epilogues
from onebyone.transforms.verify import (
    VerificationError,
    VerifyReport,
    compare,
    flatten_outputs,
    run_model,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "ENGINES",
    "PRECISIONS",
    "EngineUnavailableError",
    "optimize",
]

ENGINES: tuple[str, ...] = ("auto", *names())
"""``"auto"`` and the engines registered when ``onebyone.deploy`` is imported
(``engines.registry.register`` adds more)."""
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "int8", "auto")
"""What ``optimize(precision=...)`` takes: one precision, or ``"auto"`` (the fastest of
float32, bfloat16 and, with data, int8, within the budget)."""
LOSSY: tuple[str, ...] = ("bfloat16", "int8")
"""Precisions whose error is a choice: held to ``max_drop`` on held-out data where given."""
DEFAULT_TOLERANCES: dict[str, float] = {"float32": 1e-4, "bfloat16": 6e-2}
"""Relative error (``max |c - r| / max |r|``, per output) each precision is checked at."""

_NOT_NATIVE: dict[tuple[str, str], Callable[[], str]] = {
    ("onnxruntime", "bfloat16"): lambda: "ONNX Runtime's CPU kernels here have no native bfloat16",
    ("torch", "bfloat16"): lambda: "oneDNN reports no bfloat16 on this CPU",
    ("openvino", "bfloat16"): lambda: "OpenVINO's CPU plugin reports no bfloat16 on this CPU",
    ("torch", "int8"): lambda: pt2e.available() or pt2e.SLOW,
    ("openvino", "int8"): lambda: "nncf is not installed: pip install 'onebyone[openvino]'",
    ("onnxruntime", "int8"): lambda: "onnxruntime.quantization does not import",
}
"""Why an engine does not compute a precision natively here, by ``(engine, precision)``."""

Progress = Callable[[str], None]


class EngineUnavailableError(RuntimeError):
    """An explicitly requested engine cannot run here; the message says why (and what to
    install)."""


def _available(engine: str) -> str | None:
    return REGISTRY[engine].available()


def _precisions(engine: str) -> tuple[str, ...]:
    return REGISTRY[engine].precisions()


def _not_native(engine: str, precision: str) -> str:
    why = _NOT_NATIVE.get((engine, precision))
    return why() if why is not None else f"{precision} is not native to {engine} on this CPU"


def _check_model_dtype(model: nn.Module, precision: str) -> None:
    param = next(iter(model.parameters()), None)
    if param is None or param.dtype == torch.float32:
        return
    if param.dtype == torch.bfloat16 and precision == "bfloat16":
        advice = "optimize casts a float32 model itself: pass model.float()"
    else:
        advice = "pass model.float(), with precision='bfloat16' to compute in bfloat16"
    raise TypeError(
        f"Invalid value for argument `model`. Expected float32 parameters ({advice}). "
        f"Received parameters of dtype {param.dtype}."
    )


def _expected_shape(model: nn.Module) -> str:
    """What input the model expects, as far as it says (timm's config, its first layer)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return f"(N, {', '.join(str(d) for d in cfg['input_size'])})"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return f"(N, {m.in_channels}, H, W)"
        if hasattr(m, "in_channels") and isinstance(m.in_channels, int) and m is not model:
            return f"(N, {m.in_channels}, H, W)"
        if isinstance(m, nn.Linear):
            return f"(N, {m.in_features})"
    return "an input the model accepts"


def _top1(reference: object, candidate: object) -> tuple[int, int] | None:
    """``(agreeing rows, rows)`` of the first output when it is a classifier's ``(N, C)``."""
    ref = next((t for _, t in flatten_outputs(reference)), None)
    cand = next((t for _, t in flatten_outputs(candidate)), None)
    if ref is None or cand is None or ref.dim() != 2 or ref.shape[1] < 2:
        return None
    if cand.shape != ref.shape:
        return None
    agree = int((ref.argmax(1) == cand.argmax(1)).sum())
    return agree, ref.shape[0]


CLOSE = 0.10
"""Candidates whose first medians lie within this fraction of the fastest are timed again."""
RETIME_ROUNDS = 3
"""Rounds of re-timing for the close candidates, each in another order."""


def _time_each(models: dict[str, nn.Module], inputs: tuple[torch.Tensor, ...]) -> dict[str, Timing]:
    """Each model timed on its own, one after another (``timing.time_alone``).

    One block each decides less well than the machine's drift between blocks when
    candidates are close: every one within ``CLOSE`` of the fastest, or whose 10th
    percentile beat the fastest's median (its block was slowed part of the time: its
    median says little), is timed again in
    ``RETIME_ROUNDS`` rounds, the order rotating from round to round so that none is
    always timed first or last, and keeps the median of its block medians (its runs
    and spread pooled). Close candidates thus share the same stretches of the
    machine's drift, and one slow block cannot decide.
    """
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() >= 1 else 1

    def block(name: str) -> Timing:
        module = models[name]
        return time_alone(lambda: module(*inputs), batch=batch)

    first = {name: block(name) for name in models}
    fastest = min(t.median_ms for t in first.values())
    # close: within CLOSE of the fastest, or a block whose fastest tenth of calls beat the
    # fastest's median (a block slowed by other work part of the time)
    close = sorted((n for n, t in first.items()
                    if t.median_ms <= (1 + CLOSE) * fastest or t.p10_ms <= fastest),
                   key=lambda n: first[n].median_ms)  # fmt: skip
    if len(close) < 2:
        return first
    blocks = {name: [first[name]] for name in close}
    order = close[::-1]  # the runner-up first
    for r in range(RETIME_ROUNDS):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            blocks[name].append(block(name))
    timings = dict(first)
    for name, timed in blocks.items():
        timings[name] = Timing(
            median_ms=statistics.median(t.median_ms for t in timed),
            p10_ms=min(t.p10_ms for t in timed), p90_ms=max(t.p90_ms for t in timed),
            runs=sum(t.runs for t in timed), batch=batch,
        )  # fmt: skip
    return timings


def _larger_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """The example with its batch grown to ``max(8, 2 n)`` rows (rows repeated)."""
    if not inputs or inputs[0].dim() == 0:
        return None
    n = inputs[0].shape[0]
    m = max(8, 2 * n)
    rows = torch.arange(m) % n
    return tuple(t[rows] if t.dim() >= 1 and t.shape[0] == n else t for t in inputs)


def _throughput(
    report: OptimizeReport, models: dict[str, nn.Module], inputs: tuple[torch.Tensor, ...],
    served: Callable[[tuple[torch.Tensor, ...]], bool],
) -> None:  # fmt: skip
    """Inputs per second of the original and the returned model at the example's batch
    and at a larger one (where the capture serves it)."""
    for name, t in (("original", report.latency_before), ("optimized", report.latency_after)):
        if t is not None:
            report.throughput.setdefault(name, {})[t.batch] = t.throughput
    larger = _larger_batch(inputs)
    if larger is None or not served(larger):
        return
    for name, module in models.items():
        t = time_alone(lambda m=module: m(*larger), batch=larger[0].shape[0])  # type: ignore[misc]
        report.throughput.setdefault(name, {})[t.batch] = t.throughput


def _timing_notes(report: OptimizeReport) -> None:
    """Warn when the machine was busy or the spread is wide."""
    if report.load is not None and report.load.busy:
        report.notes.append(
            f"the machine was busy ({report.load}): other work shares the cores, so the "
            "latencies and the speed-up are not reliable; time again on a quiet machine"
        )
    wide = [c.name for c in report.candidates if c.latency is not None and c.latency.wide]
    if wide:
        report.notes.append(
            f"wide timing spread (p90 - p10 over 25% of the median) for {', '.join(wide)}: "
            "the speed-up is uncertain"
        )


@dataclass(frozen=True)
class _Budget:
    """What a lossy candidate is held to: ``max_drop`` on the held-out data batches."""

    held_out: list[Check]
    max_drop: float


def _verify(
    candidate: Candidate,
    module: nn.Module,
    checks: list[Check],
    tolerance: float,
    budget: _Budget | None = None,
) -> list[VerifyReport]:
    """Run ``module`` on every check input and compare with the reference outputs.

    An output passes when ``max |c - r| <= tolerance * max |r| + floor``, the floor
    being ``tolerance * 1e-3`` of the largest output of the check (it scales with
    the outputs: a model whose outputs are all ~1e-9 gets no free pass). The user's
    data batches also give their own error, top-1 agreement and accuracy. With a
    ``budget`` (a lossy candidate), the candidate passes when its drop in accuracy
    (with labels) or in top-1 agreement with the original, on the held-out batches,
    is at most ``max_drop``; its errors are measured and reported all the same.
    """
    reports: list[VerifyReport] = []
    outputs: dict[int, object] = {}
    agree = rows = data_agree = data_rows = correct = labelled = 0
    data_rel: list[float] = []
    for check in checks:
        output = run_model(module, check.inputs, f"optimised ({candidate.name})")
        outputs[id(check)] = output
        floor = tolerance * 1e-3 * output_scale(check.reference)
        reports.append(compare(check.reference, output, rtol=tolerance, atol=floor))
        top1 = _top1(check.reference, output)
        if top1 is not None:
            agree, rows = agree + top1[0], rows + top1[1]
        if check.is_data:
            data_rel.append(reports[-1].max_rel)
            if top1 is not None:
                data_agree, data_rows = data_agree + top1[0], data_rows + top1[1]
            hits = _hits(output, check.labels)
            if hits is not None:
                correct, labelled = correct + hits, labelled + len(check.labels)  # type: ignore[arg-type]
    candidate.max_rel_error = max(r.max_rel for r in reports)
    candidate.max_abs_error = max(r.max_abs for r in reports)
    candidate.top1_agreement = agree / rows if rows else None
    if data_rel:
        candidate.data_max_rel_error = max(data_rel)
        candidate.data_top1_agreement = data_agree / data_rows if data_rows else None
        candidate.data_accuracy = correct / labelled if labelled else None
    if budget is not None:
        held = budget.held_out
        labels = [c.labels for c in held]
        accuracy = accuracy_report(
            [c.reference for c in held], [outputs[id(c)] for c in held],
            labels if all(y is not None for y in labels) else None, max_drop=budget.max_drop,
        )  # fmt: skip
        candidate.held_out_top1_agreement = accuracy.top1_agreement
        candidate.held_out_accuracy = accuracy.accuracy_candidate
        candidate.drop = accuracy.drop
        if accuracy.within_budget:
            candidate.ok = True
        elif accuracy.drop is None:
            candidate.why = (
                "the budget cannot be checked: no classifier output (N, classes) on the data"
            )
        else:
            candidate.why = (
                f"{accuracy.metric} drop {accuracy.drop:.3g} on the held-out data beyond "
                f"max_drop {budget.max_drop:g}"
            )
        return reports
    bad = next((r for r in reports if not r.ok), None)
    if bad is None:
        candidate.ok = True
    else:
        candidate.why = f"relative error {bad.max_rel:.3g} beyond the tolerance {tolerance:g}"
    return reports


def _hits(output: object, labels: torch.Tensor | None) -> int | None:
    """Rows whose arg-max (first output, ``(N, classes)``) equals ``labels``."""
    first = next((t for _, t in flatten_outputs(output)), None)
    if labels is None or first is None or first.dim() != 2 or first.shape[0] != len(labels):
        return None
    return int((first.argmax(1) == labels).sum())


def _check_tolerance(tolerance: object) -> float | None:
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise _checks.invalid("tolerance", "None or a number in (0, 1)", tolerance, kind=TypeError)
    if not 0 < tolerance < 1:
        raise _checks.invalid("tolerance", "None or a number in (0, 1)", tolerance)
    return float(tolerance)


def optimize(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    precision: str = "float32",
    tolerance: float | None = None,
    engine: str = "auto",
    dynamic: Sequence[Any] | None = None,
    data: Iterable[Any] | None = None,
    max_drop: float | None = None,
    measure: bool = True,
    progress: Progress | None = None,
) -> tuple[nn.Module, OptimizeReport]:
    """Make ``model`` faster for CPU inference, with its outputs checked against the original.

    Args:
        model: a float32 model in eval mode (any ``nn.Module``: timm, torchvision, your
            own). It is never run: ``optimize`` works on a deep copy, so its parameters,
            its buffers (even ones its forward updates) and its Python state stay as
            they were.
        example_input: a tensor or tuple of tensors the model takes (CPU, float32 for
            floating inputs, a batch of one or more). Cloned once; the caller's tensors
            are never written.
        precision: ``"float32"`` (exact within float32 rounding: relative error at most
            ``1e-4``), ``"bfloat16"`` (the engines' bfloat16 paths, where this CPU has
            them; lossy by choice, its error is measured and reported), ``"int8"``
            (post-training static quantisation by each engine's quantiser, calibrated on
            the first batches of ``data``, which it needs: NNCF on OpenVINO,
            ``quantize_static`` on ONNX Runtime; held to ``max_drop`` on the other
            batches) or ``"auto"`` (float32, bfloat16 where native and, with ``data``,
            int8 on every engine: the fastest within the tolerance or the budget; the
            float32 original always competes, so it is never slower than the exact
            model).
        tolerance: the relative error (``max |c - r| / max |r|`` per output) a candidate
            must meet; default ``DEFAULT_TOLERANCES[precision]``. With
            ``precision="bfloat16"``, a tolerance also lets float32 candidates compete and
            the fastest within it wins; with ``engine="auto"``, float32 candidates are
            also built, held to float32's bound, when no bfloat16 one meets the tolerance
            (the report says so).
        engine: ``"auto"`` (every installed engine, the fastest verified one, a frozen
            copy of the original model when nothing beats it), or ``"torch"``,
            ``"onnxruntime"``, ``"openvino"`` (only that engine is built).
        dynamic: dimensions besides the batch to serve at any size: names for every 4-D
            input (``("height", "width")``), or one sequence of dimension indices or
            names per input. Each is verified at a second size.
        data: the user's data to verify every candidate on as well: an iterable (a
            ``DataLoader`` works) of inputs shaped like ``example_input`` (any batch
            size) or of ``(input, label)`` pairs. The report gives each candidate's
            error, top-1 agreement with the original and, with labels, accuracy on it
            (the original's too); a candidate beyond the tolerance on it is refused.
            With int8 (and ``max_drop``), the first ``min(8, n // 2)`` of the ``n``
            batches calibrate and the others are held out for the budget.
        max_drop: the largest allowed drop, on the held-out data, in accuracy (with
            labels) or in top-1 agreement with the float32 original (without), a
            fraction in ``[0, 1]`` (default ``0.01``: one point). Int8, and every lossy
            candidate of ``"auto"`` with data (bfloat16 too), is kept only within it;
            given with ``precision="bfloat16"``, it replaces the tolerance for the
            bfloat16 candidates. float32 candidates keep their tolerance. Needs
            ``data``.
        measure: time the original and the result side by side (``auto`` always times
            its candidates).
        progress: called with a short message at each step (``onebyone optimize`` shows
            them).

    Returns:
        ``(optimised model, OptimizeReport)``: the model is an ``nn.Module`` called like
        the original (positional or keyword arguments). It serves exactly the inputs its
        capture proved (``report.serves``: the batch sizes and the dimensions export kept
        dynamic, in their ranges, every other dimension as in the example); any other
        input runs a frozen copy of the original model (with a warning once per new
        shape). It is frozen: it owns its weights on every engine, so changing the
        original later does not change it (optimise again).

    Raises:
        ValueError: ``model`` in training mode, an input the model rejects (the message
            names the shape it expects), an empty batch, an unknown precision or engine,
            bfloat16 or int8 where no engine computes it natively here, int8 without
            ``data`` or with a single batch, ``max_drop`` outside ``[0, 1]`` or without
            ``data``.
        TypeError: wrong argument types, a non-float32 model or input.
        EngineUnavailableError: an explicit engine that is not installed (the message
            names the pip extra) or cannot run this model (the message says why).
        VerificationError: an explicit engine whose result differs beyond the tolerance
            (or the budget).

    Shape:
        Unchanged: the result computes ``model``'s function.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()).eval()
        >>> fast, report = obo.optimize(model, torch.randn(2, 3, 32, 32), engine="torch")
        >>> report.pass_counts()["fold_norms"], report.dynamic_batch
        (1, True)
    """
    start = time.perf_counter()
    check_model(model)
    check_eval(model)
    _checks.choice("precision", precision, PRECISIONS)
    _checks.choice("engine", engine, ("auto", *names()))
    tolerance = _check_tolerance(tolerance)
    budget_drop = None if max_drop is None else check_max_drop(max_drop)
    if not isinstance(measure, bool):
        raise _checks.invalid("measure", "True or False", measure, kind=TypeError)
    if progress is not None and not callable(progress):
        raise _checks.invalid("progress", "None or a callable taking a message", progress,
                              kind=TypeError)  # fmt: skip
    _check_data_for(precision, data, budget_drop)
    say = progress or (lambda message: None)
    _check_model_dtype(model, precision)
    example = Example.of(example_input, dynamic)
    inputs = example.inputs
    engines = list(names()) if engine == "auto" else [engine]
    if engine != "auto" and (why := _available(engine)) is not None:
        raise EngineUnavailableError(f"engine={engine!r} cannot run here: {why}")
    precisions = _precisions_to_build(precision, tolerance, data is not None)
    if precision in LOSSY:
        _check_native(precision, engines)
    limits = _limits(precision, tolerance)
    # a lossy candidate is held to the budget where there is data to measure it on
    budgeted = data is not None and (precision in ("int8", "auto") or budget_drop is not None)
    drop = DEFAULT_MAX_DROP if budget_drop is None else budget_drop

    # the caller's model is never run: a copy serves the checks, the capture and the
    # calls the capture did not prove
    work = freeze(copy.deepcopy(model))
    limit = limits["float32" if precision in ("int8", "auto") else precision]
    report = OptimizeReport(engine=engine, precision=precision, tolerance=limit)
    say("running the original model")
    run = run_reference(work, _expected_shape(model))
    example.build_checks(run, limit)
    budget: _Budget | None = None
    calibration: tuple[Batch, ...] = ()
    if data is not None:
        say("running the original model on the data")
        example.add_data(data, run)
        data_checks = [c for c in example.checks if c.is_data]
        report.data_batches = len(data_checks)
        report.data_rows = sum(_rows(c) for c in data_checks)
        if budgeted:
            calibration, budget = _split_for_budget(report, data_checks, drop)
    if precision == "auto" and data is None:
        report.notes.append("int8 was not built: it needs data= to calibrate on")
    report.exercised = example.exercised
    report.notes += example.notes

    say("capturing with torch.export")
    cap = capture(work, inputs, example.dynamic)
    report.capture, report.capture_attempts = cap.how, cap.attempts
    report.dynamic_batch = cap.dynamic_batch
    exported, spec = cap.program, cap.spec
    if exported is not None and spec is not None:
        program = Program(exported)
        report.passes = [fold_norms(program), merge_branches(program), merge_pointwise(program),
                         drop_whole_slices(program)]  # fmt: skip
        program.finish()
        report.program, report.call_spec = exported, spec
        report.serves = spec.describe()
        for index, dim in example.dynamic_dims():
            if isinstance(spec.dims[index][dim], int):
                report.notes.append(
                    f"export kept {dim_name(inputs[index].dim(), dim)} of input {index} "
                    "static: other sizes run the original model"
                )
        graph = Graph(exported, spec, inputs, _traced_inputs(exported, inputs),
                      calibration=calibration)  # fmt: skip
    else:
        say("torch.export failed: module-level transforms")
        folded, fold_report = fold_batchnorm(work, inputs, with_report=True)
        fused, fuse_report = fuse_epilogues(folded, with_report=True)
        report.capture = "torch.fx" if fold_report.traced else "eager"
        report.passes = [fold_report, fuse_report]
        report.dynamic_batch = True
        graph = Graph(None, None, inputs, inputs, module=fused, calibration=calibration)

    candidates: dict[str, nn.Module] = {}
    verified: dict[str, list[VerifyReport]] = {}

    def build(ps: list[str], limits: dict[str, float]) -> None:
        for name in engines:
            for p in ps:
                candidate = Candidate(name, p)
                report.candidates.append(candidate)
                module = _build(candidate, graph, work, cap.attempts, say)
                if module is not None:
                    say(f"checking {candidate.name}")
                    held = budget if p in LOSSY else None
                    try:
                        verified[candidate.name] = _verify(candidate, module, example.checks,
                                                           limits[p], held)  # fmt: skip
                    except (VerificationError, ValueError) as exc:
                        candidate.why = one_line(exc)
                if candidate.ok and module is not None:
                    candidates[candidate.name] = module
                    _keep_export(report, candidate, module)
                    if p == "int8":
                        report.int8_modules[name] = _engine_module(module)

    build(precisions, limits)
    if engine == "auto" and not candidates and "float32" not in precisions:
        # nothing lossy was asked for here: float32 candidates are held to float32's bound
        bound = f"max_drop {drop:g}" if budget is not None else f"the tolerance {limit:g}"
        report.notes.append(f"no {precision} candidate met {bound}: float32 candidates compete")
        build(["float32"], {"float32": min(limit, DEFAULT_TOLERANCES["float32"])})
    if engine != "auto" and not candidates:
        reasons = "; ".join(f"{c.name}: {c.why}" for c in report.candidates)
        if not any(c.max_rel_error is not None for c in report.candidates):
            raise EngineUnavailableError(f"engine={engine!r} cannot run this model: {reasons}")
        raise VerificationError(
            f"engine={engine!r} gives no result within the tolerance or budget: {reasons}",
            VerifyReport([], limit, 0.0),
        )
    if any(c.precision == "int8" and c.max_rel_error is not None for c in report.candidates):
        _int8_note(report)

    say("timing each candidate on its own")
    original = Candidate("original", "float32", max_rel_error=0.0, max_abs_error=0.0, ok=True)
    if data is not None:
        _verify(original, work, [c for c in example.checks if c.is_data], limit, budget)
        report.data_accuracy_original = original.data_accuracy
        report.held_out_accuracy_original = original.held_out_accuracy
        original.ok, original.why = True, ""
    timed: dict[str, nn.Module] = dict(candidates)
    if engine == "auto" or measure:
        timed["original/float32"] = work
        report.candidates.append(original)
    chosen_name = next(iter(candidates), "original/float32")
    if len(timed) > 1:
        report.load = machine_load()
        timings = _time_each(timed, inputs)
        for c in report.candidates:
            if c.name in timings:
                c.latency = timings[c.name]
                c.latency_ms = c.latency.median_ms
        pool = timings if engine == "auto" else {k: v for k, v in timings.items()
                                                 if k in candidates}  # fmt: skip
        chosen_name = min(pool, key=lambda k: pool[k].median_ms)
        if measure:
            report.latency_before = timings.get("original/float32")
            report.latency_after = timings[chosen_name]
            report.latency_before_ms = timings["original/float32"].median_ms
            report.latency_after_ms = timings[chosen_name].median_ms
            kept = {"original": work, "optimized": timed[chosen_name]}
            fits = (lambda x: spec.why_not(x) is None) if spec is not None else (lambda x: True)
            _throughput(report, kept, inputs, fits)
        _timing_notes(report)
    chosen_engine, _, chosen_precision = chosen_name.partition("/")
    report.engine, report.precision = chosen_engine, chosen_precision
    result = work if chosen_name == "original/float32" else candidates[chosen_name]
    if chosen_name == "original/float32":
        report.notes.append(
            "no candidate was faster than the original model on the example: a frozen copy "
            "of it is returned"
        )
    else:
        chosen_checks = verified[chosen_name]
        report.verify = chosen_checks[0]
        report.verify_other = chosen_checks[1] if len(chosen_checks) > 1 else None
    if not report.exercised:
        for c in report.candidates:
            if c.ok and c.engine != "original":
                c.why = "not verified: the checks cannot tell inputs apart"
    if not cap.dynamic_batch:
        report.notes.append(
            "the capture fixes the batch size: other batch sizes run the original model"
        )
    report.prepare_s = time.perf_counter() - start
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result, report


def _keep_export(report: OptimizeReport, candidate: Candidate, module: nn.Module) -> None:
    """Keep what a verified float32 candidate exported, for writing files from it."""
    if candidate.precision != "float32":
        return
    engine = getattr(module, "engine", None)
    if candidate.engine == "onnxruntime" and hasattr(engine, "model_bytes"):
        report.exports["onnx"] = engine.model_bytes  # type: ignore[union-attr]
    elif candidate.engine == "openvino" and hasattr(engine, "ov_model"):
        report.exports["openvino"] = engine.ov_model  # type: ignore[union-attr]


def _check_native(precision: str, engines: list[str]) -> None:
    """Refuse ``precision`` when none of ``engines`` computes it natively here, saying why."""
    installed = [e for e in engines if _available(e) is None]
    if any(precision in _precisions(e) for e in installed):
        return
    reasons = [f"{e}: {_not_native(e, precision)}" if e in installed else f"{e} is not installed"
               for e in engines]  # fmt: skip
    raise ValueError(
        "Invalid value for argument `precision`. Expected a precision the engine computes "
        f"natively here ({'; '.join(reasons)}). Received precision={precision!r}."
    )


def _check_data_for(precision: str, data: object, max_drop: float | None) -> None:
    """int8 needs data to calibrate on; a budget needs data to measure the drop on."""
    if precision == "int8" and data is None:
        raise ValueError(
            "Invalid value for argument `data`. Expected real inputs to calibrate int8 on "
            "(random calibration says nothing about the ranges of real activations): an "
            "iterable of input tensors or (input, label) pairs. Received data=None."
        )
    if max_drop is not None and data is None:
        raise ValueError(
            "Invalid value for argument `data`. Expected data to measure the accuracy drop "
            f"on, with max_drop={max_drop:g}. Received data=None."
        )


def _precisions_to_build(precision: str, tolerance: float | None, data: bool) -> list[str]:
    """The precisions ``precision`` builds (float32 competing where a tolerance asks)."""
    if precision == "auto":
        return ["float32", "bfloat16", "int8"] if data else ["float32", "bfloat16"]
    if tolerance is None or precision == "float32":
        return [precision]
    return ["float32", precision]


def _limits(precision: str, tolerance: float | None) -> dict[str, float]:
    """The relative error each built precision is checked at: the tolerance given, the
    asked precision's default for all (float32 or bfloat16), else each one's own."""
    if tolerance is not None:
        return dict.fromkeys(PRECISIONS, tolerance)
    if precision in DEFAULT_TOLERANCES:
        return dict.fromkeys(PRECISIONS, DEFAULT_TOLERANCES[precision])
    own = dict.fromkeys(PRECISIONS, DEFAULT_TOLERANCES["bfloat16"])  # int8: the budget rules
    return own | DEFAULT_TOLERANCES


def _rows(check: Check) -> int:
    first = check.inputs[0]
    return int(first.shape[0]) if first.dim() else 1


def _split_for_budget(
    report: OptimizeReport, data_checks: list[Check], max_drop: float
) -> tuple[tuple[Batch, ...], _Budget]:
    """The first data batches calibrate (``calibration_count``), the others are held out
    for the budget; the report says how many rows each."""
    if len(data_checks) < 2:
        raise ValueError(
            "Invalid value for argument `data`. Expected at least two batches for int8 or "
            "max_drop (the first calibrate, the others measure the accuracy drop). "
            f"Received {len(data_checks)}."
        )
    n_cal = calibration_count(len(data_checks))
    calibration = tuple(Batch(c.inputs, c.labels) for c in data_checks[:n_cal])
    budget = _Budget(data_checks[n_cal:], max_drop)
    report.max_drop = max_drop
    report.calibration_rows = sum(_rows(c) for c in data_checks[:n_cal])
    report.held_out_rows = sum(_rows(c) for c in budget.held_out)
    labelled = all(c.labels is not None for c in budget.held_out)
    report.budget_metric = "accuracy" if labelled else "top-1 agreement"
    return calibration, budget


def _engine_module(module: nn.Module) -> nn.Module:
    """The engine's own module inside ``Served``."""
    return module.engine if isinstance(module, Served) else module


def _int8_note(report: OptimizeReport) -> None:
    """Say what an int8 candidate's other layers compute in, and where int8 runs without
    integer dot-product instructions."""
    for c in report.candidates:
        other = getattr(report.int8_modules.get(c.engine), "precision", "float32")
        if c.precision == "int8" and other != "float32":
            report.notes.append(
                f"{c.name}: the layers left in floating point compute in {other}, "
                "as the engine's default does on this CPU (the candidate's error includes it)"
            )
    found = int8_instructions()
    if found is not None and not found:
        report.notes.append(
            "this CPU has no VNNI or AMX (integer dot-product instructions): int8 runs "
            "emulated with wider multiply-adds, and may be slower than float32"
        )


def _build(
    candidate: Candidate,
    graph: Graph,
    fallback: nn.Module,
    attempts: list[tuple[str, str]],
    say: Progress,
) -> nn.Module | None:
    """Build one candidate (behind ``Served`` where the graph has a call spec), or say
    in ``candidate.why`` why it cannot be."""
    name, precision = candidate.engine, candidate.precision
    why = _available(name)
    if why is None and precision not in _precisions(name):
        why = _not_native(name, precision)
    if why is not None:
        candidate.why = why
        return None
    say(f"building {candidate.name}")
    start = time.perf_counter()
    try:
        module = REGISTRY[name].build(graph, precision)
    except Exception as exc:  # an engine that cannot take this model: say why
        why = one_line(exc)
        if graph.program is None:
            failed = attempts[-1][1] if attempts else "it failed"
            why = f"needs a torch.export capture ({failed})"
        candidate.why = why
        return None
    finally:
        candidate.build_s = time.perf_counter() - start
    seconds = getattr(module, "calibration_s", None)
    candidate.calibration_s = float(seconds) if isinstance(seconds, (int, float)) else None
    return module if graph.spec is None else Served(module, graph.spec, fallback)


def _traced_inputs(
    program: ExportedProgram, inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    example = program.example_inputs
    return tuple(example[0]) if example is not None else inputs
