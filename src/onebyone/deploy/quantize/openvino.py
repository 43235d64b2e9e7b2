"""OpenVINO int8 through NNCF: ``nncf.quantize`` on the converted model, calibrated on the
user's data; ``nncf.quantize_with_accuracy_control`` when a budget is given.

The float32 ``openvino.Model`` is the OpenVINO engine's own conversion of the
exported program (``engines.openvino.convert``); NNCF inserts its quantise /
dequantise pairs (``FakeQuantize``) and the CPU plugin runs the quantised layers
in int8. The result runs behind the engine's own module (``OpenVINOModule``: the
original call signature, a copy compiled at the example's shapes); the layers NNCF
leaves in floating point run at ``float_precision``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram

from onebyone import _checks, _files
from onebyone.deploy.engines import openvino as ov_engine
from onebyone.deploy.quantize.budget import check_max_drop
from onebyone.deploy.quantize.data import Batch
from onebyone.deploy.signature import CallSpec

__all__ = ["OpenVINOInt8Module", "available", "openvino_int8_module"]


def available() -> str | None:
    """``None`` when openvino and nncf import, else the pip install to run."""
    why = ov_engine.available()
    if why is not None:
        return why
    try:
        import nncf  # noqa: F401
    except ImportError:
        return "nncf is not installed: pip install 'onebyone[openvino]'"
    return None


class OpenVINOInt8Module(ov_engine.OpenVINOModule):
    """An NNCF-quantised OpenVINO model behind the original model's call signature.

    Args:
        model: the quantised ``openvino.Model``.
        calibration_s: seconds NNCF spent calibrating.
        **kwargs: ``OpenVINOModule``'s arguments (``precision`` is that of the layers
            left in floating point).

    Shape:
        The original model's.
    """

    def __init__(self, model: Any, *, calibration_s: float, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.calibration_s = calibration_s

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the int8 IR (``model.xml`` + ``model.bin``) into ``folder`` by
        ``onebyone._files``' rule (all or nothing).

        ``openvino.Core().read_model`` reads it back; compiled for the CPU plainly
        (``core.compile_model(xml, "CPU")``) it computes what this module computes: the
        layers NNCF left in floating point are marked to keep this module's precision
        (``engines.openvino.set_precision``).

        Returns:
            The path of ``model.xml``.
        """
        import openvino as ov

        model = self.ov_model.clone()  # the layers left in floating point keep its precision
        ov_engine.set_precision(model, self.precision)

        def fill(temp: Path) -> None:
            ov.save_model(model, str(temp / "model.xml"), compress_to_fp16=False)

        return _files.write_folder(folder, fill, argument="folder") / "model.xml"

    def extra_repr(self) -> str:
        return f"int8 (NNCF), other layers {super().extra_repr()}"


def _arrays(batch: Batch) -> list[np.ndarray]:
    return [t.contiguous().numpy() for t in batch.inputs]


def _targets(held_out: Sequence[Batch], references: Sequence[object] | None) -> list[np.ndarray]:
    """Per held-out batch: the labels, or the float32 original's top-1 classes."""
    targets = []
    for i, batch in enumerate(held_out):
        if batch.labels is not None:
            targets.append(batch.labels.numpy())
            continue
        reference = references[i] if references is not None and i < len(references) else None
        first = reference if isinstance(reference, torch.Tensor) else None
        if (
            isinstance(reference, (tuple, list))
            and reference
            and isinstance(reference[0], torch.Tensor)
        ):
            first = reference[0]
        if first is None or first.dim() != 2 or first.shape[1] < 2:
            raise ValueError(
                "Invalid value for argument `max_drop`. Expected a model whose first output "
                "is a classifier's (N, classes), or labelled data: the budget is a drop in "
                "top-1 agreement or accuracy. Received max_drop for a model without one."
            )
        targets.append(first.argmax(1).numpy())
    return targets


