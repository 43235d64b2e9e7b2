"""Capture a user's model as an ATen graph with ``torch.export``.

``capture`` tries, in order:

1. ``torch.export.export`` (non-strict) with the batch dimension of every input
   dynamic, traced at batch 2 or more (``Dim.AUTO`` specialises a batch of 1),
   then functionalised (``run_decompositions({})``: in-place ops and views become
   values, and nothing is decomposed);
2. the same with static shapes, when the model fixes its batch size (then the
   result accepts the example's batch only, and says why).

Each route that fails leaves a one-line reason in ``Capture.attempts``; when both
fail, ``optimize`` falls back to the module-level transforms (``torch.fx``, then
the eager model).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx.experimental.symbolic_shapes import is_concrete_int

__all__ = ["Capture", "capture", "describe", "one_line"]


@dataclass
class Capture:
    """How a model was captured.

    Attributes:
        how: ``"torch.export"`` (dynamic batch), ``"torch.export (static shapes)"``,
            or, set by ``optimize`` when both failed, ``"torch.fx"`` or ``"eager"``.
        program: the functional exported program (``None`` when export failed).
        attempts: ``(route, why it failed)`` for each earlier route.
        dynamic_batch: whether the captured graph accepts any batch size.
        seconds: time spent capturing.
    """

    how: str
    program: ExportedProgram | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)
    dynamic_batch: bool = False
    seconds: float = 0.0


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


def _batch_is_dynamic(program: ExportedProgram) -> bool:
    specs = program.graph_signature.input_specs
    names = {s.arg.name for s in specs if s.kind.name == "USER_INPUT" and hasattr(s.arg, "name")}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 1 and is_concrete_int(val.shape[0]):
                return False  # a constant size, even when held as a SymInt
    return True


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: bool) -> ExportedProgram:
    shapes = tuple({0: Dim.AUTO} if t.dim() >= 1 else None for t in inputs) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False)
        return program.run_decompositions({})


def capture(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Capture:
    """Capture ``model`` on ``inputs`` by the first route that works (see the module doc).

    Args:
        model: the model, in eval mode; it is not modified.
        inputs: the example's positional tensors.
    """
    start = time.perf_counter()
    attempts: list[tuple[str, str]] = []
    traced = _doubled(inputs)
    try:
        program = _export(model, traced, dynamic=True)
        if _batch_is_dynamic(program):
            return Capture("torch.export", program=program, attempts=attempts,
                           dynamic_batch=True, seconds=time.perf_counter() - start)  # fmt: skip
        attempts.append(("torch.export (dynamic batch)", "the model fixes its batch size"))
    except Exception as exc:  # export raises many kinds; each is a reason to try the next
        attempts.append(("torch.export (dynamic batch)", one_line(exc)))
    try:
        program = _export(model, tuple(inputs), dynamic=False)
        return Capture("torch.export (static shapes)", program=program, attempts=attempts,
                       seconds=time.perf_counter() - start)  # fmt: skip
    except Exception as exc:
        attempts.append(("torch.export (static shapes)", one_line(exc)))
    return Capture("module", attempts=attempts, dynamic_batch=True,
                   seconds=time.perf_counter() - start)  # fmt: skip


def describe(value: Any) -> str:
    """Shapes of a (nested) input for messages: ``(1, 3, 224, 224)``."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return ", ".join(describe(v) for v in value)
    return type(value).__name__
