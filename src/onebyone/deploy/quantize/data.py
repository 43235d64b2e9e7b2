"""The user's data as calibration batches and held-out batches for int8.

Post-training quantisation measures the ranges of the activations on real inputs;
random inputs say nothing about them, so int8 is never built without data.
``split_data`` reads a bounded number of batches from what the user gives (an
iterable of input tensors, of ``(input, label)`` pairs, or a ``DataLoader`` of
either), checks each against the example input, and splits them deterministically:
the first batches calibrate, the rest are held out for the accuracy check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from onebyone import _checks
from onebyone.deploy.capture import describe, one_line
from onebyone.transforms.verify import run_model

__all__ = ["Batch", "SplitData", "calibration_count", "reference_outputs", "split_data"]

CALIBRATION_BATCHES = 8
"""Batches used for calibration, at most (NNCF's and ONNX Runtime's examples use a few
hundred images; 8 batches of a typical loader are that)."""
HELD_OUT_BATCHES = 32
"""Batches kept for the accuracy check, at most."""


@dataclass(frozen=True)
class Batch:
    """One batch: the model's positional inputs, and the class labels when given.

    Shape:
        ``inputs``: the example's shapes with any batch size ``N``; ``labels``: ``(N,)``.
    """

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Rows in the batch (the first dimension of the first input)."""
        first = self.inputs[0]
        return int(first.shape[0]) if first.dim() >= 1 else 1


@dataclass(frozen=True)
class SplitData:
    """The batches read from the user's data: the first calibrate, the rest are held out.

    Attributes:
        calibration: batches the quantiser measures activation ranges on.
        held_out: batches the accuracy check runs on (never seen by calibration).
        labelled: whether every batch came with labels.
    """

    calibration: list[Batch] = field(default_factory=list)
    held_out: list[Batch] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """Whether every batch has labels."""
        batches = self.calibration + self.held_out
        return bool(batches) and all(b.labels is not None for b in batches)


def _as_batch(item: object, index: int) -> Batch:
    """``item`` as a ``Batch``: a tensor, a tuple of one, or ``(input(s), labels)``."""
    if isinstance(item, torch.Tensor):
        return Batch((item,))
    if isinstance(item, (tuple, list)) and len(item) == 1 and isinstance(item[0], torch.Tensor):
        return Batch((item[0],))  # a DataLoader over TensorDataset(x)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        first, labels = item
        inputs = tuple(first) if isinstance(first, (tuple, list)) else (first,)
        if inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
                raise TypeError(
                    "Invalid value for argument `data`. Expected batches that are input "
                    "tensors or (input, labels) pairs with integer class labels. Received "
                    f"batch {index} with labels of type {_kind(labels)}."
                )
            return Batch(inputs, labels)
    raise TypeError(
        "Invalid value for argument `data`. Expected an iterable of input tensors or of "
        "(input, labels) pairs (a torch DataLoader works). Received batch "
        f"{index} of type {_kind(item)}."
    )


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor(dtype={value.dtype}, shape={tuple(value.shape)})"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {[_kind(v) for v in value]}"
    return type(value).__name__


def _check_batch(batch: Batch, example: Sequence[torch.Tensor], index: int) -> None:
    """The batch has the example's inputs, dtypes and shapes except the batch size."""
    if len(batch.inputs) != len(example):
        raise ValueError(
            "Invalid value for argument `data`. Expected batches of "
            f"{len(example)} input tensor(s), like the example. Received batch {index} "
            f"with {len(batch.inputs)}."
        )
    for t, e in zip(batch.inputs, example, strict=True):
        if t.dtype != e.dtype or t.device.type != "cpu":
            raise TypeError(
                "Invalid value for argument `data`. Expected CPU tensors of the example's "
                f"dtype {e.dtype}. Received batch {index} with dtype {t.dtype} on {t.device}."
            )
        if t.dim() != e.dim() or tuple(t.shape[1:]) != tuple(e.shape[1:]) or t.shape[0] < 1:
            expected = ("N", *e.shape[1:]) if e.dim() else ()
            raise ValueError(
                "Invalid value for argument `data`. Expected batches shaped like the example "
                f"({', '.join(str(d) for d in expected)}), any N >= 1. Received batch "
                f"{index} of shape {describe(batch.inputs)}."
            )
    if batch.labels is not None and tuple(batch.labels.shape) != (batch.size,):
        raise ValueError(
            "Invalid value for argument `data`. Expected one label per row, shape "
            f"({batch.size},). Received batch {index} with labels of shape "
            f"{tuple(batch.labels.shape)}."
        )