def _top1_metric(compiled: Any, items: Iterable[tuple[list[np.ndarray], np.ndarray]]) -> Any:
    """NNCF's validation function: the share of rows whose arg-max is the target, and each
    batch's share."""
    right = rows = 0
    per_item: list[float] = []
    for arrays, target in items:
        scores = compiled(arrays)[0]
        hits = int((np.asarray(scores).argmax(1) == target).sum())
        right, rows = right + hits, rows + len(target)
        per_item.append(hits / max(len(target), 1))
    return right / max(rows, 1), per_item


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF without its progress bars (printed to stdout) and its info lines."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def openvino_int8_module(
    program: ExportedProgram,
    inputs: tuple[torch.Tensor, ...],
    *,
    calibration: Sequence[Batch],
    spec: dict[str, Any],
    max_drop: float | None = None,
    held_out: Sequence[Batch] = (),
    references: Sequence[object] | None = None,
    float_precision: str = "float32",
    fast_bias_correction: bool = False,
    call: CallSpec | None = None,
    model: Any = None,
) -> OpenVINOInt8Module:
    """Convert ``program`` (the OpenVINO engine's conversion), quantise it with NNCF on the
    calibration batches and compile it for the CPU.

    Args:
        program: the exported program (as the OpenVINO engine takes it).
        inputs: the example's inputs (the fixed-shape copy is compiled for them).
        calibration: the batches NNCF measures activation ranges on (``split_data``).
        spec: ``FlatModule``'s arguments (the call signature).
        max_drop: ``None``: ``nncf.quantize``. A budget in ``[0, 1]``:
            ``nncf.quantize_with_accuracy_control`` on ``held_out``, the metric being
            accuracy with labels, else top-1 agreement with ``references`` (the float32
            original's outputs on ``held_out``); NNCF reverts layers to floating point
            until the drop is within the budget.
        held_out: the validation batches (with ``max_drop``).
        references: the original's outputs on ``held_out`` (with ``max_drop``, unlabelled).
        float_precision: ``"float32"`` or ``"bfloat16"``: what the layers left in floating
            point compute in (``INFERENCE_PRECISION_HINT``).
        fast_bias_correction: NNCF's fast bias correction instead of its full one. The
            full one is slower to calibrate and, on the digits network, keeps test
            accuracy at float32's (98.0%) where the fast one lost 1.1 points.
        call: the calls the program serves (the IR's input shapes: static dimensions
            static, dynamic ones over their proven range).
        model: the engine's conversion of ``program``, when made already (a copy
            nothing else uses: NNCF may change it).

    Raises:
        ValueError: no calibration batch, ``max_drop`` outside ``[0, 1]`` or without held-out
            data, a float precision this CPU lacks.
        RuntimeError: NNCF failed (its message).

    Shape:
        The original model's.
    """
    import nncf

    if not calibration:
        raise ValueError(
            "Invalid value for argument `calibration`. Expected at least one batch of real "
            "inputs. Received none."
        )
    _checks.choice("float_precision", float_precision, ov_engine.float_precisions())
    budget = None if max_drop is None else check_max_drop(max_drop)
    if budget is not None and not held_out:
        raise ValueError(
            "Invalid value for argument `max_drop`. Expected held-out batches to measure the "
            "drop on. Received a budget and no held-out data."
        )
    if model is None:
        model = ov_engine.convert(program, call)
    start = time.perf_counter()
    dataset = nncf.Dataset(list(calibration), _arrays)
    with _quiet():
        if budget is None:
            quantised = nncf.quantize(
                model, dataset, subset_size=len(calibration),
                target_device=nncf.TargetDevice.CPU, fast_bias_correction=fast_bias_correction,
            )  # fmt: skip
        else:
            items = [(_arrays(b), t) for b, t in zip(held_out, _targets(held_out, references),
                                                     strict=True)]  # fmt: skip
            quantised = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(items, lambda item: item[0]),
                _top1_metric,
                max_drop=budget,
                subset_size=len(calibration),
                target_device=nncf.TargetDevice.CPU,
                fast_bias_correction=fast_bias_correction,
            )
    seconds = time.perf_counter() - start
    return OpenVINOInt8Module(
        quantised,
        calibration_s=seconds,
        precision=float_precision,
        threads=torch.get_num_threads(),
        shapes=[tuple(t.shape) for t in inputs],
        **spec,
    )
