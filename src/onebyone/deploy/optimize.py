"""``optimize``: capture, the 1x1 algebra, the engines users pick, verification, the fastest.

A model goes: ``torch.export`` with a dynamic batch (``capture``) -> norm folding
and pointwise merging on the ATen graph (``passes``) -> each engine that is
installed and computes the chosen precision natively here (``engines``: torch,
ONNX Runtime, OpenVINO) -> every candidate checked against the original on the
example and on a second input of another batch size -> the fastest candidate
within the tolerance, timed side by side with the original model, which is kept
when nothing beats it. A model ``torch.export`` cannot capture goes through the
module-level transforms (``torch.fx``, else the eager model) on the torch engine.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from onebyone import _checks
from onebyone.deploy.capture import capture, describe, one_line
from onebyone.deploy.engines import onnxruntime as ort_engine
from onebyone.deploy.engines import openvino as ov_engine
from onebyone.deploy.engines import torch as torch_engine
from onebyone.deploy.engines.base import StaticShapes
from onebyone.deploy.passes import drop_whole_slices, fold_norms, merge_branches, merge_pointwise
from onebyone.deploy.program import Program
from onebyone.deploy.report import Candidate, OptimizeReport
from onebyone.transforms.fold import check_eval, check_model, fold_batchnorm
from onebyone.transforms.fuse import fuse_epilogues
from onebyone.transforms.layout import to_channels_last
from onebyone.transforms.verify import (
    VerificationError,
    VerifyReport,
    as_inputs,
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

ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
DEFAULT_TOLERANCES: dict[str, float] = {"float32": 1e-4, "bfloat16": 6e-2}
"""Relative error (``max |c - r| / max |r|``, per output) each precision is checked at."""

TIMING_BUDGET_S = 2.0
"""How long the side-by-side timing of the candidates may take, at most (3 rounds at least)."""
BLOCK_CALLS = 3
"""Counted calls per model and round (after one call that is not counted)."""

Progress = Callable[[str], None]


class EngineUnavailableError(RuntimeError):
    """An explicitly requested engine cannot run here; the message says why (and what to
    install)."""


def _available(engine: str) -> str | None:
    if engine == "onnxruntime":
        return ort_engine.available()
    if engine == "openvino":
        return ov_engine.available()
    return None


def _precisions(engine: str) -> tuple[str, ...]:
    if engine == "torch":
        return torch_engine.precisions()
    if engine == "openvino":
        return ov_engine.precisions()
    return ort_engine.PRECISIONS


def _check_inputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    param = next(iter(model.parameters()), None)
    if param is not None and param.dtype != torch.float32:
        raise TypeError(
            "Invalid value for argument `model`. Expected float32 parameters (pass "
            "precision='bfloat16' to compute in bfloat16). Received parameters of dtype "
            f"{param.dtype}."
        )
    for t in inputs:
        if t.device.type != "cpu":
            raise ValueError(
                "Invalid value for argument `example_input`. Expected CPU tensors (optimize "
                f"targets CPU inference). Received a tensor on {t.device}."
            )
        if t.layout != torch.strided:
            raise TypeError(
                "Invalid value for argument `example_input`. Expected dense tensors. "
                f"Received a tensor with layout {t.layout}."
            )
        if t.is_floating_point() and t.dtype != torch.float32:
            raise TypeError(
                "Invalid value for argument `example_input`. Expected float32 tensors (the "
                f"model's dtype). Received a tensor of dtype {t.dtype}."
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


def _run_reference(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> object:
    try:
        return run_model(model, inputs, "original")
    except ValueError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ValueError(
            "Invalid value for argument `example_input`. Expected "
            f"{_expected_shape(model)}. Received {describe(inputs)}; the model raised "
            f"{one_line(cause)}"
        ) from exc


def _other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """A second input with one more row in the batch dimension (new random rows with the
    example's mean and spread; integer inputs repeat the example's rows)."""
    first = next((t for t in inputs if t.dim() >= 1), None)
    if first is None:
        return None
    n = first.shape[0]
    generator = torch.Generator().manual_seed(1)
    out = []
    for t in inputs:
        if t.dim() == 0 or t.shape[0] != n:
            out.append(t)
        elif t.is_floating_point():
            mean, std = float(t.float().mean()), float(t.float().std()) if t.numel() > 1 else 1.0
            noise = torch.randn((n + 1, *t.shape[1:]), generator=generator, dtype=t.dtype)
            out.append(noise * (std or 1.0) + mean)
        else:
            out.append(t[torch.arange(n + 1) % n])
    return tuple(out)


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


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _time_side_by_side(
    models: dict[str, nn.Module], inputs: tuple[torch.Tensor, ...], budget_s: float
) -> dict[str, float]:
    """Median latency (ms) of each model on ``inputs``.

    Rounds go over every model in a rotating order; each model runs a block of calls
    whose first one is not counted: the engine before it may leave threads spinning
    for a few milliseconds (ONNX Runtime's, OpenVINO's, OpenMP's), and only that
    first call would pay for them. At least 3 rounds, then more while within
    ``budget_s``.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    start = time.perf_counter()
    with torch.inference_mode():
        rounds = 0
        while rounds < 3 or (time.perf_counter() - start < budget_s and rounds < 30):
            order = names[rounds % len(names) :] + names[: rounds % len(names)]
            for name in order:
                models[name](*inputs)  # not counted: what the previous engine left running
                for _ in range(BLOCK_CALLS):
                    t = time.perf_counter()
                    models[name](*inputs)
                    times[name].append(time.perf_counter() - t)
            rounds += 1
    return {name: _median_ms(ts) for name, ts in times.items()}


def _verify(
    candidate: Candidate,
    module: nn.Module,
    checks: list[tuple[tuple[torch.Tensor, ...], object]],
    tolerance: float,
) -> list[VerifyReport]:
    """Run ``module`` on every check input and compare with the reference outputs."""
    reports: list[VerifyReport] = []
    agree = rows = 0
    for inputs, reference in checks:
        output = run_model(module, inputs, f"optimised ({candidate.name})")
        reports.append(compare(reference, output, rtol=tolerance, atol=tolerance * 1e-2))
        top1 = _top1(reference, output)
        if top1 is not None:
            agree, rows = agree + top1[0], rows + top1[1]
    candidate.max_rel_error = max(r.max_rel for r in reports)
    candidate.max_abs_error = max(r.max_abs for r in reports)
    candidate.top1_agreement = agree / rows if rows else None
    bad = next((r for r in reports if not r.ok), None)
    if bad is None:
        candidate.ok = True
    else:
        candidate.why = f"relative error {bad.max_rel:.3g} beyond the tolerance {tolerance:g}"
    return reports


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
    measure: bool = True,
    progress: Progress | None = None,
) -> tuple[nn.Module, OptimizeReport]:
    """Make ``model`` faster for CPU inference, with its outputs checked against the original.

    Args:
        model: a float32 model in eval mode (any ``nn.Module``: timm, torchvision, your
            own); it is not modified.
        example_input: a tensor or tuple of tensors the model takes (CPU, float32 for
            floating inputs). Cloned once; the caller's tensors are never written.
        precision: ``"float32"`` (exact within float32 rounding: relative error at most
            ``1e-4``) or ``"bfloat16"`` (the engines' bfloat16 paths, where this CPU has
            them; lossy by choice, its error is measured and reported).
        tolerance: the relative error (``max |c - r| / max |r|`` per output) a candidate
            must meet; default ``DEFAULT_TOLERANCES[precision]``. With
            ``precision="bfloat16"``, a tolerance also lets float32 candidates compete and
            the fastest within it wins; with ``engine="auto"``, float32 candidates are
            also built, held to float32's bound, when no bfloat16 one meets the tolerance
            (the report says so).
        engine: ``"auto"`` (every installed engine, the fastest verified one, the original
            model when nothing beats it), or ``"torch"``, ``"onnxruntime"``,
            ``"openvino"`` (only that engine is built).
        measure: time the original and the result side by side (``auto`` always times
            its candidates).
        progress: called with a short message at each step (``onebyone optimize`` shows
            them).

    Returns:
        ``(optimised model, OptimizeReport)``: the model is an ``nn.Module`` called like
        the original; it accepts any batch size when the capture kept the batch dynamic
        (the report says so). It is frozen: it owns copies of the weights, so changing
        the original later does not change it (optimise again).

    Raises:
        ValueError: ``model`` in training mode, an input the model rejects (the message
            names the shape it expects), an unknown precision or engine, bfloat16 where
            this CPU has no native bfloat16.
        TypeError: wrong argument types, a non-float32 model or input.
        EngineUnavailableError: an explicit engine that is not installed (the message
            names the pip extra) or cannot run this model (the message says why).
        VerificationError: an explicit engine whose result differs beyond the tolerance.

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
    say = progress or (lambda message: None)
    check_model(model)
    check_eval(model)
    _checks.choice("precision", precision, PRECISIONS)
    _checks.choice("engine", engine, ENGINES)
    tolerance = _check_tolerance(tolerance)
    if not isinstance(measure, bool):
        raise _checks.invalid("measure", "True or False", measure, kind=TypeError)
    inputs = tuple(t.detach().clone() for t in as_inputs(example_input))
    _check_inputs(model, inputs)
    engines = ["torch", "onnxruntime", "openvino"] if engine == "auto" else [engine]
    if engine != "auto" and (why := _available(engine)) is not None:
        raise EngineUnavailableError(f"engine={engine!r} cannot run here: {why}")
    precisions = (
        [precision] if tolerance is None or precision == "float32" else ["float32", precision]
    )
    if "bfloat16" in precisions and not any(
        "bfloat16" in _precisions(e) for e in engines if _available(e) is None
    ):
        raise ValueError(
            "Invalid value for argument `precision`. Expected a precision this CPU computes "
            "natively (neither oneDNN nor OpenVINO reports bfloat16 here). Received "
            "precision='bfloat16'."
        )
    limit = DEFAULT_TOLERANCES[precision] if tolerance is None else tolerance

    report = OptimizeReport(engine=engine, precision=precision, tolerance=limit)
    say("running the original model")
    checks = [(inputs, _run_reference(model, inputs))]
    other = _other_batch(inputs)
    if other is not None:
        try:
            checks.append((other, run_model(model, other, "original")))
        except ValueError as exc:
            report.notes.append(f"the original model rejects batch {describe(other)}: {exc}")

    say("capturing with torch.export")
    cap = capture(model, inputs)
    report.capture, report.capture_attempts = cap.how, cap.attempts
    report.dynamic_batch = cap.dynamic_batch
    builders: dict[str, Callable[[str], nn.Module]] = {}
    exported = cap.program
    if exported is not None:
        program = Program(exported)
        report.passes = [fold_norms(program), merge_branches(program), merge_pointwise(program),
                         drop_whole_slices(program)]  # fmt: skip
        program.finish()
        report.program = cap.program
        spec = _flat_spec(cap, inputs, model)

        def torch_builder(p: str) -> nn.Module:
            module = torch_engine.torch_module(exported, inputs, precision=p)
            if cap.dynamic_batch:
                return module
            return StaticShapes(module, [tuple(t.shape) for t in inputs], spec["fallback"])

        builders = {
            "torch": torch_builder,
            "onnxruntime": lambda p: ort_engine.onnxruntime_module(
                exported,
                _traced_inputs(cap, inputs),
                precision=p,
                spec=spec,
                example=inputs if cap.dynamic_batch else (),
            ),
            "openvino": lambda p: ov_engine.openvino_module(
                exported, inputs, precision=p, spec=spec
            ),
        }
    else:
        say("torch.export failed: module-level transforms")
        folded, fold_report = fold_batchnorm(model, inputs, with_report=True)
        fused, fuse_report = fuse_epilogues(folded, with_report=True)
        report.capture = "torch.fx" if fold_report.traced else "eager"
        report.passes = [fold_report, fuse_report]
        report.dynamic_batch = True
        builders = {"torch": lambda p: _module_engine(fused, p)}

    candidates: dict[str, nn.Module] = {}
    verified: dict[str, list[VerifyReport]] = {}

    def build(ps: list[str], limit: float) -> None:
        for name in engines:
            for p in ps:
                candidate = Candidate(name, p)
                report.candidates.append(candidate)
                module = _build(candidate, builders, cap.attempts, say)
                if module is not None:
                    say(f"checking {candidate.name}")
                    try:
                        verified[candidate.name] = _verify(candidate, module, checks, limit)
                    except (VerificationError, ValueError) as exc:
                        candidate.why = one_line(exc)
                if candidate.ok and module is not None:
                    candidates[candidate.name] = module

    build(precisions, limit)
    if engine == "auto" and not candidates and "float32" not in precisions:
        # nothing lossy was asked for here: float32 candidates are held to float32's bound
        report.notes.append(
            f"no {precision} candidate met the tolerance {limit:g}: float32 candidates compete"
        )
        build(["float32"], min(limit, DEFAULT_TOLERANCES["float32"]))
    if engine != "auto" and not candidates:
        reasons = "; ".join(f"{c.name}: {c.why}" for c in report.candidates)
        if not any(c.max_rel_error is not None for c in report.candidates):
            raise EngineUnavailableError(f"engine={engine!r} cannot run this model: {reasons}")
        raise VerificationError(
            f"engine={engine!r} gives no result within the tolerance: {reasons}",
            VerifyReport([], limit, 0.0),
        )

    say("timing the candidates side by side")
    original = Candidate("original", "float32", max_rel_error=0.0, max_abs_error=0.0, ok=True)
    timed: dict[str, nn.Module] = dict(candidates)
    if engine == "auto" or measure:
        timed["original/float32"] = model
        report.candidates.append(original)
    chosen_name = next(iter(candidates), "original/float32")
    if len(timed) > 1:
        latencies = _time_side_by_side(timed, inputs, TIMING_BUDGET_S)
        for c in report.candidates:
            c.latency_ms = latencies.get(c.name, c.latency_ms)
        pool = latencies if engine == "auto" else {k: v for k, v in latencies.items()
                                                   if k in candidates}  # fmt: skip
        chosen_name = min(pool, key=pool.__getitem__)
        if measure:
            report.latency_before_ms = latencies.get("original/float32")
            report.latency_after_ms = latencies[chosen_name]
    chosen_engine, _, chosen_precision = chosen_name.partition("/")
    report.engine, report.precision = chosen_engine, chosen_precision
    result = model if chosen_name == "original/float32" else candidates[chosen_name]
    if chosen_name == "original/float32":
        report.notes.append(
            "no candidate was faster than the original model on the example: it is returned"
        )
    else:
        chosen_checks = verified[chosen_name]
        report.verify = chosen_checks[0]
        report.verify_other = chosen_checks[1] if len(chosen_checks) > 1 else None
    if not cap.dynamic_batch:
        report.notes.append("the model fixes its batch size: other shapes run the original model")
    report.prepare_s = time.perf_counter() - start
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result, report


def _build(
    candidate: Candidate,
    builders: dict[str, Callable[[str], nn.Module]],
    attempts: list[tuple[str, str]],
    say: Progress,
) -> nn.Module | None:
    """Build one candidate, or say in ``candidate.why`` why it cannot be."""
    name, precision = candidate.engine, candidate.precision
    why = _available(name)
    if why is None and precision not in _precisions(name):
        why = f"{precision} is not native to {name} on this CPU"
    if why is None and name not in builders:
        failed = attempts[-1][1] if attempts else "it failed"
        why = f"needs a torch.export capture ({failed})"
    if why is not None:
        candidate.why = why
        return None
    say(f"building {candidate.name}")
    start = time.perf_counter()
    try:
        return builders[name](precision)
    except Exception as exc:  # an engine that cannot take this model: say why
        candidate.why = one_line(exc)
        return None
    finally:
        candidate.build_s = time.perf_counter() - start


def _traced_inputs(cap: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    example = cap.program.example_inputs
    return tuple(example[0]) if example is not None else inputs


def _flat_spec(cap: Any, inputs: tuple[torch.Tensor, ...], model: nn.Module) -> dict[str, Any]:
    """``FlatModule``'s arguments for an engine over ``cap.program``."""
    program = cap.program
    flat = [t for t in inputs]
    return {
        "in_spec": program.call_spec.in_spec,
        "out_spec": program.call_spec.out_spec,
        "input_dtypes": [t.dtype for t in flat],
        "fixed_shapes": None if cap.dynamic_batch else [tuple(t.shape) for t in flat],
        "fallback": None if cap.dynamic_batch else copy.deepcopy(model),
    }


def _module_engine(fused: nn.Module, precision: str) -> nn.Module:
    """The torch engine without an export capture: the module-level fused model."""
    if precision != "float32":
        raise ValueError("bfloat16 needs a torch.export capture")
    return to_channels_last(fused).eval()
