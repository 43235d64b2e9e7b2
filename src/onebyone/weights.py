"""Weight layouts of a 1x1 convolution and the conversions between them.

A pointwise weight is canonically the matrix ``(K, C/g)``: row ``k`` holds the
``C/g`` channel weights of filter ``k``. Frameworks store it differently:

============  ======================  ==========================================
layout        shape                   used by
============  ======================  ==========================================
``"linear"``  ``(K, C/g)``            ``nn.Linear``, onebyone's ``Conv1x1``
``"torch"``   ``(K, C/g, 1, 1)``      ``nn.Conv2d``, ONNX ``Conv``
``"keras"``   ``(1, 1, C/g, K)``      Keras / TensorFlow / Flax ``Conv2D``
============  ======================  ==========================================

Works for NumPy arrays and torch tensors alike (without importing torch).
"""

from __future__ import annotations

from typing import Any, TypeVar

from onebyone._checks import choice

__all__ = ["LAYOUTS", "convert_weight"]

LAYOUTS: tuple[str, ...] = ("torch", "keras", "linear")

ArrayT = TypeVar("ArrayT")


def _as_linear(w: Any, src: str) -> Any:
    shape = tuple(w.shape)
    if src == "linear":
        if len(shape) != 2:
            raise ValueError(
                "Invalid value for argument `w`. Expected a 2-D (K, C/g) weight for "
                f"src='linear'. Received w of shape {shape}."
            )
        return w
    if src == "torch":
        if len(shape) != 4 or shape[2:] != (1, 1):
            raise ValueError(
                "Invalid value for argument `w`. Expected a 4-D (K, C/g, 1, 1) weight for "
                f"src='torch'. Received w of shape {shape}."
            )
        return w.reshape(shape[0], shape[1])  # (K, C/g, 1, 1) -> (K, C/g)
    if len(shape) != 4 or shape[:2] != (1, 1):
        raise ValueError(
            "Invalid value for argument `w`. Expected a 4-D (1, 1, C/g, K) weight for "
            f"src='keras'. Received w of shape {shape}."
        )
    return w.reshape(shape[2], shape[3]).T  # (1, 1, C/g, K) -> (K, C/g)


def convert_weight(w: ArrayT, src: str, dst: str) -> ArrayT:
    """Convert a 1x1 convolution weight between framework layouts.

    Args:
        w: a NumPy array or torch tensor in layout ``src``.
        src: ``"torch"``, ``"keras"`` or ``"linear"``.
        dst: ``"torch"``, ``"keras"`` or ``"linear"``.

    Returns:
        A new contiguous array/tensor of the same type and dtype in layout
        ``dst``; ``w`` itself is never modified or aliased.

    Shape:
        ``"torch"`` ``(K, C/g, 1, 1)`` <-> ``"keras"`` ``(1, 1, C/g, K)`` <->
        ``"linear"`` ``(K, C/g)``.

    Example:
        >>> import numpy as np
        >>> from onebyone import convert_weight
        >>> convert_weight(np.zeros((1, 1, 3, 8)), "keras", "torch").shape
        (8, 3, 1, 1)
    """
    choice("src", src, LAYOUTS)
    choice("dst", dst, LAYOUTS)
    if not hasattr(w, "shape") or not hasattr(w, "reshape"):
        raise TypeError(
            "Invalid value for argument `w`. Expected a NumPy array or a torch tensor. "
            f"Received w of type {type(w).__name__}."
        )
    m = _as_linear(w, src)  # (K, C/g)
    k, cg = tuple(m.shape)
    if dst == "linear":
        out = m
    elif dst == "torch":
        out = m.reshape(k, cg, 1, 1)
    else:
        out = m.T.reshape(1, 1, cg, k)
    return _fresh_contiguous(out, original=w)


def _fresh_contiguous(a: Any, *, original: Any) -> Any:
    if hasattr(a, "contiguous"):  # torch.Tensor
        a = a.contiguous()
        return a.clone() if a.data_ptr() == original.data_ptr() else a
    import numpy as np

    return np.array(a, copy=True, order="C")
