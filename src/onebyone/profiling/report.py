"""The report of one profiled pass: ``Layer`` rows, ``Profile`` totals, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from onebyone import _checks
from onebyone.cost import CONVENTION, Cost
from onebyone.profiling.counters import CATEGORIES
from onebyone.profiling.peak import MachinePeak, describe_peak

__all__ = ["BOUNDS", "CSV_COLUMNS", "Layer", "Profile"]

BOUNDS: tuple[str, ...] = ("compute", "memory")


@dataclass(frozen=True)
class Layer:
    """One executed call: where it ran, what it is, what it costs.

    Args:
        name: path of the innermost module running it (``""``: the model's own ``forward``).
        type: that module's class name.
        op: the call (``"conv2d"``, ``"conv1x1"``, ``"linear"``, ``"batch_norm"``, ``"add_"``...).
        category: one of ``onebyone.profiling.CATEGORIES``.
        input_shape: the first input's shape.
        output_shape: the output's shape.
        cost: its ``Cost`` (``params``: the model parameters this call read).
        parameters: the names of those parameters, read directly or through
            calls that only move data (views, indexing, ``expand``, ``cat``...).
        time_s: roofline-predicted time, seconds (``None`` without a peak).
        bound: ``"compute"`` or ``"memory"`` (``None`` without a peak).
    """

    name: str
    type: str
    op: str
    category: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    cost: Cost
    parameters: tuple[str, ...]
    time_s: float | None
    bound: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "op": self.op,
            "category": self.category,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "cost": self.cost.to_dict(),
            "parameters": list(self.parameters),
            "time_s": self.time_s,
            "bound": self.bound,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layer:
        return cls(
            name=data["name"],
            type=data["type"],
            op=data["op"],
            category=_checks.choice("category", data["category"], CATEGORIES),
            input_shape=tuple(data["input_shape"]),
            output_shape=tuple(data["output_shape"]),
            cost=Cost.from_dict(data["cost"]),
            parameters=tuple(data["parameters"]),
            time_s=None if data["time_s"] is None else float(data["time_s"]),
            bound=None if data["bound"] is None else _checks.choice("bound", data["bound"], BOUNDS),
        )


CSV_COLUMNS: tuple[str, ...] = (
    "name", "type", "op", "category", "input_shape", "output_shape", "params", "macs",
    "flops", "bias_adds", "other_ops", "bytes_read", "bytes_written", "arithmetic_intensity",
    "time_s", "bound",
)  # fmt: skip


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


@dataclass(frozen=True)
class Profile:
    """The cost of every layer one forward pass ran, with totals and a roofline.

    Counts follow ``CONVENTION`` (``Profile.convention``): MAC = one
    multiply-accumulate; FLOPs = 2 x MACs; bias adds and other elementwise
    ops apart; params count weights, biases and norm affine terms, not
    running statistics (torchvision convention).

    Args:
        model: the model's class name.
        inputs: the shapes of the example inputs.
        dtype: the floating dtype it ran in.
        peak: the ``MachinePeak`` behind ``Layer.time_s``; ``None`` when there
            was none (no times predicted; ``peak_note`` says how to get them).
        layers: one ``Layer`` per counted call, in execution order.
        parameter_sizes: every model parameter, by name, with its element count.
        parameters_read: the parameters the pass read at all, counted call or
            not (``cls_token`` through ``expand`` and ``cat``, a bias table
            through indexing), in the order first read.
        uncounted: calls seen that do arithmetic this profile does not count
            (name -> number of calls); empty when every call was counted.

    Example:
        >>> import torch, onebyone as obo
        >>> model = torch.nn.Sequential(obo.nn.Conv1x1(64, 32), torch.nn.ReLU())
        >>> p = obo.profile(model, (1, 64, 28, 28), peak=obo.MachinePeak(400.0, 20.0))
        >>> [(l.name, l.category, l.cost.macs) for l in p.layers]
        [('0', 'pointwise', 1605632), ('1', 'elementwise', 0)]
        >>> p.total.params, p.by_category()["pointwise"].flops
        (2080, 3211264)
    """

    model: str
    inputs: tuple[tuple[int, ...], ...]
    dtype: str
    peak: MachinePeak | None
    layers: tuple[Layer, ...]
    parameter_sizes: dict[str, int] = field(default_factory=dict)
    parameters_read: tuple[str, ...] = ()
    uncounted: dict[str, int] = field(default_factory=dict)

    convention = CONVENTION
    repr_layers = 10
    """How many layers (those with the most MACs) ``repr`` lists."""

    def __repr__(self) -> str:
        """A short table: the layers with the most MACs, then the totals (the fields stay
        available as attributes; ``to_csv`` lists every layer).

        Example:
            >>> import torch, onebyone as obo
            >>> p = obo.profile(obo.nn.Conv1x1(64, 32), (1, 64, 28, 28), peak=None)
            >>> print(repr(p).splitlines()[0])
            Profile of Conv1x1: input 1x64x28x28, float32, 1 counted layer
        """
        inputs = ", ".join(_shape_text(s) for s in self.inputs)
        count = len(self.layers)
        lines = [f"Profile of {self.model}: input {inputs}, {self.dtype}, "
                 f"{count} counted layer{'' if count == 1 else 's'}"]  # fmt: skip
        ranked = sorted(range(count), key=lambda i: (-self.layers[i].cost.macs, i))
        shown = sorted(ranked[: self.repr_layers])
        header = ("#", "layer", "op", "category", "output", "params", "MACs")
        rows = [header] + [
            (str(i), self.layers[i].name or f"({self.layers[i].type})", self.layers[i].op,
             self.layers[i].category, _shape_text(self.layers[i].output_shape),
             f"{self.layers[i].cost.params:,}", f"{self.layers[i].cost.macs:,}")
            for i in shown
        ]  # fmt: skip
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        left = {1, 2, 3}
        for row in rows:
            cells = [
                cell.ljust(w) if c in left else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        if count > len(shown):
            lines.append(f"({count - len(shown)} more layers; the {len(shown)} with the most "
                         "MACs shown, in execution order)")  # fmt: skip
        t = self.total
        lines.append(f"total: params {t.params:,}, MACs {t.macs:,}, FLOPs {t.flops:,}, "
                     f"bytes {t.bytes_moved:,}")  # fmt: skip
        if self.time_s is not None:
            lines.append(f"predicted time: {self.time_s * 1e3:.3f} ms ({self.peak_note})")
        return "\n".join(lines)

    __str__ = __repr__

    def _read(self) -> set[str]:
        return {*self.parameters_read, *(name for l in self.layers for name in l.parameters)}

    def _combine(self, layers: Iterable[Layer], used: set[str] | None = None) -> Cost:
        layers = list(layers)
        total = sum((layer.cost for layer in layers), Cost())
        if used is None:
            used = {name for layer in layers for name in layer.parameters}
        return replace(total, params=sum(self.parameter_sizes[name] for name in used))

    @property
    def total(self) -> Cost:
        """Sum over the layers; ``params``: every parameter the pass read, each once.

        A parameter read only by calls that move data (``cls_token`` through
        ``expand`` and ``cat`` into the output) is in ``total.params`` though
        in no layer's.
        """
        return self._combine(self.layers, self._read())

    def by_category(self) -> dict[str, Cost]:
        """The total of each category in ``CATEGORIES`` (every key present)."""
        return {c: self._combine(l for l in self.layers if l.category == c) for c in CATEGORIES}

    @property
    def unused_params(self) -> dict[str, int]:
        """Parameters the pass never read (modules that did not run), by name; not in ``total``."""
        used = self._read()
        return {n: size for n, size in self.parameter_sizes.items() if n not in used}

    @property
    def time_s(self) -> float | None:
        """Roofline-predicted time of the pass: the layers' times added (``None``: no peak)."""
        times = [layer.time_s for layer in self.layers]
        if self.peak is None or None in times:
            return None
        return sum(t for t in times if t is not None)

    @property
    def peak_note(self) -> str:
        """One line: the peak behind the times and where it came from, or how to get one."""
        return describe_peak(self.peak)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready, with the convention and the derived totals."""
        return {
            "convention": CONVENTION,
            "model": self.model,
            "inputs": [list(s) for s in self.inputs],
            "dtype": self.dtype,
            "peak": None if self.peak is None else self.peak.to_dict(),
            "total": self.total.to_dict(),
            "time_s": self.time_s,
            "by_category": {c: cost.to_dict() for c, cost in self.by_category().items()},
            "unused_params": self.unused_params,
            "parameters_read": list(self.parameters_read),
            "uncounted": dict(self.uncounted),
            "parameter_sizes": dict(self.parameter_sizes),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """``to_dict()`` as JSON text; ``Profile.from_json`` reads it back."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of ``to_dict`` (derived totals are recomputed, not read)."""
        return cls(
            model=data["model"],
            inputs=tuple(tuple(s) for s in data["inputs"]),
            dtype=data["dtype"],
            peak=None if data["peak"] is None else MachinePeak.from_dict(data["peak"]),
            layers=tuple(Layer.from_dict(layer) for layer in data["layers"]),
            parameter_sizes=dict(data["parameter_sizes"]),
            parameters_read=tuple(data["parameters_read"]),
            uncounted=dict(data["uncounted"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Profile:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))

    def to_csv(self) -> str:
        """One row per layer, columns ``CSV_COLUMNS``; shapes written as ``1x64x56x56``.

        ``time_s`` and ``bound`` are empty when the profile has no peak.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for layer in self.layers:
            c = layer.cost
            writer.writerow([
                layer.name, layer.type, layer.op, layer.category,
                _shape_text(layer.input_shape), _shape_text(layer.output_shape),
                c.params, c.macs, c.flops, c.bias_adds, c.other_ops, c.bytes_read,
                c.bytes_written, repr(c.arithmetic_intensity),
                "" if layer.time_s is None else repr(layer.time_s), layer.bound or "",
            ])  # fmt: skip
        return buffer.getvalue()
