"""The literature's building blocks, with every 1x1 convolution a ``Conv1x1``.

``ChannelFusion`` (concatenate, then fuse with one 1x1), ``Bottleneck`` (ResNet),
``Inception`` (GoogLeNet), ``MlpConv`` (Network-in-Network),
``DepthwiseSeparable`` (MobileNet v1), ``InvertedResidual`` (MobileNetV2),
``SqueezeExcite``, ``Fire`` (SqueezeNet) and ``ShuffleUnit`` (ShuffleNet v1),
plus ``channel_shuffle``. Module names inside ``Bottleneck``,
``InvertedResidual`` and ``Fire`` follow torchvision's, so the models built
from them share torchvision's state-dict keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from onebyone import _checks, activations
from onebyone.geometry import same_padding
from onebyone.nn.conv import Conv1x1, ConvNormAct, activation_module, norm_module

__all__ = [
    "BOTTLENECK_VARIANTS",
    "Bottleneck",
    "ChannelFusion",
    "DepthwiseSeparable",
    "Fire",
    "Inception",
    "InvertedResidual",
    "MlpConv",
    "ShuffleUnit",
    "SqueezeExcite",
    "channel_shuffle",
]

BOTTLENECK_VARIANTS: tuple[str, ...] = ("v1.5", "v1")
"""Where a strided ``Bottleneck`` subsamples: ``v1.5`` on the 3x3, ``v1`` on the first 1x1."""

ConvBlock = Callable[[int, int, int], nn.Module]
"""``conv_block(in_channels, out_channels, kernel_size)``: a "same"-padded conv unit."""


def _number(argument: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _checks.invalid(argument, "a number", value, kind=TypeError)
    if not value > minimum:
        raise _checks.invalid(argument, f"a number > {minimum:g}", value)
    return float(value)


def _channel_dim(x: torch.Tensor) -> int:
    """Index of the channel axis of an ``(N, C, H, W)`` or ``(C, H, W)`` tensor."""
    if x.dim() not in (3, 4):
        raise ValueError(
            "Invalid value for argument `x`. Expected a 3-D (C, H, W) or 4-D (N, C, H, W) "
            f"tensor. Received x of shape {tuple(x.shape)}."
        )
    return x.dim() - 3


class ChannelFusion(nn.Module):
    """Concatenate feature maps along channels and fuse them with one 1x1 convolution.

    ``forward(*xs)`` equals ``Conv1x1(sum(in_channels), out_channels)`` applied to
    ``torch.cat(xs, dim=channels)``: every output map is a learned weighted sum of
    all input maps at each pixel.

    Args:
        in_channels: channel count of each input, in order (at least one).
        out_channels: ``K``.
        bias: learn a ``(K,)`` bias.
        activation: ``None`` or a name from ``onebyone.ACTIVATIONS`` (fused).

    Shape:
        ``(N, C_1, H, W), ..., (N, C_m, H, W) -> (N, K, H, W)`` (or all unbatched).

    Example:
        >>> import torch
        >>> from onebyone.nn import ChannelFusion
        >>> fuse = ChannelFusion([32, 64], 64, activation="relu")
        >>> fuse(torch.randn(1, 32, 28, 28), torch.randn(1, 64, 28, 28)).shape
        torch.Size([1, 64, 28, 28])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        *,
        bias: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence):
            raise _checks.invalid(
                "in_channels", "a sequence of positive ints", in_channels, kind=TypeError
            )
        if len(in_channels) == 0:
            raise _checks.invalid("in_channels", "at least one channel count", in_channels)
        for c in in_channels:
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise _checks.invalid("in_channels", "a sequence of positive ints", in_channels)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = _checks.positive_int("out_channels", out_channels)
        self.fuse = Conv1x1(
            sum(self.in_channels), self.out_channels, bias=bias, activation=activation
        )

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.in_channels):
            raise ValueError(
                f"Invalid value for argument `xs`. Expected {len(self.in_channels)} feature maps "
                f"with {list(self.in_channels)} channels. Received {len(xs)} tensors."
            )
        dim = _channel_dim(xs[0])
        shapes = [tuple(x.shape) for x in xs]
        channels = [s[dim] if len(s) == len(shapes[0]) else None for s in shapes]
        others = {s[:dim] + s[dim + 1 :] for s in shapes}  # batch, height, width
        if channels != list(self.in_channels) or len(others) != 1:
            raise ValueError(
                "Invalid value for argument `xs`. Expected feature maps with "
                f"{list(self.in_channels)} channels and equal batch, height and width. "
                f"Received tensors of shapes {shapes}."
            )
        return self.fuse(torch.cat(xs, dim=dim))  # (N, sum(C_i), H, W) -> (N, K, H, W)

    def extra_repr(self) -> str:
        parts = [f"{list(self.in_channels)}, {self.out_channels}"]
        if self.fuse.bias is None:
            parts.append("bias=False")
        if self.fuse.activation is not None:
            parts.append(f"activation={self.fuse.activation!r}")
        return ", ".join(parts)


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1 reduce -> 3x3 -> 1x1 expand, plus a shortcut.

    The shortcut is the identity when shapes match, else a projection
    (strided 1x1 convolution + norm), named ``downsample`` as in torchvision.
    ``variant="v1.5"`` (torchvision) puts the stride on the 3x3; ``"v1"`` (the
    paper) on the first 1x1. With ``norm=None`` the 1x1 convolutions carry
    biases and fuse their activation, and the last one fuses the residual add.

    Args:
        in_channels: ``C``.
        mid_channels: width of the 3x3 (``C_mid``).
        out_channels: ``K``.
        stride: int or ``(sh, sw)`` subsampling.
        groups: groups of the 3x3 convolution (ResNeXt).
        variant: ``"v1.5"`` or ``"v1"``.
        norm: ``"batch"`` or ``None``.
        activation: name from ``onebyone.ACTIVATIONS`` or ``None``.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H / sh), ceil(W / sw))``.

    Example:
        >>> import torch
        >>> from onebyone.nn import Bottleneck
        >>> Bottleneck(256, 64, 256)(torch.randn(1, 256, 14, 14)).shape
        torch.Size([1, 256, 14, 14])
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        variant: str = "v1.5",
        norm: str | None = "batch",
        activation: str | None = "relu",
    ) -> None:
        super().__init__()
        c = _checks.positive_int("in_channels", in_channels)
        m = _checks.positive_int("mid_channels", mid_channels)
        k = _checks.positive_int("out_channels", out_channels)
        g = _checks.positive_int("groups", groups)
        if m % g:
            raise _checks.invalid("groups", f"a divisor of mid_channels={m}", groups)
        strides = _checks.pair("stride", stride)
        _checks.choice("variant", variant, BOTTLENECK_VARIANTS)
        act = activations.activation(activation)
        bn1, bn2, bn3 = norm_module(norm, m), norm_module(norm, m), norm_module(norm, k)
        bias = norm is None
        fused = act if norm is None else None
        s1, s2 = (strides, (1, 1)) if variant == "v1" else ((1, 1), strides)
        self.conv1 = Conv1x1(c, m, stride=s1, bias=bias, activation=fused)
        self.bn1 = bn1
        self.conv2 = nn.Conv2d(m, m, 3, stride=s2, padding=1, groups=g, bias=bias)
        self.bn2 = bn2
        self.conv3 = Conv1x1(m, k, bias=bias, activation=fused)
        self.bn3 = bn3
        self.act = activation_module(act)
        self.downsample: nn.Module | None = None
        if c != k or strides != (1, 1):
            proj: list[nn.Module] = [Conv1x1(c, k, stride=strides, bias=bias)]
            bn = norm_module(norm, k)
            if bn is not None:
                proj.append(bn)
            self.downsample = nn.Sequential(*proj)
        self.in_channels, self.mid_channels, self.out_channels = c, m, k
        self.stride, self.groups, self.variant = strides, g, variant
        self.norm, self.activation = norm, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.bn1 is None or self.bn2 is None or self.bn3 is None:
            # no norm: each 1x1 fuses its activation; the last also fuses the residual add
            out = self.act(self.conv2(self.conv1(x)))
            return self.conv3(out, residual=identity)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.mid_channels}, {self.out_channels}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.variant != "v1.5":
            parts.append(f"variant={self.variant!r}")
        if self.norm != "batch":
            parts.append(f"norm={self.norm!r}")
        if self.activation != "relu":
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)


