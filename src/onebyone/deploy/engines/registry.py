"""One registry of engines: adding an engine is one file and one ``register`` call.

An ``Engine`` says whether it can run here (``available``: ``None``, or why not and
what to install), which precisions it computes natively on this CPU
(``precisions``), and builds a module from a ``Graph`` (the transformed exported
program, the calls it serves, the example). ``optimize`` builds every registered
engine that is available and native in the asked precision, verifies, times and
chooses among them; it wraps each module so that only the calls the capture proved
reach it. An engine that writes a deployable file is also a ``Saver`` (``save``):
``save_onnx``/``save_openvino`` write through it what ``optimize`` built and
verified. An engine with a quantiser lists ``"int8"`` among its precisions and
builds it from the same ``Graph``, whose ``calibration`` holds the user's
calibration batches.
The anchor is ONNX Runtime's ``quantization/registry.py``: a name maps to
one entry, and one factory reads the table (no ``if`` chains).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from torch.export import ExportedProgram

from onebyone.deploy.signature import CallSpec

if TYPE_CHECKING:
    from onebyone.deploy.quantize.data import Batch

T = TypeVar("T")

__all__ = ["REGISTRY", "Engine", "Graph", "Saver", "names", "register", "saver"]


@dataclass
class Graph:
    """What an engine builds from.

    Attributes:
        program: the transformed, functional exported program (``None`` when
            ``torch.export`` failed: only engines that take ``module`` can build).
        spec: the calls ``program`` serves.
        inputs: the example's inputs (in ``spec``).
        traced: the inputs ``program`` was traced with.
        module: the module-level transformed model, where export failed.
        calibration: the batches of the user's data an int8 build calibrates on
            (empty without data: int8 is then not built).
    """

    program: ExportedProgram | None
    spec: CallSpec | None
    inputs: tuple[torch.Tensor, ...]
    traced: tuple[torch.Tensor, ...]
    module: nn.Module | None = None
    calibration: tuple[Batch, ...] = ()
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, made once per graph: what an engine's precisions share (the ONNX
        export, the OpenVINO conversion), so ``auto`` does not export three times."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def flat(self) -> dict[str, object]:
        """``FlatModule``'s arguments (the exported call's structure and dtypes)."""
        if self.spec is None:
            raise ValueError("needs a torch.export capture")
        return {
            "in_spec": self.spec.in_spec,
            "out_spec": self.spec.out_spec,
            "input_dtypes": self.spec.dtypes,
            "output_constants": self.spec.constants,
        }


@runtime_checkable
class Engine(Protocol):
    """An engine ``optimize`` can build: one per file under ``deploy/engines``."""

    name: str

    def available(self) -> str | None:
        """``None`` when it can run here, else why not (the pip install to run)."""
        ...

    def precisions(self) -> tuple[str, ...]:
        """The precisions it computes natively on this CPU."""
        ...

    def build(self, graph: Graph, precision: str) -> nn.Module:
        """A module computing ``graph``'s program in ``precision``, called with the
        exported positional inputs; raises with the reason when it cannot. An int8
        build calibrates on ``graph.calibration`` and gives its module a
        ``calibration_s`` (seconds spent calibrating and quantising)."""
        ...


@runtime_checkable
class Saver(Protocol):
    """An engine that also writes a deployable file (ONNX, OpenVINO IR): what it
    built, written without building again."""

    name: str

    def save(self, built: Any, path: str | os.PathLike[str]) -> Path:
        """Write ``built`` (a module this engine built, or what ``optimize`` kept of it
        in ``report.exports``) at ``path`` through ``onebyone._files`` (all or nothing,
        an existing target replaced only when complete); returns the written file."""
        ...


REGISTRY: dict[str, Engine] = {}
"""``name -> Engine``, in the order ``auto`` builds them."""


def register(engine: Engine) -> Engine:
    """Add ``engine`` to the registry (replacing one of the same name)."""
    if not isinstance(engine, Engine) or not isinstance(engine.name, str) or not engine.name:
        raise TypeError(
            "Invalid value for argument `engine`. Expected an object with a name, "
            f"available(), precisions() and build(). Received {type(engine).__name__}."
        )
    if engine.name == "auto":
        raise ValueError("Invalid value for argument `engine`. Expected a name other than 'auto'.")
    REGISTRY[engine.name] = engine
    return engine


def names() -> tuple[str, ...]:
    """The registered engines' names."""
    return tuple(REGISTRY)


def saver(name: str) -> Saver:
    """The registered engine ``name``, which writes files (``Saver``)."""
    engine = REGISTRY.get(name)
    if not isinstance(engine, Saver):
        writers = sorted(n for n, e in REGISTRY.items() if isinstance(e, Saver))
        raise ValueError(
            "Invalid value for argument `name`. Expected a registered engine that writes "
            f"files ({', '.join(writers)}). Received {name!r}."
        )
    return engine
