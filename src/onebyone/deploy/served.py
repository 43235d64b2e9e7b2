"""``Served``: what ``optimize`` returns around an engine.

A call that binds to the exported call and passes its ``CallSpec`` (the shapes
the capture proved, export's guards) runs the engine; any other call runs a frozen
copy of the original model (warned once per new shape), never a graph that was
not proven for it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _module

from onebyone.deploy.engines.base import FlatModule
from onebyone.deploy.signature import CallSpec

__all__ = ["Served", "freeze"]


def freeze(model: nn.Module) -> nn.Module:
    """``model`` (a copy nobody else holds) made inference-only: no parameter needs grad."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    values = list(args) + [kwargs[k] for k in sorted(kwargs)]
    return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                 for v in values)  # fmt: skip


def _key(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What ``CallSpec.why_not`` decides on, when every input is a tensor: each one's
    shape, dtype, device and layout (``None`` otherwise: checked every time)."""
    if not all(isinstance(a, torch.Tensor) for a in args):
        return None
    return tuple((tuple(a.shape), a.dtype, a.device, a.layout) for a in args)


def _arrays(args: tuple[Any, ...]) -> list[np.ndarray] | None:
    """C-contiguous NumPy arrays over the tensors' memory, or ``None`` when a value is not
    a tensor ``Tensor.numpy`` takes as it is (one on another device, sparse, needing grad,
    with a lazy conjugate or negation, or of a dtype NumPy lacks)."""
    arrays = []
    for a in args:
        if not isinstance(a, torch.Tensor):
            return None
        try:
            view = a.numpy()
        except (RuntimeError, TypeError):
            return None
        arrays.append(view if view.flags.c_contiguous else np.ascontiguousarray(view))
    return arrays


def _array_key(arrays: list[np.ndarray]) -> tuple[Any, ...]:
    """What ``CallSpec.why_not`` decides on, read from the arrays: each one's shape and
    dtype (a CPU strided tensor's: ``Tensor.numpy`` took it; NumPy's dtypes map one to one
    onto PyTorch's, and each has its number)."""
    if len(arrays) == 1:
        return arrays[0].shape, arrays[0].dtype.num
    return tuple((a.shape, a.dtype.num) for a in arrays)


def _global_hooks() -> bool:
    """Whether a hook for every module is registered (``nn.Module.__call__`` runs them)."""
    return bool(getattr(_module, "_global_forward_hooks", None)
                or getattr(_module, "_global_forward_pre_hooks", None)
                or getattr(_module, "_global_backward_hooks", None)
                or getattr(_module, "_global_backward_pre_hooks", None))  # fmt: skip


class Served(nn.Module):
    """An engine for the calls its capture proved, the original model for the rest.

    Args:
        engine: the engine's module, called with the exported positional inputs.
        spec: the calls ``engine`` serves.
        fallback: a frozen copy of the original model (it owns its weights).

    Shape:
        The original model's.
    """

    def __init__(self, engine: nn.Module, spec: CallSpec, fallback: nn.Module) -> None:
        super().__init__()
        self.engine = engine
        self.spec = spec
        self.fallback = fallback
        self._warned: set[tuple[Any, ...]] = set()
        self._proven: set[tuple[Any, ...]] = set()
        self._proven_arrays: set[tuple[Any, ...]] = set()
        # one tensor in, one out, at a proven shape and dtype: the engine's runtime as
        # one function of the input's array (``FlatModule.single``)
        self._single: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``forward``, as ``nn.Module.__call__`` calls it when nothing hooks a module,
        without its check for ``torch.jit.trace``; with any hook, or compiled, the
        module's own call.

        The common call, positional CPU tensors at shapes proven before, is decided on
        their NumPy views, which a NumPy engine then runs on. After an engine has run,
        its weights fill the caches, and each call into PyTorch costs tens of
        microseconds instead of one, each Python call a few: this path makes two calls
        into PyTorch (``Tensor.numpy``, ``torch.from_numpy`` on the output) and, for one
        tensor in and one out, one call of the runtime's compiled entry point
        (measured call by call on MobileNetV2 at batch 1, the layers of Python it skips
        cost 0.5-1.5% of a 2-5 ms call).
        """
        if (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                or self._backward_pre_hooks or self._compiled_call_impl is not None
                or _global_hooks()):  # fmt: skip
            return super().__call__(*args, **kwargs)
        # ``_arrays`` and ``_array_key`` written out for the one tensor: no Python calls
        if self._single and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            try:
                view = args[0].numpy()
            except (RuntimeError, TypeError):
                view = None
            if view is not None:
                run = self._single.get((view.shape, view.dtype.num))
                if run is not None:
                    if not view.flags.c_contiguous:
                        view = np.ascontiguousarray(view)
                    return torch.from_numpy(run(view))
        if self._proven_arrays and not kwargs:  # other structures, also decided on arrays
            arrays = _arrays(args)
            if arrays is not None and _array_key(arrays) in self._proven_arrays:
                return self.engine.proven_arrays(arrays)  # type: ignore[operator]
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.spec.bind(args, kwargs)
        key = None
        if bound is not None:
            key = _key(bound)
            if key is not None and key in self._proven:  # checked before: shapes decide it
                engine = self.engine  # its entry without the input checks the key covers
                return engine.proven(*bound) if isinstance(engine, FlatModule) else engine(*bound)
        why = "the call passes other arguments" if bound is None else self.spec.why_not(bound)
        if why is None:
            if key is not None:
                self._proven.add(key)
                engine = self.engine
                arrays = _arrays(bound) if isinstance(engine, FlatModule) else None
                if arrays is not None and not kwargs:
                    self._proven_arrays.add(_array_key(arrays))
                    single = engine.single(arrays[0].shape) if len(arrays) == 1 else None
                    if single is not None:
                        self._single[_array_key(arrays)] = single
            return self.engine(*bound)  # type: ignore[misc]
        key = _shapes(args, kwargs)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"optimized model: inputs {key} were not proven by the capture ({why}); "
                "running the original model for them",
                stacklevel=3,  # the caller's line, through ``__call__``
            )
        return self.fallback(*args, **kwargs)

    def train(self, mode: bool = True) -> Served:
        """Frozen for inference: only the flag changes."""
        self.training = mode
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Served:
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            # the single-call functions hold this engine's session or request
            clone.__dict__[key] = {} if key == "_single" else copy.deepcopy(value, memo)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "an optimized model does not pickle (it holds a compiled engine and export's "
            "guards); write a deployable file instead (onebyone.deploy.save_onnx, "
            "save_openvino, `onebyone optimize --onnx/--openvino`), or optimize the loaded "
            "original again"
        )

    def extra_repr(self) -> str:
        return f"serves {self.spec.describe()}"
