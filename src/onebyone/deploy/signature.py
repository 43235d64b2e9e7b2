"""``CallSpec``: the calls an exported program serves, and how a call reaches it.

``torch.export`` proves its graph for a set of input shapes: every dimension it
kept dynamic lies in a range (``program.range_constraints``), two inputs sharing
a symbol must agree, every other dimension equals the example's, and the
conditions the model's code tested on sizes are kept as guards (a branch on
``x.shape[0] == 1`` becomes ``x.size()[0] != 1``). A ``CallSpec`` holds all of
it, typed, and answers two questions for each call: how the caller's
``(args, kwargs)`` bind to the exported call (the original ``forward``'s
signature, so keywords work as they do on the model), and whether the graph
was proven for these inputs (``why_not``). ``onebyone.deploy.served`` runs the
engine when it was and the original model when it was not.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind
from torch.utils import _pytree as pytree

__all__ = ["CallSpec", "DynamicDim", "dim_name"]


def dim_name(rank: int, index: int) -> str:
    """What a dimension of a ``rank``-D input stands for: ``batch`` (0), ``height`` and
    ``width`` (2, 3 of a 4-D input), ``dim{index}`` otherwise."""
    if index == 0:
        return "batch"
    if rank == 4 and index in (2, 3):
        return "height" if index == 2 else "width"
    return f"dim{index}"


@dataclass(frozen=True)
class DynamicDim:
    """A dimension the graph serves over a range of sizes.

    Attributes:
        name: ``batch``, ``height``, ``width`` or ``dim{i}`` (see ``dim_name``).
        symbol: export's symbol (inputs sharing one must agree).
        low, high: the proven range (``high`` is ``None`` when unbounded).
    """

    name: str
    symbol: str
    low: int
    high: int | None

    def __str__(self) -> str:
        high = "" if self.high is None else str(self.high)
        return f"{self.name} in [{self.low}, {high or '...'}]"


Dim = int | DynamicDim


@dataclass
class CallSpec:
    """The exported call: its structure, dtypes, proven shapes and guards.

    Attributes:
        in_spec, out_spec: the pytree specs of ``(args, kwargs)`` and of the outputs.
        parameters: the names of the original ``forward``'s parameters the exported
            positional inputs were given to (to bind keyword calls).
        signature: the original ``forward``'s signature (``None`` when unknown).
        dtypes: the dtype of each flat input.
        dims: each flat input's dimensions, a fixed size or a ``DynamicDim``.
        guards: export's guard function over the flat inputs (``None``: none).
        constants: the outputs that are constants (``None`` among tensors), by their
            position among the flat outputs: an exported file has no such outputs.
    """

    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    parameters: tuple[str, ...]
    signature: inspect.Signature | None
    dtypes: list[torch.dtype]
    dims: list[tuple[Dim, ...]]
    guards: Callable[..., Any] | None = field(default=None, repr=False)
    constants: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, program: ExportedProgram, model: nn.Module, count: int) -> CallSpec:
        """The spec of ``program``, exported from ``model`` with ``count`` positional
        inputs and no keywords."""
        specs = program.graph_signature.input_specs
        user = {s.arg.name for s in specs if s.kind == InputKind.USER_INPUT}
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        values = [n.meta.get("val") for n in placeholders if n.name in user]
        ranges = {str(k): v for k, v in program.range_constraints.items()}
        dims: list[tuple[Dim, ...]] = []
        for value in values:
            if not isinstance(value, torch.Tensor):
                dims.append(())
                continue
            row: list[Dim] = []
            for i, size in enumerate(value.shape):
                expr = getattr(getattr(size, "node", None), "expr", None)
                if expr is None or getattr(expr, "is_number", False):
                    row.append(int(size))
                    continue
                rng = ranges.get(str(expr))
                low = 0 if rng is None else int(rng.lower)
                high = (
                    None if rng is None or not math.isfinite(float(rng.upper)) else int(rng.upper)
                )
                if i == 0:
                    low = max(low, 1)  # an empty batch is refused, never served
                row.append(DynamicDim(dim_name(value.dim(), i), str(expr), low, high))
            dims.append(tuple(row))
        try:
            signature: inspect.Signature | None = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None
        names: tuple[str, ...] = ()
        if signature is not None:
            positional = [
                p.name
                for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(positional) >= count:
                names = tuple(positional[:count])
        guards = getattr(program.module(), "_guards_fn", None)
        outputs = [
            s for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT
        ]
        constants = {
            i: s.arg.value for i, s in enumerate(outputs) if isinstance(s.arg, ConstantArgument)
        }
        return cls(
            in_spec=program.call_spec.in_spec,
            out_spec=program.call_spec.out_spec,
            parameters=names,
            signature=signature,
            dtypes=[v.dtype for v in values if isinstance(v, torch.Tensor)],
            dims=dims,
            guards=guards,
            constants=constants,
        )

    # ------------------------------------------------------------------ calls

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        """The exported positional inputs for a call ``(args, kwargs)`` of the original
        model, or ``None`` when the call passes something the export did not take."""
        if not kwargs:
            return args
        if self.signature is None or not self.parameters:
            return None
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None
        if set(bound.arguments) - set(self.parameters):
            return None  # another argument than the exported ones: the original serves it
        if any(name not in bound.arguments for name in self.parameters):
            return None
        return tuple(bound.arguments[name] for name in self.parameters)

    def why_not(self, args: tuple[Any, ...]) -> str | None:
        """``None`` when the graph was proven for ``args``, else the reason."""
        flat, spec = pytree.tree_flatten((args, {}))
        if spec != self.in_spec:
            return f"another call structure ({spec.num_leaves} value(s))"
        symbols: dict[str, int] = {}
        for i, (t, dtype, dims) in enumerate(zip(flat, self.dtypes, self.dims, strict=True)):
            if not isinstance(t, torch.Tensor):
                return f"input {i} is a {type(t).__name__}"
            if t.dtype != dtype or t.device.type != "cpu" or t.layout != torch.strided:
                return f"input {i} is {t.dtype} on {t.device} (captured: {dtype} on cpu)"
            if t.dim() != len(dims):
                return f"input {i} has {t.dim()} dimensions (captured: {len(dims)})"
            for size, dim in zip(t.shape, dims, strict=True):
                if isinstance(dim, int):
                    if size != dim:
                        return f"input {i} has shape {tuple(t.shape)} (captured: {self.shape(i)})"
                    continue
                if size < dim.low or (dim.high is not None and size > dim.high):
                    return f"input {i}'s {dim.name} {size} is outside {dim}"
                if symbols.setdefault(dim.symbol, size) != size:
                    return f"input {i}'s {dim.name} {size} differs from another input's"
        if self.guards is not None:
            try:
                self.guards(*flat)
            except Exception as exc:  # export's guards raise AssertionError
                first = str(exc).strip().splitlines()
                return first[0] if first else "a guard of the capture failed"
        return None

    def shape(self, index: int) -> str:
        """Input ``index``'s proven shape: ``(batch, 3, 64, 64)``."""
        return "(" + ", ".join(str(d if isinstance(d, int) else d.name)
                               for d in self.dims[index]) + ")"  # fmt: skip

    @property
    def dynamic_batch(self) -> bool:
        """Whether every input's first dimension is dynamic."""
        return bool(self.dims) and all(bool(d) and isinstance(d[0], DynamicDim) for d in self.dims)

    def dynamic_names(self) -> list[str]:
        """The names of the dynamic dimensions, once each (``["batch", "height"]``)."""
        names: list[str] = []
        for dims in self.dims:
            for d in dims:
                if isinstance(d, DynamicDim) and d.name not in names:
                    names.append(d.name)
        return names

    def describe(self) -> str:
        """``(batch, 3, 64, 64); batch in [1, ...]`` for reports."""
        shapes = ", ".join(self.shape(i) for i in range(len(self.dims)))
        ranges = sorted({str(d) for dims in self.dims for d in dims if isinstance(d, DynamicDim)})
        return shapes + (f"; {', '.join(ranges)}" if ranges else "")
