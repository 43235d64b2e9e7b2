"""What ``optimize`` did and measured: ``OptimizeReport`` and one ``Candidate`` per engine."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from onebyone.deploy.timing import Load, Timing
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import VerifyReport

__all__ = ["Candidate", "OptimizeReport"]


@dataclass
class Candidate:
    """One engine at one precision, as built, verified and timed.

    Attributes:
        engine: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"original"``.
        precision: ``"float32"``, ``"bfloat16"`` or ``"int8"``.
        latency_ms: median latency on the example input (``None`` when not timed).
        latency: the whole timing (median, p10, p90, runs), timed on its own.
        max_rel_error: the largest norm-wise relative error over both checks.
        max_abs_error: the largest absolute error over both checks.
        top1_agreement: for classifier outputs ``(N, classes)``, the share of rows whose
            arg-max equals the original's (both checks together); ``None`` otherwise.
        build_s: seconds spent building this candidate.
        data_max_rel_error, data_top1_agreement, data_accuracy: the same on the user's
            ``data`` only, and the share of rows whose arg-max is the label (when the
            data gives labels); ``None`` without data.
        held_out_top1_agreement, held_out_accuracy: on the held-out part of the data
            (the batches int8 did not calibrate on), for a candidate held to
            ``max_drop``; ``drop``: how far its metric (accuracy with labels, else top-1
            agreement) fell below the original's there.
        calibration_s: seconds its quantiser spent calibrating (int8 only).
        ok: built and within the tolerance on the example and the second input (a
            lossy candidate with a budget: within ``max_drop`` on the held-out data).
        why: why it was not built or not kept (empty when ``ok``).
    """

    engine: str
    precision: str
    latency_ms: float | None = None
    max_rel_error: float | None = None
    max_abs_error: float | None = None
    top1_agreement: float | None = None
    build_s: float = 0.0
    ok: bool = False
    why: str = ""
    data_max_rel_error: float | None = None
    data_top1_agreement: float | None = None
    data_accuracy: float | None = None
    latency: Timing | None = None
    held_out_top1_agreement: float | None = None
    held_out_accuracy: float | None = None
    drop: float | None = None
    calibration_s: float | None = None

    @property
    def name(self) -> str:
        """``engine/precision``, e.g. ``"openvino/bfloat16"``."""
        return f"{self.engine}/{self.precision}"


@dataclass
class OptimizeReport:
    """What ``optimize`` did and measured.

    Attributes:
        engine, precision: the returned model's.
        capture: how the model was captured (``"torch.export"``, ``"torch.export (static
            shapes)"``, ``"torch.fx"``, ``"eager"``).
        capture_attempts: ``(route, why it failed)`` for each earlier capture route.
        dynamic_batch: whether the returned model accepts any batch size.
        passes: one ``PassReport`` per pass.
        candidates: every engine x precision tried, with latency, error and why not.
        verify: the returned model's errors on the example input; ``verify_other`` on
            the second input (another batch size).
        tolerance: the relative error the candidates had to meet.
        latency_before_ms / latency_after_ms: median latency of the original and of the
            returned model on the example input; ``latency_before`` / ``latency_after``
            the whole timings (p10, p90, runs), each model timed on its own after a
            warm-up (``onebyone.deploy.timing``).
        load: the machine before timing: load average, cores and the cores other work
            used while ``optimize`` waited (a busy machine is noted: its timings are not
            reliable).
        throughput: inputs per second of ``"original"`` and ``"optimized"`` by batch
            size (the example's and a larger one where the capture serves it).
        prepare_s: seconds from the call to the chosen model (building and checking).
        peak_rss_mb: the process's peak resident memory at the end, in MB.
        notes: anything else worth knowing.
        program: the transformed exported program (``None`` without ``torch.export``),
            for writing ONNX or OpenVINO files.
        call_spec: the calls ``program`` serves (``onebyone.deploy.signature.CallSpec``).
        exports: what verified candidates built, for writing files without exporting
            again: ``"onnx"`` (the ONNX bytes) and ``"openvino"`` (the converted
            ``openvino.Model``), from their float32 candidates.
        serves: those calls in words (``"(batch, 3, 64, 64); batch in [1, ...]"``); other
            inputs run a frozen copy of the original model.
        exercised: whether the checks could tell different inputs apart; when not, no
            candidate counts as verified (see ``verified``).
        data_batches, data_rows: how much of the user's ``data`` every candidate was
            checked on (0 without data); ``data_accuracy_original``: the original's
            accuracy on it (with labels).
        max_drop: the budget lossy candidates were held to (``None``: none was);
            ``budget_metric``: ``"accuracy"`` or ``"top-1 agreement"``;
            ``calibration_rows`` / ``held_out_rows``: how the data was split;
            ``held_out_accuracy_original``: the original's accuracy on the held-out
            part (with labels).
        int8_modules: the int8 engine modules within the budget, by engine (their
            ``save`` writes the quantised model that was measured: a QDQ ``.onnx``,
            an int8 IR).
    """

    engine: str
    precision: str
    capture: str = ""
    capture_attempts: list[tuple[str, str]] = field(default_factory=list)
    dynamic_batch: bool = False
    passes: list[PassReport] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    verify: VerifyReport | None = None
    verify_other: VerifyReport | None = None
    tolerance: float = 0.0
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    prepare_s: float = 0.0
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    program: Any = field(default=None, repr=False)
    call_spec: Any = field(default=None, repr=False)
    exports: dict[str, Any] = field(default_factory=dict, repr=False)
    serves: str = ""
    exercised: bool = True
    data_batches: int = 0
    data_rows: int = 0
    data_accuracy_original: float | None = None
    latency_before: Timing | None = None
    latency_after: Timing | None = None
    load: Load | None = None
    throughput: dict[str, dict[int, float]] = field(default_factory=dict)
    max_drop: float | None = None
    budget_metric: str = ""
    calibration_rows: int = 0
    held_out_rows: int = 0
    held_out_accuracy_original: float | None = None
    int8_modules: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def verified(self) -> bool:
        """Whether the returned model's outputs were checked on inputs that exercise it."""
        return self.exercised and (self.verify is not None or self.engine == "original")

    @property
    def speedup(self) -> float | None:
        """``latency_before_ms / latency_after_ms`` when both were measured."""
        if self.latency_before_ms is None or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        """The speed-up from the slow to the fast ends of both spreads
        (``before.p10 / after.p90``, ``before.p90 / after.p10``)."""
        before, after = self.latency_before, self.latency_after
        if before is None or after is None or not after.p10_ms or not after.p90_ms:
            return None
        return before.p10_ms / after.p90_ms, before.p90_ms / after.p10_ms

    @property
    def max_rel_error(self) -> float | None:
        """The returned model's largest relative error over both checks."""
        errors = [r.max_rel for r in (self.verify, self.verify_other) if r is not None]
        return max(errors) if errors else None

    def to_dict(self) -> dict[str, Any]:
        """Everything the report holds, as plain JSON-ready values (the program and the
        call spec as text)."""

        def checks(report: VerifyReport | None) -> dict[str, Any] | None:
            if report is None:
                return None
            return {"rtol": report.rtol, "atol": report.atol,
                    "outputs": [_finite(asdict(o)) for o in report.outputs]}  # fmt: skip

        return {
            "engine": self.engine,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "capture": self.capture,
            "capture_attempts": [list(a) for a in self.capture_attempts],
            "dynamic_batch": self.dynamic_batch,
            "serves": self.serves,
            "exercised": self.exercised,
            "verified": self.verified,
            "passes": [
                {
                    "name": p.name,
                    "applied": list(p.applied),
                    "skipped": [list(s) for s in p.skipped],
                }
                for p in self.passes
            ],
            "candidates": [_finite(asdict(c)) | {"name": c.name} for c in self.candidates],
            "verify": checks(self.verify),
            "verify_other": checks(self.verify_other),
            "latency_before_ms": self.latency_before_ms,
            "latency_after_ms": self.latency_after_ms,
            "speedup": self.speedup,
            "speedup_range": None if self.speedup_range is None else list(self.speedup_range),
            "latency_before": None if self.latency_before is None else asdict(self.latency_before),
            "latency_after": None if self.latency_after is None else asdict(self.latency_after),
            "load": None if self.load is None else asdict(self.load) | {"busy": self.load.busy},
            "throughput": {
                k: {str(b): r for b, r in v.items()} for k, v in self.throughput.items()
            },
            "data_batches": self.data_batches,
            "data_rows": self.data_rows,
            "data_accuracy_original": self.data_accuracy_original,
            "max_drop": self.max_drop,
            "budget_metric": self.budget_metric,
            "calibration_rows": self.calibration_rows,
            "held_out_rows": self.held_out_rows,
            "held_out_accuracy_original": self.held_out_accuracy_original,
            "prepare_s": self.prepare_s,
            "peak_rss_mb": self.peak_rss_mb,
            "notes": list(self.notes),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """``to_dict()`` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def pass_counts(self) -> dict[str, int]:
        """``{pass name: number of changes}``."""
        return {p.name: p.count for p in self.passes}

    def __str__(self) -> str:
        lines = [
            f"engine: {self.engine} ({self.precision}), prepared in {self.prepare_s:.2f} s",
            f"capture: {self.capture}"
            + ("" if self.dynamic_batch else " (the batch size is fixed)"),
        ]
        if self.serves:
            lines.append(f"serves: {self.serves} (other inputs run the original model)")
        if not self.exercised:
            lines.append("NOT VERIFIED: the checks cannot tell different inputs apart")
        lines += [f"  {route} failed: {why}" for route, why in self.capture_attempts]
        lines += [f"{p.name}: {p.count} applied, {len(p.skipped)} skipped" for p in self.passes]
        for c in self.candidates:
            if c.ok:
                top1 = "" if c.top1_agreement is None else f", top-1 {c.top1_agreement:.1%}"
                latency = "-" if c.latency_ms is None else f"{c.latency_ms:.2f} ms"
                if c.latency is not None:
                    latency = str(c.latency)
                data = ""
                if c.data_max_rel_error is not None:
                    data = f"; on the data: max rel error {c.data_max_rel_error:.2g}"
                    if c.data_top1_agreement is not None:
                        data += f", top-1 agreement {c.data_top1_agreement:.1%}"
                    if c.data_accuracy is not None:
                        data += f", accuracy {c.data_accuracy:.1%}"
                if c.drop is not None:
                    data += f"; held out: {self.budget_metric} drop {c.drop:.2%}"
                if c.calibration_s is not None:
                    data += f"; calibrated in {c.calibration_s:.1f} s"
                lines.append(
                    f"  {c.name}: {latency}, max rel error {c.max_rel_error:.2g}{top1}{data}"
                )
            else:
                lines.append(f"  {c.name}: not used ({c.why})")
        if self.speedup is not None:
            spread = self.speedup_range
            within = "" if spread is None else f", {spread[0]:.2f}x to {spread[1]:.2f}x"
            lines.append(
                f"latency: {self.latency_before or self.latency_before_ms} -> "
                f"{self.latency_after or self.latency_after_ms} ({self.speedup:.2f}x{within})"
            )
        for name, by_batch in self.throughput.items():
            rates = ", ".join(f"{rate:.1f}/s at batch {b}" for b, rate in sorted(by_batch.items()))
            lines.append(f"throughput ({name}): {rates}")
        if self.load is not None:
            lines.append(f"timed at {self.load}")
        if self.data_batches:
            accuracy = (
                ""
                if self.data_accuracy_original is None
                else f"; the original's accuracy {self.data_accuracy_original:.1%}"
            )
            lines.append(f"data: {self.data_rows} rows in {self.data_batches} batches{accuracy}")
        if self.max_drop is not None:
            lines.append(
                f"budget: max_drop {self.max_drop:g} in {self.budget_metric} on "
                f"{self.held_out_rows} held-out rows ({self.calibration_rows} calibrate)"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity or NaN: such floats become ``None``."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in values.items()}  # fmt: skip
