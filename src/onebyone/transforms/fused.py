"""The fused convolution modules ``fuse_epilogues`` puts in a model.

``FusedConv1x1`` (a ``Conv1x1``) and ``FusedConv2d`` (an ``nn.Conv2d``) compute
``act(conv(x) + bias + residual)`` or ``act(conv(x) + bias) + residual`` in one
call. ``FusedConv1x1`` calls ``onebyone.conv1x1``; ``FusedConv2d`` takes the
route ``onebyone.kernels.routing.choose`` gives a non-1x1 convolution: on the
CPU without autograd, ATen's convolution with the residual and activation in
place on its fresh output; elsewhere the same computation as PyTorch ops, so a
fused model works wherever the original did. Neither keeps a copy of its
weight: a changed weight is used by the next call.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import skip_init

from onebyone import _checks, activations
from onebyone.activations import apply_activation
from onebyone.functional import conv1x1
from onebyone.geometry import conv_output_size, is_pointwise, pointwise_output_size
from onebyone.kernels import onednn, routing
from onebyone.kernels.epilogue import records_grad
from onebyone.nn.conv import Conv1x1
from onebyone.nn.untouchable import check_convertible
from onebyone.transforms._fx import register_leaf

__all__ = ["RESIDUAL_POSITIONS", "FusedConv1x1", "FusedConv2d"]

RESIDUAL_POSITIONS: tuple[str, ...] = ("before", "after")
"""Where a fused residual is added: ``act(conv + r)`` or ``act(conv) + r``."""


def _add_after(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``y + residual``, in place on ``y`` (this call's own output) when shapes allow."""
    if not torch.is_grad_enabled() and y.shape == torch.broadcast_shapes(y.shape, residual.shape):
        return y.add_(residual)
    return y + residual


