"""Option checks and weight-initialisation helpers shared by the model families."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from onebyone import _checks
from onebyone.nn.conv import Conv1x1

__all__ = ["convolutions", "flag", "init_norms", "probability", "ratio", "truncated_normal_"]


def flag(argument: str, value: object) -> bool:
    """Validate a boolean option."""
    if not isinstance(value, bool):
        raise _checks.invalid(argument, "True or False", value, kind=TypeError)
    return value


def probability(argument: str, value: object) -> float:
    """Validate a dropout probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _checks.invalid(argument, "a number in [0, 1)", value, kind=TypeError)
    if not 0.0 <= value < 1.0:
        raise _checks.invalid(argument, "a number in [0, 1)", value)
    return float(value)


def ratio(argument: str, value: object) -> float:
    """Validate a strictly positive multiplier such as ``width_mult``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _checks.invalid(argument, "a positive number", value, kind=TypeError)
    if not value > 0:
        raise _checks.invalid(argument, "a positive number (> 0)", value)
    return float(value)


def convolutions(model: nn.Module) -> Iterator[nn.Conv2d | Conv1x1]:
    """Every ``nn.Conv2d`` and ``Conv1x1`` in ``model`` (the layers an init touches)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, Conv1x1)):
            yield m


def init_norms(model: nn.Module) -> None:
    """Batch norms start as the identity map: weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def truncated_normal_(tensor: torch.Tensor, std: float, limit: float) -> torch.Tensor:
    """Fill ``tensor`` in place from ``normal(0, std)`` restricted to ``[-limit, limit]``.

    Rejection sampling: the values drawn outside the limits are redrawn until
    none is left (at two standard deviations, about 5% per round).
    """
    with torch.no_grad():
        flat = tensor.view(-1).normal_(0.0, std)  # parameters are contiguous
        redo = torch.nonzero(flat.abs() > limit).squeeze(1)
        while redo.numel():
            fresh = torch.empty(redo.numel(), dtype=flat.dtype, device=flat.device).normal_(
                0.0, std
            )
            flat[redo] = fresh
            redo = redo[fresh.abs() > limit]
    return tensor
