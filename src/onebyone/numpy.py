"""The pointwise convolution in NumPy: the readable source of truth.

A 1x1 convolution is, at every pixel, the matrix-vector product of the
``(K, C)`` weight with that pixel's ``C`` channel values. Here it is computed
as one (batched) matrix product on views of the input: no Python loop over
pixels, and no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onebyone import _checks, geometry

__all__ = ["conv1x1"]


def _numeric(argument: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except ValueError:  # a ragged nested list: rows of different lengths
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected an array or a rectangular "
            f"nested list of numbers (every row the same length). Received "
            f"{argument}={_preview(value)}."
        ) from None
    if a.dtype == np.bool_:
        return a.astype(np.int64)
    if a.dtype.kind not in "iufc":
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a numeric array (integer, "
            f"float or complex). Received {argument} with dtype {a.dtype}."
        )
    return a


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compute_dtype(*arrays: np.ndarray) -> tuple[np.dtype, np.dtype]:
    """(dtype to accumulate in, dtype to return)."""
    result = np.result_type(*arrays)
    if result.kind in "iu":
        # Like np.sum: small integers accumulate (and return) in 64 bits, so sums are exact.
        wide = np.dtype(np.uint64 if result.kind == "u" else np.int64)
        return wide, wide
    if result == np.float16:
        return np.dtype(np.float32), result
    return result, result


def conv1x1(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NCHW",
) -> np.ndarray:
    """Pointwise (1x1) convolution of a NumPy array.

    ``y[n, k, i, j] = bias[k] + sum_c weight[k, c] * x[n, g*C/g + c, i*sh, j*sw]``
    where ``g`` is the group of filter ``k``.

    Args:
        x: input feature maps.
        weight: ``(K, C/groups)`` or ``(K, C/groups, 1, 1)`` filters.
        bias: optional ``(K,)`` per-filter offsets.
        stride: int or ``(sh, sw)``; keeps every ``sh``-th row and ``sw``-th column.
        groups: split channels into this many independent groups.
        data_format: ``"NCHW"`` (channels first) or ``"NHWC"`` (channels last).

    Returns:
        The output array. Its dtype is ``np.result_type(x, weight, bias)``,
        except that integer inputs accumulate and return in 64 bits (like
        ``np.sum``) so integer sums are exact, and float16 accumulates in
        float32 before rounding back.

    Shape:
        ``NCHW``: ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))``, unbatched
        ``(C, H, W) -> (K, H', W')``. ``NHWC``: ``(N, H, W, C) -> (N, H', W', K)``.

    Example:
        >>> import numpy as np
        >>> from onebyone.numpy import conv1x1
        >>> x = np.arange(12.0).reshape(3, 2, 2)        # 3 maps of 2x2
        >>> conv1x1(x, np.array([[0.1, 0.2, 0.4]])).shape
        (1, 2, 2)
    """
    xa = _numeric("x", x)
    wa = _numeric("weight", weight)
    ba = None if bias is None else _numeric("bias", bias)
    # Shapes already checked once are not checked again (plain int arguments only,
    # so a bool or a malformed pair always meets the full checks).
    key = None
    if type(stride) is int and type(groups) is int and type(data_format) is str:
        key = (xa.shape, wa.shape, None if ba is None else ba.shape, stride, groups,
               data_format, xa.dtype, wa.dtype, None if ba is None else ba.dtype)  # fmt: skip
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan(xa, wa, ba, stride, groups, data_format)
        if key is not None:
            _checks.remember(_PLANS, key, plan, _MAX_PLANS)
    geo, fmt, strides, acc, out_dtype = plan
    with np.errstate(invalid="ignore"):  # NaN/Inf inputs propagate, as in nn.Conv2d
        y = _grouped_gemm(xa if geo.batched else xa[np.newaxis], wa, ba, geo, fmt, strides, acc)
    if not geo.batched:
        y = y[0]
    return y if y.dtype == out_dtype else y.astype(out_dtype)


_Plan = tuple[geometry.ConvGeometry, str, tuple[int, int], np.dtype, np.dtype]
_PLANS: dict[tuple[Any, ...], _Plan] = {}
_MAX_PLANS = 256


def _plan(
    xa: np.ndarray,
    wa: np.ndarray,
    ba: np.ndarray | None,
    stride: object,
    groups: object,
    data_format: object,
) -> _Plan:
    """Validate every argument; return the geometry, layout, stride and dtypes."""
    fmt = _checks.data_format(data_format)
    strides = _checks.pair("stride", stride)
    geo = geometry.geometry(
        xa.shape,
        wa.shape,
        None if ba is None else ba.shape,
        stride=strides,
        groups=groups,
        data_format=fmt,
    )
    acc, out_dtype = _compute_dtype(*(a for a in (xa, wa, ba) if a is not None))
    return geo, fmt, strides, acc, out_dtype


def _as(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return a if a.dtype == dtype else a.astype(dtype)


def _grouped_gemm(
    xb: np.ndarray,
    wa: np.ndarray,
    ba: np.ndarray | None,
    geo: geometry.ConvGeometry,
    fmt: str,
    stride: tuple[int, int],
    acc: np.dtype,
) -> np.ndarray:
    """Batched GEMM on views: ``(N, C, H, W)`` or ``(N, H, W, C)`` -> K channels, same layout."""
    n, c, k, g = geo.batch, geo.in_channels, geo.out_channels, geo.groups
    ho, wo = geo.out_height, geo.out_width
    cg, kg = c // g, k // g
    sh, sw = stride
    w_grouped = _as(wa.reshape(g, kg, cg), acc)  # (g, K/g, C/g)
    strided = sh > 1 or sw > 1
    if fmt == "NCHW":
        pixels = _as(xb[:, :, ::sh, ::sw] if strided else xb, acc)  # (N, C, H', W')
        if g == 1:  # a 2-D weight on a stack of (C, P) planes: measured faster than 4-D
            y = np.matmul(w_grouped[0], pixels.reshape(n, c, ho * wo))  # (N, K, P)
        else:
            cols = pixels.reshape(n, g, cg, ho * wo)  # (N, g, C/g, P)
            y = np.matmul(w_grouped, cols)  # (N, g, K/g, P)
        if ba is not None:
            y = y.reshape(n, g, kg, ho * wo)
            y += _as(ba, acc).reshape(g, kg, 1)
        y = y.reshape(n, k, ho, wo)
    else:
        pixels = _as(xb[:, ::sh, ::sw, :] if strided else xb, acc)  # (N, H', W', C)
        if g == 1:
            y = np.matmul(pixels.reshape(n * ho * wo, c), w_grouped[0].T)  # (N*P, K)
        else:
            rows = pixels.reshape(n * ho * wo, g, cg).transpose(1, 0, 2)  # (g, N*P, C/g)
            y = np.matmul(rows, w_grouped.transpose(0, 2, 1))  # (g, N*P, K/g)
            y = y.transpose(1, 0, 2)  # (N*P, g, K/g)
        y = y.reshape(n, ho, wo, k)  # (N, H', W', K)
        if ba is not None:
            y += _as(ba, acc)
    return y