@register_leaf
class FusedConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a fused activation and residual add (oneDNN on CPU).

    ``forward(x, residual=None)`` returns ``act(conv(x) + bias + residual)``
    (``residual_position="before"``) or ``act(conv(x) + bias) + residual``
    (``"after"``). CPU inference in float32 / bfloat16 is ATen's convolution
    with the residual and activation in place on its output; autograd, other
    devices and float64 run the same computation with PyTorch ops.

    Args:
        *args: ``nn.Conv2d``'s positional arguments (numeric ``padding``,
            ``padding_mode="zeros"``).
        **kwargs: its other keyword arguments.
        activation: ``None`` or a name from ``onebyone.ACTIVATIONS``.
        residual_position: ``"before"`` or ``"after"`` the activation.

    Shape:
        As ``nn.Conv2d``: ``(N, C, H, W) -> (N, K, H', W')``; ``residual`` has the output's shape.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import FusedConv2d
        >>> fused = FusedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), activation="relu")
        >>> fused(torch.randn(1, 8, 14, 14), residual=torch.randn(1, 8, 14, 14)).shape
        torch.Size([1, 8, 14, 14])
    """

    def __init__(
        self,
        *args: Any,
        activation: str | None = None,
        residual_position: str = "before",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.update(device=device, dtype=dtype)
        nn.Conv2d.__init__(self, *args, **kwargs)
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            raise _checks.invalid("padding", "numeric zero padding", self.padding)
        self.activation = activations.activation(activation)
        self.residual_position = _checks.choice(
            "residual_position", residual_position, RESIDUAL_POSITIONS
        )

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        activation: str | None = None,
        residual_position: str = "before",
    ) -> FusedConv2d:
        """A fused copy of ``conv`` (parameters copied; dtype, device and mode kept)."""
        if not isinstance(conv, nn.Conv2d):
            raise _checks.invalid("conv", "an nn.Conv2d", type(conv).__name__, kind=TypeError)
        check_convertible("conv", conv, nn.Conv2d)
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise _checks.invalid("conv", "an nn.Conv2d with numeric zero padding", conv)
        w = conv.weight
        out = skip_init(  # no random initialisation: the parameters are copied next
            cls,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            device=w.device,
            dtype=w.dtype,
            activation=activation,
            residual_position=residual_position,
        )
        out.load_state_dict(conv.state_dict())
        out.weight.requires_grad_(w.requires_grad)
        if out.bias is not None and conv.bias is not None:
            out.bias.requires_grad_(conv.bias.requires_grad)
        return out.train(conv.training)

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        padding = cast(tuple[int, int], self.padding)  # numeric, checked in __init__
        sizes = (
            conv_output_size(size, self.kernel_size[i], self.stride[i], padding[i],
                             self.dilation[i])
            for i, size in enumerate(x.shape[-2:])
        )  # fmt: skip
        return (*x.shape[:-3], self.out_channels, *sizes)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        before = self.residual_position == "before"
        needs_grad = records_grad(x, self.weight, self.bias, residual)
        if (
            x.dim() == 4
            and x.dtype == self.weight.dtype
            and (routing.choose("auto", x, needs_grad, None) is onednn)
        ):
            geometry: dict[str, Any] = {
                "padding": cast(tuple[int, int], self.padding), "dilation": self.dilation
            }  # fmt: skip
            args = (x, self.weight, self.bias)
            fusable = (
                residual is not None
                and before
                and tuple(residual.shape) == self._out_shape(x)
                and residual.dtype == x.dtype
            )
            if residual is None or fusable:
                return onednn.aten_forward(
                    *args, residual, self.stride, self.groups, self.activation, **geometry
                )
            act = None if before else self.activation
            y = onednn.aten_forward(*args, None, self.stride, self.groups, act, **geometry)
            if before:  # a broadcast residual: added out of place, then the activation
                return apply_activation(y + residual, self.activation, inplace=True)
            return _add_after(y, residual)
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None and before:
            y = y + residual
        y = apply_activation(y, self.activation, inplace=not torch.is_grad_enabled())
        if residual is not None and not before:
            y = _add_after(y, residual)
        return y

    def extra_repr(self) -> str:
        parts = [nn.Conv2d.extra_repr(self)]
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        parts.append(f"residual_position={self.residual_position!r}")
        return ", ".join(parts)


@register_leaf
class FusedConv1x1(Conv1x1):
    """``Conv1x1`` whose residual may also be added after the activation.

    ``forward(x, residual=None)`` returns ``act(conv1x1(x) + bias + residual)``
    (``residual_position="before"``: one ``onebyone.conv1x1`` call) or
    ``act(conv1x1(x) + bias) + residual`` (``"after"``: the add runs in place
    on the fresh output). A residual of another shape is broadcast.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        residual_position: ``"before"`` or ``"after"`` the activation.
        **kwargs: the other arguments of ``Conv1x1`` (``stride``, ``groups``,
            ``bias``, ``activation``, ``device``, ``dtype``).

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))``.

    Example:
        >>> import torch
        >>> from onebyone.transforms import FusedConv1x1
        >>> layer = FusedConv1x1(16, 8, activation="relu", residual_position="after")
        >>> layer(torch.randn(1, 16, 7, 7), residual=torch.randn(1, 8, 7, 7)).shape
        torch.Size([1, 8, 7, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        residual_position: str = "before",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        Conv1x1.__init__(self, in_channels, out_channels, device=device, dtype=dtype, **kwargs)
        self.residual_position = _checks.choice(
            "residual_position", residual_position, RESIDUAL_POSITIONS
        )

    @classmethod
    def from_module(
        cls,
        conv: nn.Module,
        *,
        activation: str | None = None,
        residual_position: str = "before",
    ) -> FusedConv1x1:
        """A fused copy of a ``Conv1x1`` (keeping its own activation) or of a 1x1
        ``nn.Conv2d`` without padding; dtype, device and mode kept."""
        if isinstance(conv, (Conv1x1, nn.Conv2d)):
            check_convertible("conv", conv, Conv1x1 if isinstance(conv, Conv1x1) else nn.Conv2d)
        if isinstance(conv, Conv1x1):
            if activation is not None and conv.activation is not None:
                raise _checks.invalid(
                    "activation", "None for a Conv1x1 with its own activation", activation
                )
            act = conv.activation if activation is None else activation
            stride, groups = conv.stride, conv.groups
        elif isinstance(conv, nn.Conv2d) and is_pointwise(conv.kernel_size, conv.padding):
            act, stride, groups = activation, (conv.stride[0], conv.stride[1]), conv.groups
        else:
            raise _checks.invalid(
                "conv",
                "a Conv1x1 or a 1x1 nn.Conv2d without padding",
                type(conv).__name__,
                kind=TypeError,
            )
        w = conv.weight
        out = skip_init(  # no random initialisation: the parameters are copied next
            cls,
            w.shape[1] * groups,
            w.shape[0],
            stride=stride,
            groups=groups,
            bias=conv.bias is not None,
            activation=act,
            device=w.device,
            dtype=w.dtype,
            residual_position=residual_position,
        )
        out.load_state_dict(conv.state_dict())
        out.weight.requires_grad_(w.requires_grad)
        if out.bias is not None and isinstance(conv.bias, torch.Tensor):
            out.bias.requires_grad_(conv.bias.requires_grad)
        return out.train(conv.training)

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        sh, sw = self.stride
        h, w = x.shape[-2:]
        return (*x.shape[:-3], self.out_channels, pointwise_output_size(h, sh),
                pointwise_output_size(w, sw))  # fmt: skip

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        common: dict[str, Any] = {"stride": self.stride, "groups": self.groups}
        if residual is None:
            return conv1x1(x, self.weight, self.bias, activation=self.activation, **common)
        if self.residual_position == "before":
            if tuple(residual.shape) == self._out_shape(x) and residual.dtype == x.dtype:
                return conv1x1(
                    x,
                    self.weight,
                    self.bias,
                    activation=self.activation,
                    residual=residual,
                    **common,
                )
            y = conv1x1(x, self.weight, self.bias, **common)
            return apply_activation(
                y + residual, self.activation, inplace=not torch.is_grad_enabled()
            )
        y = conv1x1(x, self.weight, self.bias, activation=self.activation, **common)
        return _add_after(y, residual)

    def extra_repr(self) -> str:
        return f"{Conv1x1.extra_repr(self)}, residual_position={self.residual_position!r}"
