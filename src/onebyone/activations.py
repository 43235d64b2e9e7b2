"""THE table of the fused epilogue's activations: one entry per activation.

Every place that needs to know an activation reads its entry here: the torch
functions (out of place and in place), its derivative for the registered op's
backward, its oneDNN post-op, its Triton code (the CUDA kernel's ``_activate``
and ``_activation_derivative`` are generated from these snippets), the module
that computes it, and how to recognise it in a graph (module-level ``torch.fx``
graphs and ATen graphs from ``torch.export``). Adding an activation is adding
one ``Activation`` to ``TABLE``.

A lowering to ONNX or OpenVINO needs no entry of its own: the registered op
decomposes into ATen's convolution and the entry's ATen function, which the
exporters already translate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onebyone import _checks

__all__ = [
    "ACTIVATIONS",
    "LEAKY_RELU_SLOPE",
    "TABLE",
    "Activation",
    "activation",
    "apply_activation",
    "module_activation",
]

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of ``"leaky_relu"`` (PyTorch's default)."""

Tensor = torch.Tensor
ArgsTest = Callable[[tuple[Any, ...], Mapping[str, Any]], bool]


def _always(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    return True


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


@dataclass(frozen=True)
class Activation:
    """One activation of the epilogue ``act(conv(x) + bias + residual)``.

    Attributes:
        name: the name users pass (``activation="relu"``).
        function: ``act(z)``, out of place (autograd-safe).
        inplace: ``act(z)`` that may overwrite ``z`` (a fresh output, never an input).
        derivative: ``act'`` from ``(z, y)`` with ``y = act(z)``; reads only ``z`` when
            ``needs_preactivation``, else only ``y`` (PyTorch's conventions at kinks).
        needs_preactivation: whether the derivative needs ``z`` (not recoverable from ``y``).
        module: builds the ``nn.Module`` computing it.
        onednn: oneDNN's unary post-op ``(attribute, scalars, algorithm)``.
        onednn_after_add: oneDNN fuses it after its residual add (float32).
        triton: Triton statements turning the tile ``z`` into ``act(z)`` (assigning ``z``).
        triton_derivative: Triton statements computing ``d = act'`` from the tile ``s``
            (``z`` or ``y`` as above; ``one`` and ``zero`` are tiles of 1 and 0).
        aten: ATen operators computing it in an exported graph, each with a test of its
            extra arguments (``aten.hardtanh`` is relu6 only for ``(0, 6)``).
        modules: module types computing it, each with a test of the module.
        functions: functional forms (``F.relu``, ``torch.relu_``), each with a test of
            its extra arguments.
        methods: tensor methods (``x.relu()``) computing it with no extra arguments.
    """

    name: str
    function: Callable[[Tensor], Tensor]
    inplace: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor, Tensor], Tensor]
    needs_preactivation: bool
    module: Callable[[], nn.Module]
    onednn: tuple[str, list[Any], str]
    onednn_after_add: bool
    triton: str
    triton_derivative: str
    aten: Mapping[Any, ArgsTest]
    modules: Mapping[type[nn.Module], Callable[[nn.Module], bool]]
    functions: Mapping[Callable[..., Any], ArgsTest] = field(default_factory=dict)
    methods: tuple[str, ...] = ()


def _silu_derivative(z: Tensor, y: Tensor) -> Tensor:
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


def _gelu_derivative(z: Tensor, y: Tensor) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
    return cdf + z * torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))


def _hardswish_derivative(z: Tensor, y: Tensor) -> Tensor:
    return torch.where(z < -3, 0.0, torch.where(z <= 3, z / 3 + 0.5, 1.0)).to(z.dtype)


