"""Capture a user's model as an ATen graph with ``torch.export``.

``capture`` tries, in order:

1. ``torch.export.export`` (non-strict) with the batch dimension of every input
   (and the dimensions asked for with ``dynamic``) dynamic, traced at batch 2 or
   more, with size-oblivious reasoning (``backed_size_oblivious``: a size-1 batch
   stays in the proven range unless the model's code tests it, which becomes a
   guard), else without it;
2. the same at the example's own shapes, where export keeps dynamic only what it
   can (``Dim.AUTO``), when the first route failed or did not prove the example's
   shapes (a model that branches on a batch of 1, one that fixes its batch size);

then functionalised (``run_decompositions({})``: in-place ops and views become
values, nothing is decomposed). The shapes the program serves are its
``CallSpec``: a call outside them runs the original model. Each route that fails
leaves a one-line reason in ``Capture.attempts``; when both fail, ``optimize``
falls back to the module-level transforms (``torch.fx``, then the eager model).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.export import Dim, ExportedProgram

from onebyone.deploy.signature import CallSpec

__all__ = ["ROUTES", "Capture", "capture", "describe", "one_line"]

ROUTES = ("torch.export (dynamic batch)", "torch.export (the example's shapes)")
"""The capture routes, in the order ``capture`` tries them."""


@dataclass
class Capture:
    """How a model was captured.

    Attributes:
        how: ``"torch.export"`` (the first route), ``"torch.export (the example's
            shapes)"``, or, set by ``optimize`` when both failed, ``"torch.fx"`` or
            ``"eager"``.
        program: the functional exported program (``None`` when export failed).
        spec: the calls the program serves (``None`` when export failed).
        attempts: ``(route, why it failed)`` for each earlier route.
    """

    how: str
    program: ExportedProgram | None = None
    spec: CallSpec | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dynamic_batch(self) -> bool:
        """Whether the program serves more than one batch size (no program: the
        module-level fallback, which serves any)."""
        return self.spec is None or self.spec.dynamic_batch


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 240 characters)."""
    text = str(error).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:240]


def _doubled(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The inputs with their batch dimension at least 2 (rows repeated)."""
    out = []
    for t in inputs:
        if t.dim() >= 1 and t.shape[0] == 1:
            t = torch.cat([t, t])
        out.append(t)
    return tuple(out)


def _export(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    dims: Sequence[Sequence[int]],
    hint: Any,
    oblivious: bool,
) -> ExportedProgram:
    shapes = tuple({i: hint for i in d} or None for d in dims)
    patch = fx_config.patch(backed_size_oblivious=oblivious)  # type: ignore[attr-defined]
    with warnings.catch_warnings(), patch:
        warnings.simplefilter("ignore")
        program = torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False)
        return program.run_decompositions({})


def capture(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    dynamic: Sequence[Sequence[int]] | None = None,
) -> Capture:
    """Capture ``model`` on ``inputs`` by the first route that proves them (see the
    module doc).

    Args:
        model: the model, in eval mode (give it a copy: export runs its forward).
        inputs: the example's positional tensors.
        dynamic: for each input, the dimensions besides the batch to keep dynamic.
    """
    extra = list(dynamic) if dynamic is not None else [() for _ in inputs]
    dims = [sorted({0, *d}) if t.dim() >= 1 else [] for t, d in zip(inputs, extra, strict=True)]
    attempts: list[tuple[str, str]] = []
    routes = (
        (ROUTES[0], _doubled(inputs), ((Dim.DYNAMIC, True), (Dim.AUTO, False))),
        (ROUTES[1], inputs, ((Dim.AUTO, False),)),
    )
    for route, traced, exports in routes:
        program, why = None, ""
        for hint, oblivious in exports:
            try:
                program = _export(model, traced, dims, hint, oblivious)
                break
            except Exception as exc:  # export raises many kinds; each is a reason to go on
                why = one_line(exc)
        if program is None:
            attempts.append((route, why))
            continue
        spec = CallSpec.of(program, model, len(inputs))
        why_not = spec.why_not(inputs)
        if why_not is None:
            how = "torch.export" if route == ROUTES[0] else route
            return Capture(how, program=program, spec=spec, attempts=attempts)
        attempts.append((route, f"the example's shapes are not proven: {why_not}"))
    return Capture("module", attempts=attempts)


def describe(value: Any) -> str:
    """Shapes of a (nested) input for messages: ``(1, 3, 224, 224)``."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return ", ".join(describe(v) for v in value)
    return type(value).__name__
