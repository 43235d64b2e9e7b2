"""``verify``: run two models on the same input and prove their outputs agree.

The error of each output is measured two ways: the largest absolute difference
``max |c - r|`` and the same relative to the output's scale,
``max |c - r| / max |r|`` (a norm-wise relative error, which stays meaningful
where single elements of ``r`` are near zero). An output passes when
``max |c - r| <= atol + rtol * max |r|``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "DEFAULT_TOLERANCES",
    "OutputError",
    "VerificationError",
    "VerifyReport",
    "as_inputs",
    "check_transform",
    "default_tolerance",
    "verify",
]

DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.bfloat16: (6e-2, 1e-3),
    torch.float16: (1e-2, 1e-4),
}
"""``dtype -> (rtol, atol)`` used when ``verify`` or ``optimize`` is given none."""


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for computing in ``dtype`` (``float32``'s for other dtypes)."""
    return DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.float32])


class VerificationError(RuntimeError):
    """Raised by ``verify`` when an output differs by more than the tolerance.

    ``report`` holds the measured errors of every output.
    """

    def __init__(self, message: str, report: VerifyReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class OutputError:
    """The measured difference of one output.

    Attributes:
        name: where the output sits in the result (``"output"``, ``"output[1]"``, ...).
        shape: its shape.
        max_abs: ``max |candidate - reference|``.
        max_rel: ``max_abs / max |reference|`` (``inf`` when the reference is all zeros
            and the outputs differ, ``0`` when they are equal).
        allowed: the largest ``max_abs`` the tolerance permits, ``atol + rtol * max |reference|``.
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    allowed: float

    @property
    def ok(self) -> bool:
        """Whether this output is within the tolerance."""
        return self.max_abs <= self.allowed


@dataclass
class VerifyReport:
    """Errors of every output of a candidate model against a reference.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> m = nn.Linear(4, 2).eval()
        >>> obo.verify(m, m, torch.randn(3, 4), rtol=1e-6, atol=0.0).max_abs
        0.0
    """

    outputs: list[OutputError] = field(default_factory=list)
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every output is within the tolerance."""
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        """The largest absolute error over all outputs."""
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        """The largest relative error over all outputs."""
        return max((o.max_rel for o in self.outputs), default=0.0)

    def __str__(self) -> str:
        lines = [f"verify (rtol={self.rtol:g}, atol={self.atol:g}):"]
        for o in self.outputs:
            mark = "ok" if o.ok else "EXCEEDED"
            lines.append(
                f"  {o.name} {tuple(o.shape)}: max abs {o.max_abs:.3g}, max rel "
                f"{o.max_rel:.3g} (allowed abs {o.allowed:.3g}) {mark}"
            )
        return "\n".join(lines)


def as_inputs(example_input: object) -> tuple[torch.Tensor, ...]:
    """Normalise ``example_input`` (a tensor or a tuple/list of tensors) to a tuple."""
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        kinds = (
            [type(t).__name__ for t in items]
            if isinstance(example_input, (tuple, list))
            else type(example_input).__name__
        )
        raise TypeError(
            "Invalid value for argument `example_input`. Expected a torch.Tensor or a "
            f"non-empty tuple of tensors. Received {kinds}."
        )
    return tuple(items)


def run_model(model: nn.Module, inputs: Sequence[torch.Tensor], role: str) -> object:
    """``model(*inputs)`` without autograd, on clones of ``inputs`` (a model that writes
    to its input changes neither the caller's tensors nor the next run); a failure
    becomes a ``ValueError`` naming ``role``."""
    try:
        with torch.inference_mode():
            return model(*(t.clone() for t in inputs))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            "Invalid value for argument `example_input`. Expected an input the "
            f"{role} model accepts. Received tensors of shape {shapes}; the model raised "
            f"{type(exc).__name__}: {first}"
        ) from exc


