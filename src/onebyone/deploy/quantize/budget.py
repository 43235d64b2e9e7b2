"""The accuracy budget of a lossy candidate, measured on held-out data.

A lossy result is judged on the data the model is for, not by a tolerance on its
logits (as NNCF's ``quantize_with_accuracy_control`` does with ``max_drop``):

- without labels, the metric is top-1 agreement with the float32 original (the
  original agrees with itself: its metric is 1);
- with labels, it is accuracy, of both the original and the candidate.

``max_drop`` is the largest allowed drop of that metric from the original's
(absolute, a fraction in ``[0, 1]``; default ``0.01``: one point). Beside it every
output's relative error is reported (``max |c - r| / max |r|`` over all batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from onebyone import _checks
from onebyone.deploy.quantize.data import Batch
from onebyone.transforms.verify import flatten_outputs, run_model

__all__ = ["DEFAULT_MAX_DROP", "AccuracyReport", "accuracy_report", "check_max_drop", "measure"]

DEFAULT_MAX_DROP = 0.01
"""One point of top-1 agreement (or of accuracy, with labels)."""


def check_max_drop(max_drop: object) -> float:
    """``max_drop`` as a float in ``[0, 1]``; ``None`` gives ``DEFAULT_MAX_DROP``.

    Raises:
        TypeError: not a number.
        ValueError: outside ``[0, 1]`` (or NaN).
    """
    if max_drop is None:
        return DEFAULT_MAX_DROP
    expected = "a fraction in [0, 1] (0.01: one point of top-1 agreement or accuracy)"
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
        raise _checks.invalid("max_drop", expected, max_drop, kind=TypeError)
    if not 0.0 <= float(max_drop) <= 1.0:  # NaN fails both comparisons
        raise _checks.invalid("max_drop", expected, max_drop)
    return float(max_drop)


@dataclass
class AccuracyReport:
    """A candidate against the float32 original on held-out data.

    Attributes:
        rows: rows compared.
        max_drop: the budget the candidate was held to.
        top1_agreement: share of rows whose arg-max equals the original's (``None``
            when the first output is not a classifier's ``(N, classes)``).
        accuracy_reference, accuracy_candidate: accuracy with labels (``None`` without).
        rel_errors: per output name, ``max |c - r| / max |r|`` over all rows.
    """

    rows: int
    max_drop: float
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    rel_errors: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """``"accuracy"`` with labels, else ``"top-1 agreement"``."""
        return "accuracy" if self.accuracy_reference is not None else "top-1 agreement"

    @property
    def drop(self) -> float | None:
        """How far the metric fell from the original's (``None`` without a classifier)."""
        if self.accuracy_reference is not None and self.accuracy_candidate is not None:
            return self.accuracy_reference - self.accuracy_candidate
        if self.top1_agreement is not None:
            return 1.0 - self.top1_agreement
        return None

    @property
    def within_budget(self) -> bool:
        """Whether the drop is at most ``max_drop`` and every error is finite."""
        drop = self.drop
        finite = all(math.isfinite(e) for e in self.rel_errors.values())
        return drop is not None and finite and drop <= self.max_drop + 1e-12

    @property
    def max_rel_error(self) -> float:
        """The largest relative error over the outputs."""
        return max(self.rel_errors.values(), default=0.0)

    def __str__(self) -> str:
        parts = [f"{self.rows} held-out rows"]
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.4f}")
        if self.accuracy_reference is not None and self.accuracy_candidate is not None:
            parts.append(
                f"accuracy {self.accuracy_candidate:.4f} (float32 {self.accuracy_reference:.4f})"
            )
        parts.append(f"max relative error {self.max_rel_error:.3g}")
        verdict = "within" if self.within_budget else "beyond"
        drop = self.drop
        parts.append(
            f"{self.metric} drop {drop:.4f} {verdict} max_drop {self.max_drop:g}"
            if drop is not None
            else "no classifier output: the budget cannot be checked"
        )
        return ", ".join(parts)


