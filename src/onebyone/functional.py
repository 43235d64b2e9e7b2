"""The PyTorch pointwise convolution: validation, epilogue, autograd, dispatch.

``conv1x1`` checks its arguments (once per call signature), then hands a batched
``(N, C, H, W)`` input and a 2-D ``(K, C/g)`` weight to the kernel that
``kernels.routing.choose`` picks.

The op is also registered with ``torch.library`` as ``torch.ops.onebyone.conv1x1``
(a fake implementation for symbolic shapes, autograd, a FLOP formula for
``torch.utils.flop_counter`` and a decomposition into ``aten.convolution`` plus
the epilogue for exporters). Eager calls on real tensors keep a direct path
(the dispatcher's round trip costs more than the checks); tracing, export,
``torch.compile`` and dispatch modes see the registered op.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_variadic

from onebyone import _checks, activations, geometry
from onebyone.activations import TABLE
from onebyone.kernels import routing
from onebyone.kernels.epilogue import records_grad
from onebyone.kernels.gemm import is_channels_last
from onebyone.kernels.routing import BACKENDS, BackendUnavailableError

__all__ = ["BACKENDS", "BackendUnavailableError", "conv1x1", "decompositions"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PLAIN_TYPES = (torch.Tensor, nn.Parameter)


def _tensor(argument: str, value: object, *, optional: bool = False) -> torch.Tensor | None:
    if value is None and optional:
        return None
    if not isinstance(value, torch.Tensor):
        expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected {expected}. "
            f"Received {argument} of type {type(value).__name__}."
        )
    if value.layout != torch.strided:
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a dense (strided) tensor; "
            f"convert with .to_dense(). Received {argument} with layout {value.layout}."
        )
    return value


def _same_kind(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            "Invalid value for argument `x`. Expected a floating-point tensor (float16, "
            f"bfloat16, float32 or float64). Received x with dtype {x.dtype}."
        )
    dtype, device = x.dtype, x.device
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None:
            continue
        if t.dtype != dtype:
            raise TypeError(
                f"Invalid value for argument `{name}`. Expected dtype {dtype} (the dtype "
                f"of x). Received {name} with dtype {t.dtype}."
            )
        if t.device != device:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected a tensor on {device} (the "
                f"device of x). Received {name} on {t.device}."
            )


def _validate(
    x: object,
    weight: object,
    bias: object,
    residual: object,
    stride: object,
    groups: object,
    activation: object,
    backend: object,
) -> tuple[geometry.ConvGeometry, tuple[int, int], str | None]:
    """Check every argument of a call; its geometry, normalised stride and activation."""
    _tensor("x", x)
    _tensor("weight", weight)
    _tensor("bias", bias, optional=True)
    _tensor("residual", residual, optional=True)
    x, weight = cast(torch.Tensor, x), cast(torch.Tensor, weight)
    bias, residual = cast("torch.Tensor | None", bias), cast("torch.Tensor | None", residual)
    _same_kind(x, weight, bias, residual)
    strides = _checks.pair("stride", stride)
    act = activations.activation(activation)
    _checks.choice("backend", backend, BACKENDS)
    geo = geometry.geometry(
        x.shape,
        weight.shape,
        None if bias is None else bias.shape,
        stride=strides,
        groups=groups,
    )
    if residual is not None and tuple(residual.shape) != geo.output_shape("NCHW"):
        raise ValueError(
            "Invalid value for argument `residual`. Expected the output's shape "
            f"{geo.output_shape('NCHW')}. Received residual of shape {tuple(residual.shape)}."
        )
    return geo, strides, act


# One validated call per signature: its geometry, normalised stride and activation,
# and kernel. A layer calls with the same signature every time, so the checks and the
# kernel choice run once; what they read (shapes, strides, dtypes, devices, whether
# autograd records) is all in the key.
_Plan = tuple[geometry.ConvGeometry, tuple[int, int], "str | None", ModuleType]
_PLANS: dict[tuple[object, ...], _Plan] = {}
_MAX_PLANS = 1024


def _signature(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: object,
    residual: object,
    stride: object,
    groups: object,
    activation: object,
    backend: object,
) -> tuple[object, ...] | None:
    """The plan key of an eager call, or ``None`` when its arguments must go through the
    checks.

    Only arguments of the exact types the checks accept get a key, so a ``bool`` or
    ``float`` stride or groups (equal to an int as a dict key) is always refused.
    """
    if (
        type(groups) is not int
        or type(backend) is not str
        or not (activation is None or type(activation) is str)
        or not (
            type(stride) is int
            or (
                type(stride) is tuple
                and len(stride) == 2
                and type(stride[0]) is int
                and type(stride[1]) is int
            )
        )
    ):
        return None
    if bias is None:
        bias_key: tuple[object, ...] | None = None
    elif isinstance(bias, torch.Tensor):
        bias_key = (bias.shape, bias.dtype, bias.device, bias.layout)
    else:
        return None
    if residual is None:
        residual_key: tuple[object, ...] | None = None
    elif isinstance(residual, torch.Tensor):
        residual_key = (residual.shape, residual.dtype, residual.device, residual.layout)
    else:
        return None
    return (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        weight.shape,
        weight.dtype,
        weight.device,
        bias_key,
        residual_key,
        stride,
        groups,
        activation,
        backend,
        records_grad(x, weight, bias, residual),
    )


def _plan(
    x: torch.Tensor,
    weight: object,
    bias: object,
    residual: object,
    stride: object,
    groups: object,
    activation: object,
    backend: object,
) -> _Plan:
    """Check every argument of a call and choose its kernel."""
    geo, strides, act = _validate(x, weight, bias, residual, stride, groups, activation, backend)
    xb = x if geo.batched else x.unsqueeze(0)
    needs_grad = records_grad(x, cast(torch.Tensor, weight), cast(Any, bias), cast(Any, residual))
    return geo, strides, act, routing.choose(str(backend), xb, needs_grad, geo)


def _traced(x: object, weight: object, residual: object) -> bool:
    """Whether this call is being traced (``torch.export`` and ``make_fx`` on fake tensors,
    ``torch.compile``, a dispatch mode such as ``FlopCounterMode``): then the registered
    op runs. (Tracing real tensors, as ``make_fx(tracing_mode="real")`` does, records
    the kernels' ATen ops instead: the same computation.)"""
    return (
        torch.compiler.is_compiling()  # first: Dynamo reads it as a constant
        or type(x) is not torch.Tensor
        or type(weight) not in _PLAIN_TYPES
        or (residual is not None and type(residual) is not torch.Tensor)
        or torch._C._len_torch_dispatch_stack() > 0
    )


def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Pointwise (1x1) convolution with a fused epilogue: ``act(conv(x) + bias + residual)``.

    Differentiable with respect to ``x``, ``weight``, ``bias`` and ``residual``.

    Args:
        x: input feature maps, any memory format.
        weight: ``(K, C/groups)`` or ``(K, C/groups, 1, 1)``.
        bias: optional ``(K,)``.
        stride: int or ``(sh, sw)``; keeps every ``sh``-th row and ``sw``-th column.
        groups: number of channel groups (``groups == C == K`` is depthwise).
        activation: ``None`` or one of ``onebyone.ACTIVATIONS`` (``leaky_relu`` has slope
            0.01, ``gelu`` is the exact erf form).
        residual: optional tensor of the output's shape, added before the activation.
        backend: ``"auto"`` (the kernel ``onebyone.kernels.routing.choose`` picks),
            ``"gemm"`` (matmul on views; any device and dtype), ``"onednn"`` or
            ``"triton"``. Every backend runs forward and backward. An explicit backend
            that cannot run raises ``BackendUnavailableError``. Traced calls
            (``torch.export``, ``torch.compile``) run the registered op, which picks its
            kernel as ``"auto"`` does.

    Shape:
        ``(N, C, H, W) -> (N, K, ceil(H/sh), ceil(W/sw))``; unbatched
        ``(C, H, W) -> (K, H', W')``. A channels-last input gives a
        channels-last output.

    Example:
        >>> import torch, onebyone as obo
        >>> x = torch.randn(2, 64, 28, 28)
        >>> obo.conv1x1(x, torch.randn(32, 64), torch.zeros(32), activation="relu").shape
        torch.Size([2, 32, 28, 28])
    """
    if has_torch_function_variadic(x, weight, bias, residual):
        operands = tuple(t for t in (x, weight, bias, residual) if isinstance(t, torch.Tensor))
        # Lets TorchFunctionMode users (onebyone.profile, tracers) see this op as one call.
        return handle_torch_function(
            conv1x1, operands, x, weight, bias, stride=stride, groups=groups,
            activation=activation, residual=residual, backend=backend,
        )  # fmt: skip
    if _traced(x, weight, residual):
        return _registered(x, weight, bias, stride, groups, activation, residual, backend)
    key = _signature(x, weight, bias, residual, stride, groups, activation, backend)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan(x, weight, bias, residual, stride, groups, activation, backend)
        if key is not None:
            _checks.remember(_PLANS, key, plan, _MAX_PLANS)
    geo, strides, act, kernel = plan
    w2 = weight if weight.dim() == 2 else weight.reshape(weight.shape[0], weight.shape[1])
    xb = x if geo.batched else x.unsqueeze(0)
    rb = residual if residual is None or geo.batched else residual.unsqueeze(0)
    y = kernel.conv1x1(xb, w2, bias, stride=strides, groups=geo.groups, activation=act, residual=rb)
    return y if geo.batched else y.squeeze(0)


def _registered(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: object,
    groups: object,
    activation: object,
    residual: torch.Tensor | None,
    backend: object,
) -> torch.Tensor:
    """A traced call: checked (sizes may be symbolic, so nothing is cached), then the
    registered op on the batched input and 2-D weight."""
    geo, strides, act = _validate(x, weight, bias, residual, stride, groups, activation, backend)
    w2 = weight if weight.dim() == 2 else weight.reshape(weight.shape[0], weight.shape[1])
    xb = x if geo.batched else x.unsqueeze(0)
    rb = residual if residual is None or geo.batched else residual.unsqueeze(0)
    y = torch.ops.onebyone.conv1x1(xb, w2, bias, list(strides), geo.groups, act, rb)
    return y if geo.batched else y.squeeze(0)


# --------------------------------------------------------------------- the registered op


@torch.library.custom_op("onebyone::conv1x1", mutates_args=())
def _conv1x1_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
    activation: str | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """``torch.ops.onebyone.conv1x1(x (N, C, H, W), weight (K, C/g), bias, stride, groups,
    activation, residual) -> (N, K, H', W')``: arguments as checked by ``conv1x1``; runs
    below autograd, so the kernels take their inference paths."""
    sh, sw = stride
    key = (x.shape, x.stride(), x.dtype, x.device, weight.shape, bias is None,
           residual is None, sh, sw, groups)  # fmt: skip
    entry = _OP_KERNELS.get(key)
    if entry is None:
        geo = geometry.geometry(x.shape, weight.shape, None, stride=(sh, sw), groups=groups)
        entry = _checks.remember(_OP_KERNELS, key, routing.choose("auto", x, False, geo), 256)
    return entry.conv1x1(
        x, weight, bias, stride=(sh, sw), groups=groups, activation=activation, residual=residual
    )


_OP_KERNELS: dict[tuple[object, ...], ModuleType] = {}


@_conv1x1_op.register_fake
def _conv1x1_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
    activation: str | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    _let_inductor_call_the_op()
    n, _, h, w = x.shape
    shape = (n, weight.shape[0], geometry.pointwise_output_size(h, stride[0]),
             geometry.pointwise_output_size(w, stride[1]))  # fmt: skip
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


_INDUCTOR_FALLBACK = False


def _let_inductor_call_the_op() -> None:
    """Inductor runs the op as an extern kernel, as it does any custom op without a lowering.

    Registered here because the implicit registration refuses, whenever the environment
    sets ``CI``, an op that also has a decomposition (ours, for the exporters). The fake
    implementation calls this: Inductor traces it with fake tensors before lowering, and
    Inductor's modules are already loaded then, so ``import onebyone`` never loads them.
    """
    global _INDUCTOR_FALLBACK
    lowering = sys.modules.get("torch._inductor.lowering")
    if _INDUCTOR_FALLBACK or lowering is None:
        return
    _INDUCTOR_FALLBACK = True
    op = torch.ops.onebyone.conv1x1.default
    try:
        from torch._library.utils import get_layout_constraint_tag

        if op not in lowering.lowerings:
            tag = get_layout_constraint_tag(op, with_default=True)
            constraint = lowering.tag_to_layout_constraint(tag)
            lowering.make_fallback(op, layout_constraint=constraint, warn=False)
    except (AttributeError, ImportError, TypeError):  # other torch releases: implicit path
        pass


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, bias, stride, groups, activation, residual = inputs
    ctx.stride, ctx.groups, ctx.activation = list(stride), groups, activation
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    keep_z = activation is not None and TABLE[activation].needs_preactivation
    ctx.save_for_backward(x, weight, bias if keep_z else None, residual if keep_z else None,
                          output)  # fmt: skip


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight, bias, residual, y = ctx.saved_tensors
    k, cg = weight.shape
    w4 = weight.reshape(k, cg, 1, 1)
    if ctx.activation is not None:
        entry = TABLE[ctx.activation]
        z = y
        if entry.needs_preactivation:  # recomputed: cheaper to store nothing but y
            z = _pre_activation(x, w4, bias, residual, ctx.stride, ctx.groups)
        grad = grad * entry.derivative(z, y)
    need_x, need_w, need_b = (
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.needs_input_grad[2],
    )
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, x, w4, [k] if ctx.has_bias else None, ctx.stride, [0, 0], [1, 1], False,
        [0, 0], ctx.groups, [need_x, need_w, need_b and ctx.has_bias],
    )  # fmt: skip
    grad_r = grad if ctx.has_residual and ctx.needs_input_grad[6] else None
    return (
        grad_x if need_x else None,
        grad_w.reshape(k, cg) if need_w else None,
        grad_b if need_b and ctx.has_bias else None,
        None,
        None,
        None,
        grad_r,
    )


_conv1x1_op.register_autograd(_backward, setup_context=_setup_context)


def _pre_activation(
    x: torch.Tensor,
    w4: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """``conv(x) + bias + residual`` as ATen ops."""
    z = torch.ops.aten.convolution.default(
        x, w4, bias, list(stride), [0, 0], [1, 1], False, [0, 0], groups
    )
    return z if residual is None else z + residual


def _decompose(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    groups: int,
    activation: str | None,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """The registered op as ``aten.convolution`` + add + the activation's ATen op."""
    w4 = weight.view(weight.shape[0], weight.shape[1], 1, 1)  # (K, C/g) -> (K, C/g, 1, 1)
    z = _pre_activation(x, w4, bias, residual, stride, groups)
    return z if activation is None else TABLE[activation].function(z)


def decompositions() -> dict[Any, Callable[..., torch.Tensor]]:
    """The decomposition of ``torch.ops.onebyone.conv1x1`` into ATen ops, for
    ``ExportedProgram.run_decompositions``.

    ``torch.onnx.export`` applies it on its own; OpenVINO's ``convert_model`` needs the
    exported program decomposed first.

    Example:
        >>> import torch, onebyone as obo
        >>> model = obo.nn.Conv1x1(8, 4, activation="relu").eval()
        >>> program = torch.export.export(model, (torch.randn(2, 8, 5, 5),))
        >>> plain = program.run_decompositions(obo.decompositions())
        >>> sorted({str(n.target) for n in plain.graph.nodes if n.op == "call_function"})
        ['aten.convolution.default', 'aten.relu.default', 'aten.view.default']
    """
    return {torch.ops.onebyone.conv1x1.default: _decompose}


def _register_lowering() -> None:
    from torch._decomp import global_decomposition_table, register_decomposition

    op = torch.ops.onebyone.conv1x1.default
    if op not in global_decomposition_table["post_autograd"]:
        register_decomposition(op)(_decompose)  # exporters (torch.onnx) find it here


def _register_flop_formula() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.onebyone.conv1x1)
    def _flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
        # one multiply and one add per weight entry per output pixel (2 * MACs)
        n, k, ho, wo = out_shape
        return 2 * n * k * ho * wo * w_shape[1]


_register_lowering()
_register_flop_formula()
