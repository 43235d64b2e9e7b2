"""``Conv1x1``: the module over ``onebyone.conv1x1``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from onebyone import _checks, activations
from onebyone.functional import _FLOAT_DTYPES, conv1x1
from onebyone.geometry import is_pointwise, same_padding
from onebyone.nn.untouchable import check_convertible

__all__ = ["NORMS", "Conv1x1", "ConvNormAct", "activation_module", "norm_module"]

NORMS: tuple[str, ...] = ("batch",)
"""Normalisation names accepted by ``ConvNormAct`` and the blocks (``None``: no norm)."""


def activation_module(name: str | None) -> nn.Module:
    """The ``nn.Module`` computing the named activation (``nn.Identity`` for ``None``)."""
    name = activations.activation(name)
    return nn.Identity() if name is None else activations.TABLE[name].module()


class Conv1x1(nn.Module):
    """A pointwise convolution layer with an optional fused activation and residual.

    ``forward(x, residual=None)`` returns ``act(conv1x1(x) + bias + residual)``.
    The weight is the 2-D ``(out_channels, in_channels // groups)`` matrix,
    initialised like ``nn.Conv2d``. ``load_state_dict`` also accepts the state
    dict of an ``nn.Conv2d(kernel_size=1)`` (4-D weight) or an ``nn.Linear``.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        stride: int or ``(sh, sw)`` pixel subsampling.
        groups: channel groups; must divide ``C`` and ``K``.
        bias: learn a ``(K,)`` bias.
        activation: ``None`` or a name from ``onebyone.ACTIVATIONS``.
        device: where to allocate the parameters.
        dtype: the parameters' dtype (float16, bfloat16, float32 or float64; None: the
            default dtype).

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))`` or unbatched
        ``(C, H, W) -> (K, H', W')``; channels-last stays channels-last.

    Example:
        >>> import torch
        >>> from onebyone.nn import Conv1x1
        >>> Conv1x1(64, 32, activation="relu")(torch.randn(1, 64, 28, 28)).shape
        torch.Size([1, 32, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        activation: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        c, k, g = _checks.channels(in_channels, out_channels, groups)
        if not isinstance(bias, bool):
            raise _checks.invalid("bias", "True or False", bias, kind=TypeError)
        self.in_channels = c
        self.out_channels = k
        self.groups = g
        self.stride = _checks.pair("stride", stride)
        self.activation = activations.activation(activation)
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            names = ", ".join(str(d) for d in _FLOAT_DTYPES)
            raise _checks.invalid("dtype", f"None or a floating-point dtype ({names})", dtype,
                                  kind=TypeError)  # fmt: skip
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(k, c // g, **factory))
        self.bias = nn.Parameter(torch.empty(k, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``nn.Conv2d`` does: Kaiming-uniform weight, uniform bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv1x1(
            x,
            self.weight,
            self.bias,
            stride=self.stride,
            groups=self.groups,
            activation=self.activation,
            residual=residual,
        )

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        if self.activation is not None:
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[2:]) == (1, 1):
            state_dict = {
                **state_dict,
                key: w.reshape(w.shape[0], w.shape[1]),
            }  # (K, C/g, 1, 1) -> (K, C/g)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_conv2d(cls, module: nn.Conv2d, *, activation: str | None = None) -> Conv1x1:
        """A ``Conv1x1`` computing the same as a 1x1 ``nn.Conv2d`` (parameters copied).

        Raises:
            TypeError: ``module`` is not an ``nn.Conv2d``, or its class defines its own
                ``forward`` (timm's ``StdConv2d``).
            ValueError: it is not 1x1 without padding, or has hooks or a normalised or
                parametrised weight.
        """
        if not isinstance(module, nn.Conv2d):
            raise _checks.invalid("module", "an nn.Conv2d", type(module).__name__, kind=TypeError)
        check_convertible("module", module, nn.Conv2d)
        if not is_pointwise(module.kernel_size):
            raise _checks.invalid("module", "an nn.Conv2d with kernel_size=(1, 1)", module)
        if tuple(module.padding) != (0, 0) or not isinstance(module.padding, tuple):
            raise _checks.invalid("module", "an nn.Conv2d with padding=0", module)
        return _copy_of(
            cls, module, module.in_channels, module.out_channels, activation,
            stride=tuple(module.stride), groups=module.groups,
        )  # fmt: skip

    @classmethod
    def from_linear(cls, module: nn.Linear, *, activation: str | None = None) -> Conv1x1:
        """A ``Conv1x1`` applying an ``nn.Linear`` at every pixel (parameters copied).

        Raises:
            TypeError: ``module`` is not an ``nn.Linear``, or its class defines its own
                ``forward``.
            ValueError: it has hooks or a normalised or parametrised weight.
        """
        if not isinstance(module, nn.Linear):
            raise _checks.invalid("module", "an nn.Linear", type(module).__name__, kind=TypeError)
        check_convertible("module", module, nn.Linear)
        return _copy_of(cls, module, module.in_features, module.out_features, activation)

    def to_conv2d(self) -> nn.Module:
        """The equivalent ``nn.Conv2d(kernel_size=1)``, followed by the activation
        module in an ``nn.Sequential`` when this layer has one."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            1,
            stride=self.stride,
            groups=self.groups,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight.reshape(conv.weight.shape))  # (K, C/g) -> (K, C/g, 1, 1)
            if self.bias is not None and conv.bias is not None:
                conv.bias.copy_(self.bias)
        return (
            conv
            if self.activation is None
            else nn.Sequential(conv, activation_module(self.activation))
        )

    def to_linear(self) -> nn.Module:
        """The equivalent ``nn.Linear`` over the channel axis of an ``(..., C)`` input
        (stride 1 and groups 1 only), followed by the activation when there is one."""
        if self.stride != (1, 1) or self.groups != 1:
            raise ValueError(
                "Invalid value for argument `self`. Expected a Conv1x1 with stride=1 and "
                f"groups=1 to convert to nn.Linear. Received stride={self.stride}, "
                f"groups={self.groups}."
            )
        lin = nn.Linear(
            self.in_channels,
            self.out_channels,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        lin.load_state_dict(self.state_dict())
        return (
            lin
            if self.activation is None
            else nn.Sequential(lin, activation_module(self.activation))
        )


def _padding(value: object, kernel_size: tuple[int, int]) -> tuple[int, int]:
    """``None`` -> "same" padding for odd kernels; else a non-negative int or pair."""
    if value is None:
        return (same_padding(kernel_size[0])[0], same_padding(kernel_size[1])[0])
    pairs = value if isinstance(value, (tuple, list)) else (value, value)
    if (
        len(pairs) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in pairs)
        or min(pairs) < 0
    ):
        raise _checks.invalid("padding", "None, a non-negative int or a pair of them", value)
    return (int(pairs[0]), int(pairs[1]))


def norm_module(norm: str | None, channels: int) -> nn.BatchNorm2d | None:
    """The normalisation layer called ``norm`` over ``channels`` (``None`` for no norm)."""
    if norm is None:
        return None
    _checks.choice("norm", norm, NORMS)
    return nn.BatchNorm2d(channels)


class ConvNormAct(nn.Sequential):
    """Convolution -> normalisation -> activation, the unit most CNNs are built from.

    A 1x1 kernel without padding runs through ``Conv1x1`` (``onebyone.conv1x1``);
    other kernels through ``nn.Conv2d``. Without a norm, a 1x1 convolution fuses
    its activation into the op's epilogue. The children are numbered like
    torchvision's ``Conv2dNormActivation`` (``0`` conv, ``1`` norm, then the
    activation), so state-dict keys match it.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``.
        padding: ``None`` ("same" for odd kernels: ``(k - 1) // 2``) or an int or pair.
        groups: channel groups (``groups == C == K`` is depthwise).
        bias: learn a bias; default ``None`` means "only without a norm".
        norm: ``"batch"`` (``nn.BatchNorm2d``, eps 1e-5, momentum 0.1) or ``None``.
        activation: ``None`` or a name from ``onebyone.ACTIVATIONS``.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')`` with
        ``H' = (H + 2 * ph - kh) // sh + 1`` (and likewise ``W'``).

    Example:
        >>> import torch
        >>> from onebyone.nn import ConvNormAct
        >>> ConvNormAct(64, 32, 1)(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 32, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        bias: bool | None = None,
        norm: str | None = "batch",
        activation: str | None = "relu",
    ) -> None:
        c, k, g = _checks.channels(in_channels, out_channels, groups)
        ksize = _checks.pair("kernel_size", kernel_size)
        strides = _checks.pair("stride", stride)
        pads = _padding(padding, ksize)
        if norm is not None:
            _checks.choice("norm", norm, NORMS)
        act = activations.activation(activation)
        if bias is None:
            bias = norm is None
        if not isinstance(bias, bool):
            raise _checks.invalid("bias", "None, True or False", bias, kind=TypeError)
        pointwise = ksize == (1, 1) and pads == (0, 0)
        fuse = pointwise and norm is None
        conv: nn.Module
        if pointwise:
            conv = Conv1x1(
                c, k, stride=strides, groups=g, bias=bias, activation=act if fuse else None
            )
        else:
            conv = nn.Conv2d(c, k, ksize, stride=strides, padding=pads, groups=g, bias=bias)
        layers: list[nn.Module] = [conv]
        bn = norm_module(norm, k)
        if bn is not None:
            layers.append(bn)
        if act is not None and not fuse:
            layers.append(activation_module(act))
        super().__init__(*layers)
        self.in_channels = c
        self.out_channels = k
        self.kernel_size = ksize
        self.stride = strides
        self.padding = pads
        self.groups = g
        self.norm = norm
        self.activation = act

    def __getitem__(self, idx: slice | int) -> nn.Sequential | nn.Module:
        if isinstance(idx, slice):  # a slice is a plain nn.Sequential of the chosen layers
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.padding != _padding(None, self.kernel_size):
            parts.append(f"padding={self.padding}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.norm != "batch":
            parts.append(f"norm={self.norm!r}")
        if self.activation != "relu":
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)


def _copy_of(
    cls: type[Conv1x1],
    module: nn.Conv2d | nn.Linear,
    c: int,
    k: int,
    activation: str | None,
    **geometry: Any,
) -> Conv1x1:
    """A ``cls`` (C -> K) with ``module``'s parameters, device and dtype."""
    w = module.weight
    out = cls(c, k, bias=module.bias is not None, activation=activation,
              device=w.device, dtype=w.dtype, **geometry)  # fmt: skip
    out.load_state_dict(module.state_dict())
    return out