def _default_conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    return ConvNormAct(in_channels, out_channels, kernel_size)


class Inception(nn.Module):
    """GoogLeNet's Inception module: four parallel branches, concatenated.

    ``branch1``: 1x1. ``branch2``: 1x1 reduce -> 3x3. ``branch3``: 1x1 reduce ->
    ``branch3_kernel`` x ``branch3_kernel`` (5 in the paper; torchvision's
    GoogLeNet uses 3). ``branch4``: 3x3 max-pool (stride 1) -> 1x1 projection.
    The 1x1 reductions are what make the module affordable.

    Args:
        in_channels: ``C``.
        ch1x1: the paper's Table 1 column "#1x1" (the 1x1 branch).
        ch3x3red: "#3x3 reduce" (the 1x1 before the 3x3).
        ch3x3: "#3x3".
        ch5x5red: "#5x5 reduce" (the 1x1 before the third branch's kernel).
        ch5x5: "#5x5".
        pool_proj: "pool proj" (the 1x1 after the max-pool).
        branch3_kernel: odd kernel size of the third branch (default 5).
        conv_block: ``conv_block(in_channels, out_channels, kernel_size)`` building one
            "same"-padded conv unit; default ``ConvNormAct`` (conv, batch norm, ReLU).

    Shape:
        ``(N, C, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``.

    Example:
        >>> import torch
        >>> from onebyone.nn import Inception
        >>> Inception(192, 64, 96, 128, 16, 32, 32)(torch.randn(1, 192, 28, 28)).shape
        torch.Size([1, 256, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        branch3_kernel: int = 5,
        conv_block: ConvBlock | None = None,
    ) -> None:
        super().__init__()
        sizes = {
            "in_channels": in_channels,
            "ch1x1": ch1x1,
            "ch3x3red": ch3x3red,
            "ch3x3": ch3x3,
            "ch5x5red": ch5x5red,
            "ch5x5": ch5x5,
            "pool_proj": pool_proj,
        }
        c, c1, c3r, c3, c5r, c5, cp = (_checks.positive_int(k, v) for k, v in sizes.items())
        k5 = _checks.positive_int("branch3_kernel", branch3_kernel)
        if k5 % 2 == 0:
            raise _checks.invalid("branch3_kernel", "an odd kernel size", branch3_kernel)
        block = _default_conv_block if conv_block is None else conv_block
        if not callable(block):
            raise _checks.invalid("conv_block", "None or a callable", conv_block, kind=TypeError)
        self.branch1 = block(c, c1, 1)
        self.branch2 = nn.Sequential(block(c, c3r, 1), block(c3r, c3, 3))
        self.branch3 = nn.Sequential(block(c, c5r, 1), block(c5r, c5, k5))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), block(c, cp, 1)
        )
        self.in_channels, self.out_channels = c, c1 + c3 + c5 + cp
        self.channels = (c1, c3r, c3, c5r, c5, cp)
        self.branch3_kernel = k5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, " + ", ".join(str(v) for v in self.channels)]
        if self.branch3_kernel != 5:
            parts.append(f"branch3_kernel={self.branch3_kernel}")
        return ", ".join(parts)


class MlpConv(nn.Sequential):
    """Network-in-Network's mlpconv layer: a kxk convolution, then 1x1 convolutions.

    Each 1x1 layer is a small fully connected network applied at every pixel
    ("cascaded cross channel parametric pooling"); every layer has a bias and an
    activation. Children: ``0`` the kxk conv, ``1`` its activation, then one
    ``Conv1x1`` (activation fused) per further entry of ``channels``.

    Args:
        in_channels: ``C``.
        channels: output channels of the kxk conv and of each following 1x1
            (e.g. ``(192, 160, 96)``); the last entry is ``K``.
        kernel_size: int or ``(kh, kw)`` of the first convolution.
        stride: its stride.
        padding: its padding; ``None`` means "same" (``(k - 1) // 2``).
        activation: name from ``onebyone.ACTIVATIONS`` (default ``"relu"``) or ``None``.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')`` with ``H' = (H + 2 * ph - kh) // sh + 1``.

    Example:
        >>> import torch
        >>> from onebyone.nn import MlpConv
        >>> MlpConv(3, (192, 160, 96), 5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 96, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        activation: str | None = "relu",
    ) -> None:
        c = _checks.positive_int("in_channels", in_channels)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise _checks.invalid(
                "channels", "a sequence of positive ints", channels, kind=TypeError
            )
        if len(channels) == 0:
            raise _checks.invalid("channels", "at least one channel count", channels)
        widths = [_checks.positive_int("channels", w) for w in channels]
        act = activations.activation(activation)
        first = ConvNormAct(
            c, widths[0], kernel_size, stride=stride, padding=padding, norm=None, activation=act
        )
        layers: list[nn.Module] = list(first)
        for a, b in itertools.pairwise(widths):
            layers.append(Conv1x1(a, b, activation=act))
        super().__init__(*layers)
        self.in_channels, self.channels = c, tuple(widths)
        self.out_channels = widths[-1]
        self.kernel_size, self.stride, self.padding = first.kernel_size, first.stride, first.padding
        self.activation = act

    def __getitem__(self, idx: slice | int) -> nn.Sequential | nn.Module:
        if isinstance(idx, slice):  # a slice is a plain nn.Sequential of the chosen layers
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.channels}, kernel_size={self.kernel_size}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.padding != tuple(same_padding(k)[0] for k in self.kernel_size):
            parts.append(f"padding={self.padding}")
        if self.activation != "relu":
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)


