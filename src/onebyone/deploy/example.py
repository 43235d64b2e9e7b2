"""``Example``: the inputs ``optimize`` works on, checked and cloned once, and the
inputs and reference outputs every candidate is verified on.

The checks are: the example itself; another batch size (one more row); for each
dimension asked to be dynamic (``dynamic=``), the example at another size of it.
A check only proves something when the model's output depends on its input: two
different inputs whose outputs agree within the tolerance cannot tell a right
result from a wrong one (a random-weight network whose activations vanish, an
output far below its bias). ``Example.exercise`` tests that, and where the
example fails it, draws better-conditioned inputs (scaled up, uniform in
``[0, 1]``) and checks on the first that works; when none does, the example is
marked as proving nothing and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from onebyone import _checks
from onebyone.deploy.capture import describe, one_line
from onebyone.deploy.signature import dim_name
from onebyone.transforms.verify import as_inputs, compare, flatten_outputs, run_model

__all__ = ["Check", "Example", "output_scale"]

Run = Callable[[tuple[torch.Tensor, ...]], object]


@dataclass
class Check:
    """One verification input and the original model's outputs on it."""

    label: str
    inputs: tuple[torch.Tensor, ...]
    reference: object
    labels: torch.Tensor | None = None
    """Class labels of a ``data`` batch, when the data gives them."""

    @property
    def is_data(self) -> bool:
        """Whether this check is a batch of the user's data."""
        return self.label.startswith("data")


