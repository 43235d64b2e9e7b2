"""Shape arithmetic of convolutions, once: output sizes and a pointwise layer's geometry.

``conv_output_size`` is the one formula for a convolution's output length along
one axis (any kernel, stride, padding, dilation); a 1x1 kernel without padding
reduces it to ``ceil(size / stride)``. ``geometry`` checks the shapes of one
pointwise convolution and returns its sizes as a ``ConvGeometry``. Nothing here
imports torch or NumPy, so the NumPy op and the PyTorch op share it; sizes may
be symbolic (``torch.SymInt`` under ``torch.export``), which are never cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from onebyone import _checks

__all__ = [
    "ConvGeometry",
    "conv_output_size",
    "geometry",
    "is_pointwise",
    "pointwise_output_size",
    "same_padding",
]


def conv_output_size(
    size: Any, kernel: int = 1, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Any:
    """Output length of a convolution along one axis: ``(size + 2p - d(k-1) - 1) // s + 1``.

    Example:
        >>> conv_output_size(224, kernel=7, stride=2, padding=3), conv_output_size(7, stride=2)
        (112, 4)
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """Padding ``(before, after)`` along one axis that keeps its length at stride 1.

    The window reaches ``dilation * (kernel - 1)`` positions beyond its first; that
    reach is split as PyTorch's ``padding="same"`` splits it, the odd one after
    (right, bottom). A layer that takes one symmetric padding per axis (an
    ``nn.Conv2d`` with an int) uses ``before``: the length is kept for odd reaches
    and shrinks by one for even kernels.

    Example:
        >>> same_padding(3), same_padding(4), same_padding(3, dilation=2)
        ((1, 1), (1, 2), (2, 2))
    """
    reach = dilation * (kernel - 1)
    return reach // 2, reach - reach // 2


def pointwise_output_size(size: Any, stride: int) -> Any:
    """``conv_output_size`` of a 1x1 kernel without padding: ``ceil(size / stride)``."""
    return conv_output_size(size, 1, stride, 0, 1)


class ConvGeometry(NamedTuple):
    """The sizes of one pointwise convolution, derived from validated shapes.

    ``batched`` is False for an unbatched ``(C, H, W)`` input; the sizes then
    describe it with ``batch == 1``. (A NamedTuple: built on every call, and
    cheaper to build than a dataclass.)
    """

    batch: Any
    in_channels: int
    out_channels: int
    groups: int
    height: Any
    width: Any
    out_height: Any
    out_width: Any
    batched: bool

    def output_shape(self, data_format: str) -> tuple[Any, ...]:
        """The output shape in ``data_format``, unbatched if the input was."""
        if data_format == "NCHW":
            shape: tuple[Any, ...] = (self.out_channels, self.out_height, self.out_width)
        else:
            shape = (self.out_height, self.out_width, self.out_channels)
        return (self.batch, *shape) if self.batched else shape

    @property
    def output_pixels(self) -> Any:
        """``N * H' * W'``: the rows of the GEMM."""
        return self.batch * self.out_height * self.out_width


_GEOMETRIES: dict[tuple[object, ...], ConvGeometry] = {}
_MAX_GEOMETRIES = 512


def geometry(
    x_shape: Sequence[Any],
    weight_shape: Sequence[Any],
    bias_shape: Sequence[Any] | None,
    *,
    stride: tuple[int, int],
    groups: object,
    data_format: str = "NCHW",
) -> ConvGeometry:
    """Check the shapes of a pointwise convolution and return its sizes.

    Args:
        x_shape: ``(N, C, H, W)`` or ``(C, H, W)`` (``NHWC``: ``(N, H, W, C)`` or ``(H, W, C)``).
        weight_shape: ``(K, C/groups)`` or ``(K, C/groups, 1, 1)``.
        bias_shape: ``(K,)`` or ``None``.
        stride: normalised ``(sh, sw)``.
        groups: number of channel groups.
        data_format: ``"NCHW"`` or ``"NHWC"``.

    Shapes that passed once are remembered (a layer sees the same ones on every
    call); only plain ``int`` sizes and groups are, so a bool or a float groups is
    always refused and symbolic sizes are checked every time.

    Example:
        >>> geometry((2, 64, 7, 7), (32, 64), None, stride=(2, 2), groups=1).output_shape("NCHW")
        (2, 32, 4, 4)
    """
    if type(groups) is not int or not _plain(x_shape) or not _plain(weight_shape):
        return _geometry(x_shape, weight_shape, bias_shape, stride, groups, data_format)
    key = (tuple(x_shape), tuple(weight_shape), bias_shape and tuple(bias_shape), stride,
           groups, data_format)  # fmt: skip
    geo = _GEOMETRIES.get(key)
    if geo is None:
        geo = _geometry(x_shape, weight_shape, bias_shape, stride, groups, data_format)
        _checks.remember(_GEOMETRIES, key, geo, _MAX_GEOMETRIES)
    return geo


