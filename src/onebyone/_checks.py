"""Argument validation shared by every backend.

Every check raises ``ValueError`` or ``TypeError`` whose message names the
argument, what was expected and what was received, in the form::

    Invalid value for argument `stride`. Expected a positive int or a pair of
    positive ints. Received stride=0.

Nothing here imports torch or NumPy: the checks work on plain shapes and
Python values so the NumPy op and the PyTorch op share them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "relu6",
    "leaky_relu",
    "silu",
    "gelu",
    "hardswish",
    "sigmoid",
    "tanh",
)
"""Activation names accepted by every fused epilogue (``None`` means identity)."""

DATA_FORMATS: tuple[str, ...] = ("NCHW", "NHWC")


def invalid(
    argument: str, expected: str, received: object, *, kind: type = ValueError
) -> Exception:
    """Build the house-style error for one bad argument."""
    return kind(
        f"Invalid value for argument `{argument}`. Expected {expected}. "
        f"Received {argument}={received!r}."
    )


def _is_int(value: object) -> bool:
    # bool is an int subclass but never a sensible size; numpy integers expose __index__.
    if isinstance(value, bool):
        return False
    try:
        value.__index__()  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False
    return True


def positive_int(argument: str, value: object) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1."""
    if not _is_int(value):
        raise invalid(argument, "a positive int", value, kind=TypeError)
    result = int(value)  # type: ignore[call-overload]
    if result < 1:
        raise invalid(argument, "a positive int (>= 1)", value)
    return result


def pair(argument: str, value: object) -> tuple[int, int]:
    """Normalise an int or a pair of ints (each >= 1) to ``(height, width)``."""
    # the common forms first, cheaply: a plain int, or an already normal pair
    if type(value) is int and value >= 1:
        return (value, value)
    if type(value) is tuple and len(value) == 2:
        h, w = value
        if type(h) is int and type(w) is int and h >= 1 and w >= 1:
            return value
    if _is_int(value):
        v = positive_int(argument, value)
        return (v, v)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise invalid(argument, "a positive int or a pair of positive ints", value)
        if not all(_is_int(v) for v in value):
            raise invalid(
                argument, "a positive int or a pair of positive ints", value, kind=TypeError
            )
        h, w = (int(v) for v in value)
        if h < 1 or w < 1:
            raise invalid(argument, "a positive int or a pair of positive ints (>= 1)", value)
        return (h, w)
    raise invalid(argument, "a positive int or a pair of positive ints", value, kind=TypeError)


def activation(value: object) -> str | None:
    """Validate an activation name; ``None`` means no activation."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(
            "activation", f"None or one of {', '.join(ACTIVATIONS)}", value, kind=TypeError
        )
    name = value.lower()
    if name not in ACTIVATIONS:
        raise invalid("activation", f"None or one of {', '.join(ACTIVATIONS)}", value)
    return name


def data_format(value: object) -> str:
    """Validate ``data_format`` (``"NCHW"`` or ``"NHWC"``, any case)."""
    if not isinstance(value, str) or value.upper() not in DATA_FORMATS:
        raise invalid("data_format", "'NCHW' or 'NHWC'", value)
    return value.upper()


def choice(argument: str, value: object, options: Sequence[str]) -> str:
    """Validate that ``value`` is one of the strings in ``options``."""
    if not isinstance(value, str) or value not in options:
        quoted = ", ".join(repr(o) for o in options)
        raise invalid(argument, f"one of {quoted}", value)
    return value


def channels(in_channels: object, out_channels: object, groups: object) -> tuple[int, int, int]:
    """Validate a layer's channel counts and ``groups`` (which must divide both)."""
    c = positive_int("in_channels", in_channels)
    k = positive_int("out_channels", out_channels)
    g = positive_int("groups", groups)
    if c % g:
        raise invalid("groups", f"a divisor of in_channels={c}", groups)
    if k % g:
        raise invalid("groups", f"a divisor of out_channels={k}", groups)
    return c, k, g


class ConvGeometry(NamedTuple):
    """The sizes of one pointwise convolution, derived from validated shapes.

    ``batched`` is False for an unbatched ``(C, H, W)`` input; the sizes then
    describe it with ``batch == 1``. (A NamedTuple: built on every call, and
    cheaper to build than a dataclass.)
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    height: int
    width: int
    out_height: int
    out_width: int
    batched: bool

    def output_shape(self, data_format: str) -> tuple[int, ...]:
        """The output shape in ``data_format``, unbatched if the input was."""
        if data_format == "NCHW":
            shape: tuple[int, ...] = (self.out_channels, self.out_height, self.out_width)
        else:
            shape = (self.out_height, self.out_width, self.out_channels)
        return (self.batch, *shape) if self.batched else shape


_V = TypeVar("_V")


def remember(cache: dict[Any, _V], key: Hashable, value: _V, limit: int) -> _V:
    """Store ``value`` under ``key`` and return it; a cache that holds ``limit``
    entries is emptied first (layers repeat a few signatures, so it rarely fills)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


_GEOMETRIES: dict[tuple[object, ...], ConvGeometry] = {}
_MAX_GEOMETRIES = 512


def geometry(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None,
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
    call); only a plain ``int`` groups is, so a bool or a float is always refused.
    """
    if type(groups) is not int:
        return _geometry(x_shape, weight_shape, bias_shape, stride, groups, data_format)
    key = (x_shape, weight_shape, bias_shape, stride, groups, data_format)
    geo = _GEOMETRIES.get(key)
    if geo is None:
        geo = _geometry(x_shape, weight_shape, bias_shape, stride, groups, data_format)
        remember(_GEOMETRIES, key, geo, _MAX_GEOMETRIES)
    return geo


def _geometry(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Sequence[int] | None,
    stride: tuple[int, int],
    groups: object,
    data_format: str,
) -> ConvGeometry:
    g = positive_int("groups", groups)
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
    if len(weight_shape) == 4:
        if tuple(weight_shape[2:]) != (1, 1):
            raise ValueError(
                "Invalid value for argument `weight`. Expected a 2-D (K, C/groups) or "
                f"4-D (K, C/groups, 1, 1) weight. Received weight of shape {tuple(weight_shape)}."
            )
    elif len(weight_shape) != 2:
        raise ValueError(
            "Invalid value for argument `weight`. Expected a 2-D (K, C/groups) or "
            f"4-D (K, C/groups, 1, 1) weight. Received weight of shape {tuple(weight_shape)}."
        )
    k, cg = int(weight_shape[0]), int(weight_shape[1])
    if c % g:
        raise invalid("groups", f"a divisor of the input's {c} channels", groups)
    if k % g:
        raise invalid("groups", f"a divisor of the weight's {k} output channels", groups)
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
        out_height=-(-h // sh),
        out_width=-(-w // sw),
        batched=batched,
    )