@dataclass
class Example:
    """The example input, checked and cloned once, and the checks built from it.

    Attributes:
        inputs: the caller's tensors, cloned (the caller's are never read again).
        dynamic: for each input, the dimensions besides the batch asked to be dynamic.
        checks: every verification input with its reference outputs.
        exercised: whether the checks tell different inputs apart (see the module doc).
        notes: what building the checks found worth reporting.
    """

    inputs: tuple[torch.Tensor, ...]
    dynamic: list[tuple[int, ...]]
    checks: list[Check] = field(default_factory=list)
    exercised: bool = True
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, example_input: object, dynamic: object = None) -> Example:
        """Check and clone ``example_input`` (a tensor or a tuple of tensors); ``dynamic``
        is ``None``, names (``("height", "width")``) for every 4-D input, or one
        sequence of dimension indices or names per input."""
        inputs = as_inputs(example_input)
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
            if t.dim() >= 1 and t.shape[0] == 0:
                raise ValueError(
                    "Invalid value for argument `example_input`. Expected a batch of at least "
                    f"one (dimension 0 of size 1 or more). Received shape {tuple(t.shape)}."
                )
        return cls(tuple(t.detach().clone() for t in inputs), _dynamic_dims(dynamic, inputs))

    # ------------------------------------------------------------------ checks

    def build_checks(self, run: Run, tolerance: float) -> None:
        """The reference outputs on the example, another batch and the dynamic sizes
        (``run`` is the original model), and whether they exercise the model."""
        inputs = self.inputs
        reference = run(inputs)
        if not list(flatten_outputs(reference)):
            raise ValueError(
                "Invalid value for argument `model`. Expected a model that returns tensors "
                "(a tensor, or a tuple, list or dict of them). Received a model returning "
                f"{type(reference).__name__} on {describe(inputs)}."
            )
        if not _exercised(run, inputs, reference, tolerance):
            better = _conditioned(run, inputs, tolerance)
            if better is None:
                self.exercised = False
                self.notes.append(
                    "the checks prove nothing: the model's outputs agree within the tolerance "
                    "on different inputs (vanishing activations?), so no result is verified; "
                    "check it on real data"
                )
            else:
                how, inputs = better
                reference = run(inputs)
                self.notes.append(
                    f"the example does not exercise the model (its outputs agree within the "
                    f"tolerance on different inputs): the checks use {how} inputs instead"
                )
        self.checks = [Check("the example", inputs, reference)]
        other = other_batch(inputs)
        if other is not None:
            try:
                self.checks.append(Check("another batch size", other, run(other)))
            except ValueError as exc:
                self.notes.append(f"the original model rejects batch {describe(other)}: {exc}")
        for index, dim in self.dynamic_dims():
            resized = other_size(inputs, index, dim)
            name = dim_name(inputs[index].dim(), dim)
            try:
                self.checks.append(Check(f"another {name}", resized, run(resized)))
            except ValueError as exc:
                raise ValueError(
                    f"Invalid value for argument `dynamic`. Expected dimensions the model "
                    f"takes at other sizes. Received {name} of input {index}: the model "
                    f"rejects {describe(resized)} ({one_line(exc)})"
                ) from exc

    def add_data(self, data: object, run: Run) -> None:
        """A check per batch of ``data``: an iterable (a ``DataLoader`` works) of inputs
        (a tensor or a tuple of tensors like ``example_input``) or of ``(input, label)``
        pairs, each input shaped like the example except the batch (and the
        ``dynamic`` dimensions)."""
        if isinstance(data, (torch.Tensor, str, bytes)) or not hasattr(data, "__iter__"):
            raise _checks.invalid(
                "data", "an iterable of inputs or of (input, label) pairs", type(data).__name__,
                kind=TypeError,
            )  # fmt: skip
        count = 0
        for index, item in enumerate(data):
            inputs, labels = self._split(item, index)
            try:
                reference = run(inputs)
            except ValueError as exc:
                raise ValueError(
                    f"Invalid value for argument `data`. Expected inputs the model takes. "
                    f"Received batch {index} of {describe(inputs)}: "
                    f"{one_line(exc.__cause__ or exc)}"
                ) from exc
            self.checks.append(Check(f"data batch {index}", inputs, reference, labels))
            count += 1
        if count == 0:
            raise _checks.invalid("data", "at least one batch", "an empty iterable")

    def _split(
        self, item: object, index: int
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """``(inputs, labels)`` of one ``data`` item, checked against the example."""
        labels = None
        n = len(self.inputs)
        if (
            isinstance(item, (tuple, list))
            and len(item) == n + 1
            and all(isinstance(t, torch.Tensor) for t in item)
        ):
            *xs, labels = item
            inputs = tuple(xs)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and n == 1:
            inputs, labels = (item[0],), item[1]
        elif isinstance(item, torch.Tensor):
            inputs = (item,)
        elif isinstance(item, (tuple, list)):
            inputs = tuple(item)
        else:
            raise _checks.invalid("data", "tensors or (input, label) pairs", type(item).__name__,
                                  kind=TypeError)  # fmt: skip
        if len(inputs) != n or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise ValueError(
                f"Invalid value for argument `data`. Expected {n} tensor(s) per batch, like "
                f"example_input. Received batch {index} of {describe(inputs)}."
            )
        for i, (t, e) in enumerate(zip(inputs, self.inputs, strict=True)):
            free = {0, *self.dynamic[i]}
            same = t.dim() == e.dim() and all(
                a == b
                for d, (a, b) in enumerate(zip(t.shape, e.shape, strict=True))
                if d not in free
            )
            if not same or t.dtype != e.dtype or (t.dim() >= 1 and t.shape[0] == 0):
                raise ValueError(
                    "Invalid value for argument `data`. Expected inputs shaped like "
                    f"example_input {describe(self.inputs)} (any batch size, {e.dtype}). "
                    f"Received batch {index}: {describe(inputs)} of {t.dtype}."
                )
        bad_labels = labels is not None and (
            not isinstance(labels, torch.Tensor)
            or labels.is_floating_point()
            or labels.dim() != 1
            or labels.shape[0] != inputs[0].shape[0]
        )
        if bad_labels:
            raise ValueError(
                "Invalid value for argument `data`. Expected integer class labels, one per "
                f"row. Received batch {index}'s labels {describe(labels)}."
            )
        return tuple(t.detach().clone() for t in inputs), labels

    def dynamic_dims(self) -> list[tuple[int, int]]:
        """``(input index, dimension)`` for every dimension asked to be dynamic."""
        return [(i, d) for i, dims in enumerate(self.dynamic) for d in dims]


def output_scale(reference: object) -> float:
    """The largest finite magnitude over all outputs (1.0 when all are zero)."""
    scales = [
        float(t.detach().abs()[t.isfinite()].max())
        for _, t in flatten_outputs(reference)
        if t.is_floating_point() and bool(t.isfinite().any())
    ]
    return max(scales, default=0.0) or 1.0


def _exercised(run: Run, inputs: tuple[torch.Tensor, ...], reference: object,
               tolerance: float) -> bool:  # fmt: skip
    """Whether another draw like ``inputs`` gives outputs beyond ``tolerance`` of
    ``reference`` (integer inputs: assumed)."""
    if not any(t.is_floating_point() for t in inputs):
        return True
    other = _redraw(inputs, seed=2)
    try:
        report = compare(reference, run(other), rtol=tolerance, atol=0.0)
    except (ValueError, RuntimeError):
        return True  # another structure or shape: the output depends on the input
    return not report.ok


def _conditioned(
    run: Run, inputs: tuple[torch.Tensor, ...], tolerance: float
) -> tuple[str, tuple[torch.Tensor, ...]] | None:
    """The first better-conditioned draw that exercises the model, with its name."""
    draws = {
        "10x scaled": lambda t, g: t * 10,
        "1000x scaled": lambda t, g: t * 1000,
        "uniform [0, 1]": lambda t, g: torch.rand(t.shape, generator=g, dtype=t.dtype),
    }
    for how, draw in draws.items():
        g = torch.Generator().manual_seed(3)
        candidate = tuple(draw(t, g) if t.is_floating_point() else t for t in inputs)
        try:
            reference = run(candidate)
        except ValueError:
            continue
        if _exercised(run, candidate, reference, tolerance):
            return how, candidate
    return None


def _redraw(inputs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """New random values with each floating input's shape, mean and spread."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if t.is_floating_point():
            mean = float(t.mean()) if t.numel() else 0.0
            std = float(t.std()) if t.numel() > 1 else 1.0
            noise = torch.randn(t.shape, generator=generator, dtype=t.dtype)
            out.append(noise * (std or 1.0) + mean)
        else:
            out.append(t)
    return tuple(out)


def other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
    """A second input with one more row in the batch dimension, made of the example's own
    rows: each floating row mirrored along its last dimension, then the first row as it
    is (integer inputs repeat the example's rows).

    Rows like the example's keep the check where the model is meant to run. White noise
    with the example's mean and spread is far from a photograph: a random-weight
    EfficientNet calibrated on photos gave outputs 100x larger on it, its own float32
    was 7e-5 off float64 there, and every engine failed the float32 tolerance at 1e-3
    while agreeing to 5e-6 on the example and on real images."""
    first = next((t for t in inputs if t.dim() >= 1), None)
    if first is None:
        return None
    n = first.shape[0]

    def grow(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 1 or t.shape[0] != n:
            return t
        if not t.is_floating_point() or t.dim() < 2:
            return t[torch.arange(n + 1) % n]
        return torch.cat([t.flip(-1), t[:1]])

    return tuple(grow(t) for t in inputs)


def other_size(inputs: tuple[torch.Tensor, ...], index: int, dim: int) -> tuple[torch.Tensor, ...]:
    """The inputs with dimension ``dim`` of input ``index`` half as large again (rounded up to
    a multiple of the largest power of two, at most 32, that divides it), new values."""
    size = inputs[index].shape[dim]
    step = 1
    while step < 32 and size % (step * 2) == 0:
        step *= 2
    new = -(-(size + max(1, size // 2)) // step) * step
    shape = list(inputs[index].shape)
    shape[dim] = new
    resized = list(inputs)
    t = inputs[index]
    resized[index] = (
        torch.zeros(shape, dtype=t.dtype) if t.is_floating_point() else t.new_zeros(shape)
    )
    return _redraw(tuple(resized), seed=4)


def _dynamic_dims(dynamic: object, inputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    expected = (
        "None, dimension names such as ('height', 'width'), or one sequence of dimension "
        "indices or names per input"
    )
    if dynamic is None:
        return [() for _ in inputs]
    if isinstance(dynamic, str) or not isinstance(dynamic, Sequence):
        raise _checks.invalid("dynamic", expected, dynamic, kind=TypeError)
    if all(isinstance(d, str) for d in dynamic):
        per_input: Sequence[object] = [dynamic if t.dim() == 4 else () for t in inputs]
        if not any(t.dim() == 4 for t in inputs):
            raise _checks.invalid("dynamic", expected + " (names need 4-D inputs)", dynamic)
    elif len(dynamic) == len(inputs):
        per_input = dynamic
    else:
        raise _checks.invalid("dynamic", expected, dynamic)
    out = []
    for t, dims in zip(inputs, per_input, strict=True):
        if isinstance(dims, (str, int)) or not isinstance(dims, Sequence):
            raise _checks.invalid("dynamic", expected, dynamic, kind=TypeError)
        names = {dim_name(t.dim(), i): i for i in range(t.dim())}
        chosen = set()
        for d in dims:
            if isinstance(d, str) and d in names:
                chosen.add(names[d])
            elif _checks._is_int(d) and 1 <= int(d) < t.dim():
                chosen.add(int(d))
            else:
                raise _checks.invalid("dynamic", expected, dynamic)
        out.append(tuple(sorted(chosen)))
    return out


def run_reference(model: nn.Module, expected: str) -> Run:
    """``run(inputs)``: ``model``'s outputs, a rejection naming ``example_input`` and
    ``expected``."""

    def run(inputs: tuple[torch.Tensor, ...]) -> object:
        try:
            return run_model(model, inputs, "original")
        except ValueError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise ValueError(
                f"Invalid value for argument `example_input`. Expected {expected}. "
                f"Received {describe(inputs)}; the model raised {one_line(cause)}"
            ) from exc

    return run
