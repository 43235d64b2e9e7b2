"""What every engine's module shares: the model's call signature, flattened and restored.

An exported program takes its inputs as the pytree ``(args, kwargs)`` and returns a
pytree of tensors; an engine runs flat lists of tensors. ``FlatModule`` flattens a
call with the program's input spec, runs ``run`` and rebuilds the output with the
output spec, so the engine's module is called like the original model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["FlatModule"]


class FlatModule(nn.Module):
    """Base of the ONNX Runtime and OpenVINO modules.

    Args:
        in_spec: the pytree spec of ``(args, kwargs)`` the program was exported with.
        out_spec: the pytree spec of its outputs.
        input_dtypes: the dtype each flat input must have.
        fixed_shapes: the shape each flat input must have (static captures), or ``None``.
        fallback: a module run for inputs of another shape (static captures), or ``None``.
    """

    def __init__(
        self,
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        input_dtypes: list[torch.dtype],
        fixed_shapes: list[tuple[int, ...]] | None = None,
        fallback: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.input_dtypes = input_dtypes
        self.fixed_shapes = fixed_shapes
        self.fallback = fallback

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The engine's computation on flat CPU tensors."""
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            raise TypeError(
                "Invalid value for argument `inputs`. Expected the call the model was "
                f"optimised for ({self.in_spec.num_leaves} tensor(s)). Received "
                f"{spec.num_leaves} leaf value(s) in another structure."
            )
        tensors: list[torch.Tensor] = []
        for i, (t, dtype) in enumerate(zip(flat, self.input_dtypes, strict=True)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"Invalid value for argument `inputs`. Expected a tensor at position {i}. "
                    f"Received {type(t).__name__}."
                )
            if t.dtype != dtype or t.device.type != "cpu":
                raise TypeError(
                    f"Invalid value for argument `inputs`. Expected a CPU tensor of dtype "
                    f"{dtype} at position {i}. Received dtype {t.dtype} on {t.device}."
                )
            tensors.append(t)
        if self.fixed_shapes is not None and [tuple(t.shape) for t in tensors] != self.fixed_shapes:
            if self.fallback is None:
                raise ValueError(
                    "Invalid value for argument `inputs`. Expected the shapes "
                    f"{self.fixed_shapes} (the model fixes them). Received "
                    f"{[tuple(t.shape) for t in tensors]}."
                )
            return self.fallback(*args, **kwargs)
        return pytree.tree_unflatten(self.run(tensors), self.out_spec)


class StaticShapes(nn.Module):
    """Runs ``module`` on the input shapes it was captured with, ``fallback`` on others.

    Args:
        module: a module that accepts only ``shapes`` (a capture with static shapes).
        shapes: the shape of each positional tensor input.
        fallback: the module for every other call (a frozen copy of the original model).

    Shape:
        The original model's.
    """

    def __init__(self, module: nn.Module, shapes: list[tuple[int, ...]], fallback: nn.Module):
        super().__init__()
        self.module = module
        self.shapes = shapes
        self.fallback = fallback

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        shapes = [tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]
        target = self.module if shapes == self.shapes and not kwargs else self.fallback
        return target(*args, **kwargs)

    def train(self, mode: bool = True) -> StaticShapes:
        """Frozen for inference: only the flag changes."""
        self.training = mode
        return self
