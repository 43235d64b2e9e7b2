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
from typing import Any, TypeVar

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


_V = TypeVar("_V")


def remember(cache: dict[Any, _V], key: Hashable, value: _V, limit: int) -> _V:
    """Store ``value`` under ``key`` and return it; a cache that holds ``limit``
    entries is emptied first (layers repeat a few signatures, so it rarely fills)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value