def _is_exact_gelu(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    return _arg(args, kwargs, 1, "approximate", "none") == "none"


def _is_default_slope(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    return _arg(args, kwargs, 1, "negative_slope", 0.01) == LEAKY_RELU_SLOPE


def _is_relu6_clamp(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    low = _arg(args, kwargs, 1, "min_val", -1.0)
    high = _arg(args, kwargs, 2, "max_val", 1.0)
    return (low, high) == (0.0, 6.0)


def _module_is(cls: type[nn.Module]) -> Callable[[nn.Module], bool]:
    return lambda m: type(m) is cls


_aten = torch.ops.aten

TABLE: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation(
            name="relu",
            function=F.relu,
            inplace=torch.relu_,
            derivative=lambda z, y: (y > 0).to(y.dtype),
            needs_preactivation=False,
            module=nn.ReLU,
            onednn=("relu", [], ""),
            onednn_after_add=True,
            triton="z = tl.maximum(z, 0.0)",
            triton_derivative="d = tl.where(s > 0, one, zero)",
            aten={_aten.relu.default: _always, _aten.relu_.default: _always},
            modules={nn.ReLU: _module_is(nn.ReLU)},
            functions={
                F.relu: _always,
                torch.relu: _always,
                torch.relu_: _always,
                F.relu_: _always,
            },
            methods=("relu", "relu_"),
        ),
        Activation(
            name="relu6",
            function=F.relu6,
            inplace=lambda z: F.hardtanh_(z, 0.0, 6.0),
            derivative=lambda z, y: ((y > 0) & (y < 6)).to(y.dtype),
            needs_preactivation=False,
            module=nn.ReLU6,
            onednn=("hardtanh", [0.0, 6.0], ""),
            onednn_after_add=False,
            triton="z = tl.minimum(tl.maximum(z, 0.0), 6.0)",
            triton_derivative="d = tl.where((s > 0) & (s < 6.0), one, zero)",
            aten={
                _aten.hardtanh.default: _is_relu6_clamp,
                _aten.hardtanh_.default: _is_relu6_clamp,
            },
            modules={
                nn.ReLU6: _module_is(nn.ReLU6),
                nn.Hardtanh: lambda m: type(m) is nn.Hardtanh and (m.min_val, m.max_val) == (0, 6),
            },
            functions={F.relu6: _always, F.hardtanh: _is_relu6_clamp},
        ),
        Activation(
            name="leaky_relu",
            function=lambda z: F.leaky_relu(z, LEAKY_RELU_SLOPE),
            inplace=lambda z: F.leaky_relu_(z, LEAKY_RELU_SLOPE),
            derivative=lambda z, y: torch.where(y > 0, 1.0, LEAKY_RELU_SLOPE).to(y.dtype),
            needs_preactivation=False,
            module=lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
            onednn=("leaky_relu", [LEAKY_RELU_SLOPE], ""),
            onednn_after_add=False,
            triton=f"z = tl.where(z > 0, z, z * {LEAKY_RELU_SLOPE!r})",
            triton_derivative=f"d = tl.where(s > 0, one, one * {LEAKY_RELU_SLOPE!r})",
            aten={
                _aten.leaky_relu.default: _is_default_slope,
                _aten.leaky_relu_.default: _is_default_slope,
            },
            modules={
                nn.LeakyReLU: lambda m: (
                    type(m) is nn.LeakyReLU and m.negative_slope == LEAKY_RELU_SLOPE
                )
            },
            functions={F.leaky_relu: _is_default_slope},
        ),
        Activation(
            name="silu",
            function=F.silu,
            inplace=lambda z: F.silu(z, inplace=True),
            derivative=_silu_derivative,
            needs_preactivation=True,
            module=nn.SiLU,
            onednn=("swish", [], ""),
            onednn_after_add=False,
            triton="z = z / (1.0 + tl.exp(-z))",
            triton_derivative="sig = 1.0 / (1.0 + tl.exp(-s))\nd = sig * (1.0 + s * (1.0 - sig))",
            aten={_aten.silu.default: _always, _aten.silu_.default: _always},
            modules={nn.SiLU: _module_is(nn.SiLU)},
            functions={F.silu: _always},
        ),
        Activation(
            name="gelu",
            function=F.gelu,
            inplace=F.gelu,  # no in-place form
            derivative=_gelu_derivative,
            needs_preactivation=True,
            module=nn.GELU,
            onednn=("gelu", [], "none"),
            onednn_after_add=False,
            triton="z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))",
            triton_derivative=(
                "cdf = 0.5 * (1.0 + tl.math.erf(s * 0.7071067811865476))\n"
                "d = cdf + s * tl.exp(-0.5 * s * s) * 0.3989422804014327"
            ),
            aten={_aten.gelu.default: _is_exact_gelu},
            modules={nn.GELU: lambda m: type(m) is nn.GELU and m.approximate == "none"},
            functions={F.gelu: _is_exact_gelu},
        ),
        Activation(
            name="hardswish",
            function=F.hardswish,
            inplace=lambda z: F.hardswish(z, inplace=True),
            derivative=_hardswish_derivative,
            needs_preactivation=True,
            module=nn.Hardswish,
            onednn=("hardswish", [], ""),
            onednn_after_add=False,
            triton="z = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0",
            triton_derivative=(
                "d = tl.where(s < -3.0, zero, tl.where(s <= 3.0, s / 3.0 + 0.5, one))"
            ),
            aten={_aten.hardswish.default: _always, _aten.hardswish_.default: _always},
            modules={nn.Hardswish: _module_is(nn.Hardswish)},
            functions={F.hardswish: _always},
        ),
        Activation(
            name="sigmoid",
            function=torch.sigmoid,
            inplace=torch.sigmoid_,
            derivative=lambda z, y: y * (1 - y),
            needs_preactivation=False,
            module=nn.Sigmoid,
            onednn=("sigmoid", [], ""),
            onednn_after_add=False,
            triton="z = 1.0 / (1.0 + tl.exp(-z))",
            triton_derivative="d = s * (1.0 - s)",
            aten={_aten.sigmoid.default: _always, _aten.sigmoid_.default: _always},
            modules={nn.Sigmoid: _module_is(nn.Sigmoid)},
            functions={torch.sigmoid: _always, F.sigmoid: _always},
            methods=("sigmoid", "sigmoid_"),
        ),
        Activation(
            name="tanh",
            function=torch.tanh,
            inplace=torch.tanh_,
            derivative=lambda z, y: 1 - y * y,
            needs_preactivation=False,
            module=nn.Tanh,
            onednn=("tanh", [], ""),
            onednn_after_add=False,
            # from exp(-2|z|), so it never overflows
            triton=(
                "t = tl.exp(-2.0 * tl.abs(z))\n"
                "z = tl.where(z < 0, -1.0, 1.0) * (1.0 - t) / (1.0 + t)"
            ),
            triton_derivative="d = 1.0 - s * s",
            aten={_aten.tanh.default: _always, _aten.tanh_.default: _always},
            modules={nn.Tanh: _module_is(nn.Tanh)},
            functions={torch.tanh: _always, F.tanh: _always},
            methods=("tanh", "tanh_"),
        ),
    )
}
"""``name -> Activation``, in the order of ``ACTIVATIONS``."""

ACTIVATIONS: tuple[str, ...] = tuple(TABLE)
"""Activation names accepted by every fused epilogue (``None`` means identity)."""


def activation(value: object) -> str | None:
    """Validate an activation name (any case); ``None`` means no activation.

    Raises:
        TypeError: ``value`` is neither ``None`` nor a string.
        ValueError: an unknown name.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise _checks.invalid(
            "activation", f"None or one of {', '.join(ACTIVATIONS)}", value, kind=TypeError
        )
    name = value.lower()
    if name not in TABLE:
        raise _checks.invalid("activation", f"None or one of {', '.join(ACTIVATIONS)}", value)
    return name


def apply_activation(z: Tensor, name: str | None, *, inplace: bool) -> Tensor:
    """``act(z)``; with ``inplace=True`` ``z`` may be overwritten (never pass an input).

    Shape:
        ``z``'s.
    """
    if name is None:
        return z
    entry = TABLE[name]
    return entry.inplace(z) if inplace else entry.function(z)


def module_activation(module: nn.Module) -> str | None:
    """The activation name ``module`` computes (``nn.ReLU()`` -> ``"relu"``), if any.

    Example:
        >>> from torch import nn
        >>> module_activation(nn.Hardtanh(0.0, 6.0)), module_activation(nn.GELU("tanh"))
        ('relu6', None)
    """
    for entry in TABLE.values():
        test = entry.modules.get(type(module))
        if test is not None and test(module):
            return entry.name
    return None
