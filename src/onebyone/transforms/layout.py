"""Memory layout and dtype: channels-last activations, pre-packed weights, bfloat16.

oneDNN computes convolutions on channels-last (NHWC) activations without
reordering them first, so a model whose inputs enter channels-last keeps every
intermediate map channels-last. ``to_channels_last`` converts the weights and
wraps the model so its inputs are converted once, at the entry, and 4-D
outputs return in the caller's layout. ``cast`` runs a model in another dtype behind the
same interface.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from onebyone.nn.untouchable import copy_module
from onebyone.transforms.fold import check_model

__all__ = [
    "CastDtype",
    "ChannelsLast",
    "cast",
    "to_channels_last",
]


def _map(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map(v, fn) for v in value)
    if isinstance(value, list):
        return [_map(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


class ChannelsLast(nn.Module):
    """Runs ``module`` on channels-last inputs.

    4-D tensor inputs are converted to ``torch.channels_last`` once; 4-D
    outputs come back contiguous (NCHW) when the first input was, so callers
    see the layout they passed in.

    Shape:
        Those of ``module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import to_channels_last
        >>> model = to_channels_last(nn.Conv2d(3, 8, 3).eval())
        >>> model(torch.randn(1, 3, 16, 16)).is_contiguous()
        True
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: Any) -> Any:
        first = next((t for t in inputs if isinstance(t, torch.Tensor) and t.dim() == 4), None)
        back = first is not None and first.is_contiguous()
        converted = tuple(
            t.contiguous(memory_format=torch.channels_last)
            if isinstance(t, torch.Tensor) and t.dim() == 4
            else t
            for t in inputs
        )
        out = self.module(*converted)
        if not back:
            return out
        return _map(out, lambda t: t.contiguous() if t.dim() == 4 else t)


def to_channels_last(model: nn.Module) -> ChannelsLast:
    """A copy of ``model`` with 4-D weights and activations in channels-last memory format.

    Args:
        model: any module taking 4-D inputs (others pass through unchanged).

    Returns:
        ``ChannelsLast(copy)``: same function, same dtypes; ``model`` is unchanged.

    Shape:
        Unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import to_channels_last
        >>> cl = to_channels_last(nn.Conv2d(3, 8, 3))
        >>> cl.module.weight.is_contiguous(memory_format=torch.channels_last)
        True
    """
    check_model(model)
    converted = copy_module(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return ChannelsLast(converted).train(model.training)


class CastDtype(nn.Module):
    """Runs ``module`` in ``dtype``: floating inputs are cast to it, floating outputs back
    to the first input's dtype.

    Shape:
        Those of ``module``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import cast
        >>> model = cast(nn.Linear(4, 2), torch.bfloat16)
        >>> model(torch.randn(3, 4)).dtype
        torch.float32
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *inputs: Any) -> Any:
        first = next(
            (t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None
        )
        converted = _map(inputs, lambda t: t.to(self.dtype) if t.is_floating_point() else t)
        out = self.module(*converted)
        if first is None:
            return out
        return _map(out, lambda t: t.to(first.dtype) if t.is_floating_point() else t)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def cast(model: nn.Module, dtype: torch.dtype) -> CastDtype:
    """A copy of ``model`` whose floating parameters and buffers are in ``dtype``, wrapped so
    callers keep passing and receiving their own dtype.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import cast
        >>> cast(nn.Linear(4, 2), torch.bfloat16).module.weight.dtype
        torch.bfloat16
    """
    check_model(model)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            "Invalid value for argument `dtype`. Expected a floating-point torch.dtype. "
            f"Received dtype={dtype!r}."
        )
    return CastDtype(copy_module(model).to(dtype), dtype).train(model.training)