def flatten_outputs(value: object, name: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in a (nested) tensor / tuple / list / dict output."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):  # by key, so two dicts in other orders compare alike
        for k in sorted(value, key=repr):
            yield from flatten_outputs(value[k], f"{name}[{k!r}]")
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from flatten_outputs(v, f"{name}[{i}]")


def compare(reference: object, candidate: object, *, rtol: float, atol: float) -> VerifyReport:
    """Compare two model results (tensors or nested containers of tensors)."""
    ref = list(flatten_outputs(reference))
    cand = list(flatten_outputs(candidate))
    if [n for n, _ in ref] != [n for n, _ in cand]:
        raise VerificationError(
            f"the candidate's outputs {[n for n, _ in cand]} do not match the reference's "
            f"{[n for n, _ in ref]}",
            VerifyReport([], rtol, atol),
        )
    report = VerifyReport([], rtol, atol)
    for (name, r), (_, c) in zip(ref, cand, strict=True):
        if tuple(r.shape) != tuple(c.shape):
            raise VerificationError(
                f"{name}: the candidate's shape {tuple(c.shape)} differs from the reference's "
                f"{tuple(r.shape)}",
                report,
            )
        if r.dtype != c.dtype:
            raise VerificationError(
                f"{name}: the candidate's dtype {c.dtype} differs from the reference's {r.dtype}",
                report,
            )
        r64 = r.detach().to(device="cpu", dtype=torch.float64)
        c64 = c.detach().to(device="cpu", dtype=torch.float64)
        # equal values (infinities included) and NaN on both sides count as equal;
        # NaN on one side only is an infinite error
        same = (r64 == c64) | (r64.isnan() & c64.isnan())
        diff = torch.where(same, 0.0, (c64 - r64).abs())
        diff = torch.nan_to_num(diff, nan=float("inf"), posinf=float("inf"))
        max_abs = float(diff.max()) if diff.numel() else 0.0
        finite = r64[r64.isfinite()]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        allowed = atol + rtol * scale
        report.outputs.append(OutputError(name, tuple(r.shape), max_abs, max_rel, allowed))
    return report


def verify(
    reference: nn.Module,
    candidate: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> VerifyReport:
    """Run both models on ``example_input`` and check that every output agrees.

    Args:
        reference: the model to trust (e.g. the original).
        candidate: the model to check (e.g. a transformed copy).
        example_input: a tensor or a tuple of tensors passed as positional arguments.
        rtol: tolerance relative to each output's largest magnitude; default from
            ``DEFAULT_TOLERANCES`` for the reference output's dtype (``1e-4`` in float32).
        atol: absolute tolerance; default likewise (``1e-6`` in float32).

    Returns:
        A ``VerifyReport`` with ``max_abs`` and ``max_rel`` per output.

    Raises:
        VerificationError: an output differs by more than ``atol + rtol * max |reference|``,
            or the outputs' structure or shapes differ.
        ValueError: a model rejects ``example_input``.

    Shape:
        Any; outputs may be tensors or nested tuples / lists / dicts of tensors.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        >>> report = obo.verify(model, obo.fold_batchnorm(model), torch.randn(1, 3, 16, 16))
        >>> report.ok
        True
    """
    for arg, m in (("reference", reference), ("candidate", candidate)):
        if not isinstance(m, nn.Module):
            raise TypeError(
                f"Invalid value for argument `{arg}`. Expected a torch.nn.Module. "
                f"Received {arg} of type {type(m).__name__}."
            )
    inputs = as_inputs(example_input)
    ref_out = run_model(reference, inputs, "reference")
    cand_out = run_model(candidate, inputs, "candidate")
    dtype = next((t.dtype for _, t in flatten_outputs(ref_out)), torch.float32)
    d_rtol, d_atol = default_tolerance(dtype)
    rtol = d_rtol if rtol is None else _tolerance("rtol", rtol)
    atol = d_atol if atol is None else _tolerance("atol", atol)
    report = compare(ref_out, cand_out, rtol=rtol, atol=atol)
    check(report)
    return report


def check_transform(
    transform: str, model: nn.Module, result: nn.Module, example_input: object
) -> VerifyReport:
    """``verify(model, result, example_input)`` before a transform returns ``result``.

    Raises:
        VerificationError: ``result`` computes something else on ``example_input``: the
            transform refuses rather than return it.
    """
    try:
        return verify(model, result, as_inputs(example_input))
    except VerificationError as exc:
        raise VerificationError(
            f"{transform} refused: its result differs from the model on example_input "
            f"({exc}); nothing was returned and the model is unchanged",
            exc.report,
        ) from exc


def check(report: VerifyReport) -> None:
    """Raise ``VerificationError`` when ``report`` has an output beyond its tolerance."""
    bad = [o for o in report.outputs if not o.ok]
    if bad:
        o = bad[0]
        raise VerificationError(
            f"{o.name} differs by up to {o.max_abs:.3g} (relative {o.max_rel:.3g}), more than "
            f"the allowed {o.allowed:.3g} (rtol={report.rtol:g}, atol={report.atol:g})",
            report,
        )


def _tolerance(argument: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a non-negative number. "
            f"Received {argument}={value!r}."
        )
    if not value >= 0:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected a non-negative number. "
            f"Received {argument}={value!r}."
        )
    return float(value)