def accuracy_report(
    references: Sequence[object],
    candidates: Sequence[object],
    labels: Sequence[torch.Tensor | None] | None = None,
    *,
    max_drop: float | None = None,
) -> AccuracyReport:
    """Compare a candidate's outputs with the float32 original's, batch by batch.

    Args:
        references: the original's output (a tensor or nested tuple/list/dict of
            tensors) for each batch.
        candidates: the candidate's output for the same batches.
        labels: the class labels ``(N,)`` of each batch, or ``None``.
        max_drop: the budget (see ``check_max_drop``).

    Raises:
        ValueError: different numbers of batches, or outputs of other names or shapes.

    Shape:
        The first output ``(N, classes)`` gives top-1 agreement and accuracy.

    Example:
        >>> import torch
        >>> ref = [torch.tensor([[2.0, 1.0], [0.0, 1.0]])]
        >>> cand = [torch.tensor([[1.9, 1.0], [1.0, 0.5]])]
        >>> r = accuracy_report(ref, cand, [torch.tensor([0, 1])], max_drop=0.5)
        >>> r.top1_agreement, r.accuracy_reference, r.accuracy_candidate, r.within_budget
        (0.5, 1.0, 0.5, True)
    """
    budget = check_max_drop(max_drop)
    if len(references) != len(candidates) or (
        labels is not None and len(labels) != len(references)
    ):
        raise ValueError(
            "Invalid value for argument `candidates`. Expected one output per reference "
            f"batch ({len(references)}). Received {len(candidates)} outputs and "
            f"{'no' if labels is None else len(labels)} label batches."
        )
    worst: dict[str, tuple[float, float]] = {}  # name -> (max |c - r|, max |r|)
    rows = agree = ref_right = cand_right = 0
    classifier = True
    labelled = labels is not None and all(y is not None for y in labels)
    for i, (reference, candidate) in enumerate(zip(references, candidates, strict=True)):
        ref = list(flatten_outputs(reference))
        cand = list(flatten_outputs(candidate))
        if [(n, tuple(t.shape)) for n, t in ref] != [(n, tuple(t.shape)) for n, t in cand]:
            raise ValueError(
                "Invalid value for argument `candidates`. Expected outputs with the "
                f"original's names and shapes {[(n, tuple(t.shape)) for n, t in ref]}. "
                f"Received {[(n, tuple(t.shape)) for n, t in cand]} for batch {i}."
            )
        for (name, r), (_, c) in zip(ref, cand, strict=True):
            r64, c64 = r.detach().double(), c.detach().double()
            diff = float((c64 - r64).abs().max()) if r.numel() else 0.0
            scale = float(r64.abs().max()) if r.numel() else 0.0
            old = worst.get(name, (0.0, 0.0))
            worst[name] = (math.inf if math.isnan(diff) else max(old[0], diff), max(old[1], scale))
        first_ref, first_cand = ref[0][1], cand[0][1]
        if first_ref.dim() != 2 or first_ref.shape[1] < 2:
            classifier = False
            continue
        ref_top, cand_top = first_ref.argmax(1), first_cand.argmax(1)
        rows += first_ref.shape[0]
        agree += int((ref_top == cand_top).sum())
        y = labels[i] if labelled and labels is not None else None
        if y is not None:
            ref_right += int((ref_top == y).sum())
            cand_right += int((cand_top == y).sum())
    report = AccuracyReport(rows=rows, max_drop=budget)
    report.rel_errors = {n: d / s if s > 0 else (0.0 if d == 0 else math.inf)
                         for n, (d, s) in worst.items()}  # fmt: skip
    if classifier and rows:
        report.top1_agreement = agree / rows
        if labelled:
            report.accuracy_reference = ref_right / rows
            report.accuracy_candidate = cand_right / rows
    return report


def measure(
    candidate: nn.Module,
    held_out: Sequence[Batch],
    references: Sequence[object],
    *,
    max_drop: float | None = None,
) -> AccuracyReport:
    """Run ``candidate`` on the held-out batches and compare with the original's outputs.

    Raises:
        ValueError: no held-out batches (nothing to measure on), or the candidate rejects
            a batch.
    """
    if not held_out:
        raise ValueError(
            "Invalid value for argument `data`. Expected at least two batches (the first "
            "calibrate, the others check the accuracy). Received too few to hold any out."
        )
    outputs = [run_model(candidate, b.inputs, "quantised") for b in held_out]
    labels = [b.labels for b in held_out]
    has_labels = all(y is not None for y in labels)
    return accuracy_report(references, outputs, labels if has_labels else None,
                           max_drop=max_drop)  # fmt: skip
