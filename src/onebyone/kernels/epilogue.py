"""Epilogue helpers shared by the kernels: ``act(y + addend)`` in place, and whether
autograd records a call."""

from __future__ import annotations

import torch

from onebyone.activations import apply_activation

__all__ = ["add_then_activate_", "records_grad"]


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