class DepthwiseSeparable(nn.Module):
    """MobileNet v1's unit: depthwise kxk (spatial) then pointwise 1x1 (across channels).

    Each conv is followed by a norm and the activation. The 1x1 does the
    channel mixing a full kxk convolution would do, at ``1/K + 1/k^2`` of its cost.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        stride: stride of the depthwise convolution.
        kernel_size: depthwise kernel size (default 3).
        norm: ``"batch"`` or ``None``.
        activation: name from ``onebyone.ACTIVATIONS`` (default ``"relu"``) or ``None``.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H / sh), ceil(W / sw))`` for odd kernels.

    Example:
        >>> import torch
        >>> from onebyone.nn import DepthwiseSeparable
        >>> DepthwiseSeparable(32, 64, stride=2)(torch.randn(1, 32, 56, 56)).shape
        torch.Size([1, 64, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int | tuple[int, int] = 1,
        kernel_size: int = 3,
        norm: str | None = "batch",
        activation: str | None = "relu",
    ) -> None:
        super().__init__()
        c = _checks.positive_int("in_channels", in_channels)
        k = _checks.positive_int("out_channels", out_channels)
        self.depthwise = ConvNormAct(
            c, c, kernel_size, stride=stride, groups=c, norm=norm, activation=activation
        )
        self.pointwise = ConvNormAct(c, k, 1, norm=norm, activation=activation)
        self.in_channels, self.out_channels = c, k
        self.stride, self.kernel_size = self.depthwise.stride, self.depthwise.kernel_size
        self.norm, self.activation = norm, self.depthwise.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.kernel_size != (3, 3):
            parts.append(f"kernel_size={self.kernel_size}")
        if self.norm != "batch":
            parts.append(f"norm={self.norm!r}")
        if self.activation != "relu":
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand -> depthwise 3x3 -> linear 1x1 project.

    The residual is added when ``stride == 1`` and ``in_channels ==
    out_channels``. The projection has no activation (the "linear bottleneck").
    ``self.conv`` is numbered as in torchvision (expansion omitted when
    ``expand_ratio == 1``), so the keys match.

    Args:
        in_channels: ``C``.
        out_channels: ``K``.
        stride: stride of the depthwise convolution.
        expand_ratio: hidden width is ``round(C * expand_ratio)``.
        activation: activation after the expansion and the depthwise conv (default ``"relu6"``).

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H / sh), ceil(W / sw))``.

    Example:
        >>> import torch
        >>> from onebyone.nn import InvertedResidual
        >>> InvertedResidual(24, 24, expand_ratio=6)(torch.randn(1, 24, 56, 56)).shape
        torch.Size([1, 24, 56, 56])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int | tuple[int, int] = 1,
        expand_ratio: float = 6,
        activation: str | None = "relu6",
    ) -> None:
        super().__init__()
        c = _checks.positive_int("in_channels", in_channels)
        k = _checks.positive_int("out_channels", out_channels)
        strides = _checks.pair("stride", stride)
        t = _number("expand_ratio", expand_ratio)
        act = activations.activation(activation)
        hidden = round(c * t)
        if hidden < 1:
            raise _checks.invalid(
                "expand_ratio", f"a ratio giving >= 1 hidden channel from {c}", expand_ratio
            )
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(ConvNormAct(c, hidden, 1, activation=act))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=strides, groups=hidden, activation=act),
            Conv1x1(hidden, k, bias=False),
            nn.BatchNorm2d(k),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = strides == (1, 1) and c == k
        self.in_channels, self.out_channels, self.hidden_channels = c, k, hidden
        self.stride, self.expand_ratio, self.activation = strides, expand_ratio, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}"]
        if self.stride != (1, 1):
            parts.append(f"stride={self.stride}")
        if self.expand_ratio != 6:
            parts.append(f"expand_ratio={self.expand_ratio}")
        if self.activation != "relu6":
            parts.append(f"activation={self.activation!r}")
        return ", ".join(parts)


SE_GATES: tuple[str, ...] = ("sigmoid", "hardsigmoid")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: reweight channels by a gate computed from their means.

    ``x * gate(fc2(act(fc1(mean_hw(x)))))`` where ``fc1`` (reduce) and ``fc2``
    (expand) are 1x1 convolutions on the pooled ``(N, C, 1, 1)`` map.

    Args:
        channels: ``C``.
        squeeze_channels: width of the bottleneck (e.g. ``C // 16``).
        activation: activation after the reduction (default ``"relu"``).
        gate: ``"sigmoid"`` (fused into ``fc2``) or ``"hardsigmoid"``.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``.

    Example:
        >>> import torch
        >>> from onebyone.nn import SqueezeExcite
        >>> SqueezeExcite(64, 16)(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        *,
        activation: str | None = "relu",
        gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        c = _checks.positive_int("channels", channels)
        s = _checks.positive_int("squeeze_channels", squeeze_channels)
        _checks.choice("gate", gate, SE_GATES)
        self.fc1 = Conv1x1(c, s, activation=activation)
        self.fc2 = Conv1x1(s, c, activation="sigmoid" if gate == "sigmoid" else None)
        self.channels, self.squeeze_channels, self.gate = c, s, gate
        self.activation = self.fc1.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        s = self.fc2(self.fc1(s))
        if self.gate == "hardsigmoid":
            s = F.hardsigmoid(s)
        return x * s

    def extra_repr(self) -> str:
        parts = [f"{self.channels}, {self.squeeze_channels}"]
        if self.activation != "relu":
            parts.append(f"activation={self.activation!r}")
        if self.gate != "sigmoid":
            parts.append(f"gate={self.gate!r}")
        return ", ".join(parts)


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1x1 squeeze, then parallel 1x1 and 3x3 expands.

    Every convolution has a bias and a ReLU (fused into the 1x1 convolutions).
    Names follow torchvision: ``squeeze``, ``expand1x1``, ``expand3x3``.

    Args:
        in_channels: ``C``.
        squeeze_channels: ``s1x1``.
        expand1x1_channels: ``e1x1``.
        expand3x3_channels: ``e3x3``.

    Shape:
        ``(N, C, H, W) -> (N, e1x1 + e3x3, H, W)``.

    Example:
        >>> import torch
        >>> from onebyone.nn import Fire
        >>> Fire(96, 16, 64, 64)(torch.randn(1, 96, 55, 55)).shape
        torch.Size([1, 128, 55, 55])
    """

    def __init__(
        self,
        in_channels: int,
        squeeze_channels: int,
        expand1x1_channels: int,
        expand3x3_channels: int,
    ) -> None:
        super().__init__()
        c = _checks.positive_int("in_channels", in_channels)
        s = _checks.positive_int("squeeze_channels", squeeze_channels)
        e1 = _checks.positive_int("expand1x1_channels", expand1x1_channels)
        e3 = _checks.positive_int("expand3x3_channels", expand3x3_channels)
        self.squeeze = Conv1x1(c, s, activation="relu")
        self.expand1x1 = Conv1x1(s, e1, activation="relu")
        self.expand3x3 = nn.Conv2d(s, e3, 3, padding=1)
        self.in_channels, self.out_channels = c, e1 + e3
        self.channels = (s, e1, e3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), F.relu(self.expand3x3(s))], dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, " + ", ".join(str(v) for v in self.channels)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` groups.

    Output channel ``j * groups + i`` is input channel ``i * (C // groups) + j``,
    so each group of the next grouped convolution sees channels from every
    group of the previous one. One copy: a strided view of ``x`` is written
    once into a fresh tensor of ``x``'s memory format.

    Args:
        x: ``(N, C, H, W)``, ``C`` divisible by ``groups``.
        groups: number of groups.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, same memory format.

    Example:
        >>> import torch
        >>> from onebyone.nn import channel_shuffle
        >>> channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 2).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    g = _checks.positive_int("groups", groups)
    if x.dim() != 4:
        raise ValueError(
            "Invalid value for argument `x`. Expected a 4-D (N, C, H, W) tensor. "
            f"Received x of shape {tuple(x.shape)}."
        )
    n, c, h, w = x.shape
    if c % g:
        raise _checks.invalid("groups", f"a divisor of x's {c} channels", groups)
    out = torch.empty_like(x)  # keeps x's memory format
    grouped = x.reshape(n, g, c // g, h, w)  # (N, g, C/g, H, W), a view for dense x
    out.view(n, c // g, g, h, w).copy_(grouped.transpose(1, 2))  # (N, C/g, g, H, W): one copy
    return out


class ShuffleUnit(nn.Module):
    """ShuffleNet v1's unit: grouped 1x1 -> channel shuffle -> depthwise 3x3 -> grouped 1x1.

    With ``stride == 1`` the output is ``relu(x + branch(x))``; with a stride the
    shortcut is a 3x3 average pool and the output ``cat(pool(x), relu(branch(x)))``,
    so the branch produces ``out_channels - in_channels`` maps. The shuffle comes
    right after the first 1x1 (the paper's Figure 2); the depthwise conv is
    per-channel, so shuffling after it instead is the same network up to an
    ordering of its channels.

    Args:
        in_channels: ``C``.
        out_channels: ``K`` (equal to ``C`` when ``stride == 1``).
        groups: groups of both 1x1 convolutions (1, 2, 3, 4, 8 in the paper).
        stride: stride of the depthwise conv and of the pooled shortcut.
        mid_channels: bottleneck width; default ``K // 4``.
        group_first: group the first 1x1 (the paper does not for the first unit of stage 2).

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H / s), ceil(W / s))``.

    Example:
        >>> import torch
        >>> from onebyone.nn import ShuffleUnit
        >>> ShuffleUnit(240, 480, groups=3, stride=2)(torch.randn(1, 240, 28, 28)).shape
        torch.Size([1, 480, 14, 14])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        groups: int = 3,
        stride: int = 1,
        mid_channels: int | None = None,
        group_first: bool = True,
    ) -> None:
        super().__init__()
        c = _checks.positive_int("in_channels", in_channels)
        k = _checks.positive_int("out_channels", out_channels)
        g = _checks.positive_int("groups", groups)
        s = _checks.positive_int("stride", stride)
        m = k // 4 if mid_channels is None else _checks.positive_int("mid_channels", mid_channels)
        if not isinstance(group_first, bool):
            raise _checks.invalid("group_first", "True or False", group_first, kind=TypeError)
        if s == 1 and c != k:
            raise _checks.invalid(
                "out_channels", f"in_channels={c} when stride=1 (the shortcut is the identity)", k
            )
        branch = k if s == 1 else k - c
        if branch < 1:
            raise _checks.invalid("out_channels", f"more than in_channels={c} when stride > 1", k)
        _checks.channels(c, m, g if group_first else 1)
        _checks.channels(m, branch, g)
        self.compress = ConvNormAct(c, m, 1, groups=g if group_first else 1)
        self.depthwise = ConvNormAct(m, m, 3, stride=s, groups=m, activation=None)
        self.expand = ConvNormAct(m, branch, 1, groups=g, activation=None)
        self.shortcut = nn.AvgPool2d(3, stride=s, padding=1) if s > 1 else None
        self.in_channels, self.out_channels, self.mid_channels = c, k, m
        self.groups, self.stride, self.group_first = g, s, group_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compress(x)
        if self.groups > 1:
            y = channel_shuffle(y, self.groups)
        y = self.expand(self.depthwise(y))
        if self.shortcut is None:
            return F.relu(x + y)
        return torch.cat([self.shortcut(x), F.relu(y)], dim=1)  # (N, C + (K - C), H', W')

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}"]
        if self.groups != 3:
            parts.append(f"groups={self.groups}")
        if self.stride != 1:
            parts.append(f"stride={self.stride}")
        if self.mid_channels != self.out_channels // 4:
            parts.append(f"mid_channels={self.mid_channels}")
        if not self.group_first:
            parts.append("group_first=False")
        return ", ".join(parts)