def _plain(shape: Sequence[Any]) -> bool:
    return all(type(d) is int for d in shape)


def _geometry(
    x_shape: Sequence[Any],
    weight_shape: Sequence[Any],
    bias_shape: Sequence[Any] | None,
    stride: tuple[int, int],
    groups: object,
    data_format: str,
) -> ConvGeometry:
    g = _checks.positive_int("groups", groups)
    layout = "(N, C, H, W) or (C, H, W)" if data_format == "NCHW" else "(N, H, W, C) or (H, W, C)"
    if len(x_shape) not in (3, 4):
        raise ValueError(
            f"Invalid value for argument `x`. Expected a 3-D or 4-D array {layout}. "
            f"Received x of shape {tuple(x_shape)}."
        )
    batched = len(x_shape) == 4
    full = tuple(x_shape) if batched else (1, *x_shape)
    if data_format == "NCHW":
        n, c, h, w = full
    else:
        n, h, w, c = full
    if len(weight_shape) not in (2, 4) or (
        len(weight_shape) == 4 and tuple(weight_shape[2:]) != (1, 1)
    ):
        raise ValueError(
            "Invalid value for argument `weight`. Expected a 2-D (K, C/groups) or "
            f"4-D (K, C/groups, 1, 1) weight. Received weight of shape {tuple(weight_shape)}."
        )
    k, cg = int(weight_shape[0]), int(weight_shape[1])
    c = int(c)
    if c % g:
        raise _checks.invalid("groups", f"a divisor of the input's {c} channels", groups)
    if k % g:
        raise _checks.invalid("groups", f"a divisor of the weight's {k} output channels", groups)
    if cg * g != c:
        raise ValueError(
            f"Invalid value for argument `weight`. Expected {c // g} input channels per group "
            f"(x has {c} channels, groups={g}), i.e. shape ({k}, {c // g}). "
            f"Received weight of shape {tuple(weight_shape)}."
        )
    if k == 0:
        raise ValueError(
            "Invalid value for argument `weight`. Expected at least one output channel. "
            f"Received weight of shape {tuple(weight_shape)}."
        )
    if bias_shape is not None and len(bias_shape) != 1:
        raise ValueError(
            f"Invalid value for argument `bias`. Expected a 1-D bias of shape ({k},). "
            f"Received bias of shape {tuple(bias_shape)}."
        )
    if bias_shape is not None and tuple(bias_shape) != (k,):
        raise ValueError(
            f"Invalid value for argument `bias`. Expected shape ({k},), one value per output "
            f"channel. Received bias of shape {tuple(bias_shape)}."
        )
    sh, sw = stride
    return ConvGeometry(
        batch=n,
        in_channels=c,
        out_channels=k,
        groups=g,
        height=h,
        width=w,
        out_height=pointwise_output_size(h, sh),
        out_width=pointwise_output_size(w, sw),
        batched=batched,
    )


def is_pointwise(kernel_size: Any, padding: Any = 0) -> bool:
    """Whether a convolution is a 1x1 (pointwise) one: every kernel extent 1, no padding.

    Stride only subsamples the pixels a pointwise layer reads, and dilation spaces taps a
    1x1 kernel does not have, so neither matters. Padding does: a padded 1x1 adds a
    border of bias values. ``padding`` may be an int, a sequence or a string (``"valid"``
    pads nothing; ``"same"`` pads nothing around a 1x1 kernel).

    Example:
        >>> is_pointwise((1, 1)), is_pointwise((3, 3)), is_pointwise(1, padding=(1, 1))
        (True, False, False)
    """
    sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    if not sizes or any(int(k) != 1 for k in sizes):
        return False
    if isinstance(padding, str):
        return padding in ("valid", "same")
    pads = (padding,) if isinstance(padding, int) else tuple(padding)
    return not any(int(p) for p in pads)