def split_data(
    data: Iterable[object] | None,
    example_input: Sequence[torch.Tensor],
    *,
    calibration_batches: int = CALIBRATION_BATCHES,
    held_out_batches: int = HELD_OUT_BATCHES,
) -> SplitData:
    """Read at most ``calibration_batches + held_out_batches`` batches of ``data`` and split
    them: the first ``min(calibration_batches, max(1, n // 2))`` of the ``n`` read
    calibrate, the rest are held out (with ``held_out_batches=0``, all of them
    calibrate). Deterministic for data in a fixed order.

    Args:
        data: an iterable of input tensors, of tuples of input tensors, or of
            ``(input(s), labels)`` pairs with integer labels ``(N,)``; a ``DataLoader``
            over either works. ``None`` is refused: int8 needs real data.
        example_input: the model's example inputs; every batch must have their count,
            dtypes and shapes but for the first (batch) dimension.
        calibration_batches: the most batches to calibrate on (>= 1).
        held_out_batches: the most batches to hold out (>= 0).

    Raises:
        ValueError: no data, empty data, a batch shaped unlike the example, labels that
            are not one per row, mixing batches with and without labels.
        TypeError: data that is not an iterable of tensors or pairs.

    Shape:
        Each batch: the example's shapes with any batch size ``N``.

    Example:
        >>> import torch
        >>> batches = [torch.randn(4, 3) for _ in range(5)]
        >>> split = split_data(batches, (torch.randn(2, 3),))
        >>> len(split.calibration), len(split.held_out)
        (2, 3)
    """
    if data is None:
        raise ValueError(
            "Invalid value for argument `data`. Expected real inputs to calibrate int8 on "
            "(random calibration says nothing about the ranges of real activations): an "
            "iterable of input tensors or (input, labels) pairs. Received data=None."
        )
    if isinstance(data, torch.Tensor):
        raise TypeError(
            "Invalid value for argument `data`. Expected an iterable of batches (a list of "
            "tensors, a DataLoader). Received one tensor of shape "
            f"{tuple(data.shape)}; pass list(tensor.split(batch_size)) for its rows."
        )
    if not isinstance(data, Iterable):
        raise _checks.invalid(
            "data", "an iterable of input tensors or (input, labels) pairs", data, kind=TypeError
        )
    calibrate = _checks.positive_int("calibration_batches", calibration_batches)
    if isinstance(held_out_batches, bool) or not isinstance(held_out_batches, int):
        raise _checks.invalid("held_out_batches", "an int >= 0", held_out_batches, kind=TypeError)
    if held_out_batches < 0:
        raise _checks.invalid("held_out_batches", "an int >= 0", held_out_batches)
    limit = calibrate + held_out_batches
    batches: list[Batch] = []
    for index, item in enumerate(data):
        if index >= limit:
            break
        batch = _as_batch(item, index)
        _check_batch(batch, example_input, index)
        batches.append(Batch(tuple(t.detach() for t in batch.inputs), batch.labels))
    if not batches:
        raise ValueError(
            "Invalid value for argument `data`. Expected at least one batch to calibrate "
            "on. Received empty data."
        )
    if len({b.labels is None for b in batches}) > 1:
        raise ValueError(
            "Invalid value for argument `data`. Expected every batch with labels or none "
            "with labels. Received a mix."
        )
    n_cal = len(batches) if held_out_batches == 0 else calibration_count(len(batches), calibrate)
    return SplitData(calibration=batches[:n_cal], held_out=batches[n_cal:])


def calibration_count(batches: int, most: int = CALIBRATION_BATCHES) -> int:
    """How many of ``batches`` batches calibrate when the rest are held out: the first
    ``min(most, max(1, batches // 2))``.

    Example:
        >>> calibration_count(3), calibration_count(17), calibration_count(40)
        (1, 8, 8)
    """
    return min(most, max(1, batches // 2))


def reference_outputs(model: nn.Module, batches: Sequence[Batch]) -> list[object]:
    """The float32 model's outputs on each batch (the accuracy check's reference).

    Raises:
        ValueError: the model rejects a batch (the message names the batch and its shape).
    """
    outputs = []
    for index, batch in enumerate(batches):
        try:
            outputs.append(run_model(model, batch.inputs, "original"))
        except ValueError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise ValueError(
                "Invalid value for argument `data`. Expected inputs the model accepts. "
                f"Received batch {index} of shape {describe(batch.inputs)}; the model "
                f"raised {one_line(cause)}"
            ) from exc
    return outputs
