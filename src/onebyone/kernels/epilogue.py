"""The fused epilogue's activations as tensor functions: ``act(z)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LEAKY_RELU_SLOPE", "add_then_activate_", "apply_activation", "records_grad"]

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of ``"leaky_relu"`` (PyTorch's default)."""

_OUT_OF_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda z: F.leaky_relu(z, LEAKY_RELU_SLOPE),
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

_IN_PLACE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_,
    "relu6": lambda z: F.hardtanh_(z, 0.0, 6.0),
    "leaky_relu": lambda z: F.leaky_relu_(z, LEAKY_RELU_SLOPE),
    "silu": lambda z: F.silu(z, inplace=True),
    "gelu": F.gelu,
    "hardswish": lambda z: F.hardswish(z, inplace=True),
    "sigmoid": torch.sigmoid_,
    "tanh": torch.tanh_,
}


def apply_activation(z: torch.Tensor, name: str | None, *, inplace: bool) -> torch.Tensor:
    """Return ``act(z)``; with ``inplace=True`` ``z`` may be overwritten (never an input)."""
    if name is None:
        return z
    return (_IN_PLACE if inplace else _OUT_OF_PLACE)[name](z)


def add_then_activate_(y: torch.Tensor, addend: torch.Tensor, name: str | None) -> torch.Tensor:
    """``act(y + addend)``, overwriting ``y``: a fresh output, never an input (no autograd).

    Float32 ReLU on the CPU is ATen's one-pass ``add + relu``; otherwise the add runs
    in place, then the activation (in place where it has such a form).

    Shape:
        ``y``'s; ``addend`` broadcasts to it.
    """
    if name == "relu" and y.dtype == torch.float32 and y.device.type == "cpu":
        return torch._add_relu_(y, addend)
    return apply_activation(y.add_(addend), name, inplace=True)


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on these tensors (``None`` entries are skipped):
    grad mode is on and at least one of them requires grad. Where it does not, the
    epilogue may overwrite the fresh output in place."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # noqa: SIM110 (a loop: half the cost of any() on a generator)
        if t is not None and t.requires_grad:
            return True
    return False
