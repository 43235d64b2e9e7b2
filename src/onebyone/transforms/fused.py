"""The fused convolution modules ``fuse_epilogues`` puts in a model.

``FusedConv1x1`` (a ``Conv1x1``) and ``FusedConv2d`` (an ``nn.Conv2d``) compute
``act(conv(x) + bias + residual)`` or ``act(conv(x) + bias) + residual`` in one
call. On the CPU without autograd that call takes the oneDNN kernel's
measured routes: ATen's convolution with the residual and activation in place
on its fresh output, or, after ``prepack()`` and where the weight outweighs
the output pixels (``onebyone.kernels.onednn.packing_pays``), oneDNN's fused
convolution (``torch.ops.mkldnn._convolution_pointwise``, with its ``.binary``
overload for the residual) on a copy of the weight kept in oneDNN's blocked
layout (made on the first such call, dropped when the weight changes or
dies). Elsewhere the same computation runs as PyTorch ops, so a fused model
works wherever the original did.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import skip_init

from onebyone import _checks
from onebyone.functional import conv1x1
from onebyone.kernels import onednn
from onebyone.kernels.epilogue import apply_activation, records_grad
from onebyone.kernels.gemm import is_channels_last
from onebyone.nn.conv import Conv1x1
from onebyone.transforms._fx import register_leaf

__all__ = ["RESIDUAL_POSITIONS", "FusedConv1x1", "FusedConv2d"]

RESIDUAL_POSITIONS: tuple[str, ...] = ("before", "after")
"""Where a fused residual is added: ``act(conv + r)`` or ``act(conv) + r``."""


class _OneDNNEpilogue:
    """The oneDNN fast path and its pre-packed weight, shared by both fused modules.

    A subclass provides ``weight``, ``bias``, ``activation``, ``residual_position``
    and ``_geometry()``.
    """

    weight: Any
    bias: Any
    activation: str | None
    residual_position: str
    prepacked: bool

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        raise NotImplementedError

    def _weight4d(self) -> torch.Tensor:
        return self.weight

    def prepack(self, enabled: bool = True) -> None:
        """Keep the weight in oneDNN's blocked layout (made on the next fast call)."""
        self.prepacked = bool(enabled)

    def _fast(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        """Whether oneDNN's fused convolution can compute this call."""
        if x.dim() != 4 or x.dtype != self.weight.dtype:
            return False
        needs_grad = records_grad(x, self.weight, self.bias, residual)
        # the direct oneDNN calls below have no autograd: training runs the PyTorch ops
        if needs_grad or onednn.unsupported(x, needs_grad) is not None:
            return False
        return residual is None or (residual.dtype == x.dtype and residual.dim() == 4)

    def _onednn(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_shape: tuple[int, ...]
    ) -> torch.Tensor:
        padding, stride, dilation, groups = self._geometry()
        geometry: dict[str, Any] = {
            "padding": padding, "stride": stride, "dilation": dilation, "groups": groups
        }  # fmt: skip
        w4 = self._weight4d().detach()
        bias = None if self.bias is None else self.bias.detach()
        before = self.residual_position == "before"
        if residual is not None and before and tuple(residual.shape) != out_shape:
            # a broadcast residual: added out of place, then the activation
            y = onednn.aten_forward(x, w4, bias, None, stride, groups, None, padding=padding,
                                    dilation=dilation)  # fmt: skip
            return apply_activation(y + residual, self.activation, inplace=True)
        fused_residual = residual if before else None
        pixels = out_shape[0] * out_shape[2] * out_shape[3]
        reduction = w4.shape[1] * w4.shape[2] * w4.shape[3]  # C/g * kh * kw
        if (
            self.prepacked
            and onednn.packing_pays(out_shape[1] // groups, reduction, pixels)
            and is_channels_last(x)
        ):
            # the packed weight is kept by the kernel while the weight is unchanged
            w4 = onednn.packed_weight(self.weight, w4, x, **geometry)
            y = onednn.fused_convolution(
                x, w4, bias, fused_residual, activation=self.activation, **geometry
            )
        else:
            y = onednn.aten_forward(x, w4, bias, fused_residual, stride, groups, self.activation,
                                    padding=padding, dilation=dilation)  # fmt: skip
        return y if residual is None or before else _add_after(y, residual)


def _add_after(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``y + residual``, in place on ``y`` (this call's own output) when shapes allow."""
    if not torch.is_grad_enabled() and y.shape == torch.broadcast_shapes(y.shape, residual.shape):
        return y.add_(residual)
    return y + residual


@register_leaf
class FusedConv2d(_OneDNNEpilogue, nn.Conv2d):
    """``nn.Conv2d`` with a fused activation and residual add (oneDNN on CPU).

    ``forward(x, residual=None)`` returns ``act(conv(x) + bias + residual)``
    (``residual_position="before"``) or ``act(conv(x) + bias) + residual``
    (``"after"``). CPU inference in float32 / bfloat16 is ATen's convolution
    with the residual and activation in place on its output, or, when prepacked
    and the weight outweighs the output pixels, one
    ``torch.ops.mkldnn._convolution_pointwise`` call with post-ops on the
    packed weight; autograd, other devices and float64 run the same
    computation with PyTorch ops.

    Args:
        *args, **kwargs: those of ``nn.Conv2d`` (numeric ``padding``,
            ``padding_mode="zeros"``).
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
        self.activation = _checks.activation(activation)
        self.residual_position = _checks.choice(
            "residual_position", residual_position, RESIDUAL_POSITIONS
        )
        self.prepacked = False

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

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        padding = cast(tuple[int, int], self.padding)  # numeric, checked in __init__
        return list(padding), list(self.stride), list(self.dilation), self.groups

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        sizes = []
        for i, size in enumerate(x.shape[-2:]):
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            p = int(self.padding[i])
            sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return (*x.shape[:-3], self.out_channels, *sizes)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._fast(x, residual):
            return self._onednn(x, residual, self._out_shape(x))
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None and self.residual_position == "before":
            y = y + residual
        y = apply_activation(y, self.activation, inplace=not torch.is_grad_enabled())
        if residual is not None and self.residual_position == "after":
            y = _add_after(y, residual)
        return y

    def extra_repr(self) -> str:
        parts = [nn.Conv2d.extra_repr(self)]
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        parts.append(f"residual_position={self.residual_position!r}")
        return ", ".join(parts)


@register_leaf
class FusedConv1x1(_OneDNNEpilogue, Conv1x1):
    """``Conv1x1`` whose residual may also be added after the activation.

    ``forward(x, residual=None)`` returns ``act(conv1x1(x) + bias + residual)``
    (``residual_position="before"``: one ``onebyone.conv1x1`` call) or
    ``act(conv1x1(x) + bias) + residual`` (``"after"``: the add runs in place
    on the fresh output). A residual of another shape is broadcast. With
    ``prepack()`` CPU inference calls oneDNN directly, with the blocked weight
    where packing pays.

    Args:
        in_channels, out_channels: ``C``, ``K``.
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
        self.prepacked = False

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
        if isinstance(conv, Conv1x1):
            if activation is not None and conv.activation is not None:
                raise _checks.invalid(
                    "activation", "None for a Conv1x1 with its own activation", activation
                )
            act = conv.activation if activation is None else activation
            stride, groups = conv.stride, conv.groups
        elif (
            isinstance(conv, nn.Conv2d)
            and tuple(conv.kernel_size) == (1, 1)
            and conv.padding == (0, 0)
        ):
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

    def _geometry(self) -> tuple[list[int], list[int], list[int], int]:
        return [0, 0], list(self.stride), [1, 1], self.groups

    def _weight4d(self) -> torch.Tensor:
        return self.weight.reshape(*self.weight.shape, 1, 1)  # (K, C/g) -> (K, C/g, 1, 1)

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        sh, sw = self.stride
        return (*x.shape[:-3], self.out_channels, -(-x.shape[-2] // sh), -(-x.shape[-1] // sw))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.prepacked and self._fast(x, residual):
            return self._onednn(x, residual, self._out_shape(x))
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
