"""The PyTorch pointwise convolution: validation, epilogue, autograd, dispatch.

``conv1x1`` checks its arguments (once per call signature), then hands a batched ``(N, C, H, W)``
input and a 2-D ``(K, C/g)`` weight to one kernel of ``onebyone.kernels``.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import cast

import torch
from torch.overrides import handle_torch_function, has_torch_function_variadic

from onebyone import _checks
from onebyone.kernels import gemm, onednn
from onebyone.kernels.epilogue import records_grad

__all__ = ["BACKENDS", "BackendUnavailableError", "conv1x1"]

BACKENDS: tuple[str, ...] = ("auto", "gemm", "onednn", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNELS: dict[str, ModuleType] = {"gemm": gemm, "onednn": onednn}  # "triton": on first use
_warned_fallback = False
_warned_no_triton = False


def _kernel(backend: str) -> ModuleType | str:
    """The kernel module of ``backend``, or why it cannot be loaded (Triton is optional)."""
    if backend in _KERNELS:
        return _KERNELS[backend]
    try:  # imported lazily: `import onebyone` works without Triton
        from onebyone.kernels import triton as triton_kernels
    except (ImportError, RuntimeError) as error:
        return f"Triton cannot be imported ({error}); pip install 'onebyone[triton]'"
    _KERNELS[backend] = triton_kernels
    return triton_kernels


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message says why."""


def _tensor(argument: str, value: object, *, optional: bool = False) -> torch.Tensor | None:
    if value is None and optional:
        return None
    if not isinstance(value, torch.Tensor):
        expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected {expected}. "
            f"Received {argument} of type {type(value).__name__}."
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


def _thin_nchw_gemm(x: torch.Tensor, geo: _checks.ConvGeometry) -> bool:
    """Whether MKL's GEMM on NCHW views beats oneDNN for this float32 inference on the CPU.

    oneDNN reorders NCHW input and output to its blocked layout around the
    convolution; a GEMM reads the ``(C/g, H*W)`` planes where they lie. Runs over
    the layer suite of ``benchmarks/bench_op.py`` found the GEMM never more than
    3% slower, and up to 2.5x faster, on grouped products and on products that
    are thin in the reduction or the output: at most 24 filters per group, at
    most 64 on at most 196 output pixels in all (14x14 at batch 1), at most 48
    input channels per group on at most 3136 pixels, or a weight of at most
    1024 values per group.
    """
    if x.dtype != torch.float32 or not x.is_contiguous():  # NCHW float32 only
        return False
    kg, cg = geo.out_channels // geo.groups, geo.in_channels // geo.groups
    pixels = geo.batch * geo.out_height * geo.out_width
    return (
        geo.groups > 1
        or kg <= 24
        or (kg <= 64 and pixels <= 196)
        or (cg <= 48 and pixels <= 3136)
        or cg * kg <= 1024
    )


def _pick_kernel(
    backend: str,
    x: torch.Tensor,
    needs_grad: bool,
    geo: _checks.ConvGeometry,
) -> ModuleType:
    global _warned_fallback, _warned_no_triton
    if backend != "auto":
        kernel = _kernel(backend)
        reason = kernel if isinstance(kernel, str) else kernel.unsupported(x, needs_grad)
        if reason is not None or isinstance(kernel, str):
            raise BackendUnavailableError(f"backend={backend!r} cannot run here: {reason}.")
        return kernel
    device = x.device.type
    if device == "cuda":
        kernel = _kernel("triton")
        if isinstance(kernel, ModuleType) and kernel.unsupported(x, needs_grad) is None:
            return kernel
        if isinstance(kernel, str) and not _warned_no_triton:
            _warned_no_triton = True
            warnings.warn(
                f"onebyone: {kernel}. CUDA uses the GEMM path.", RuntimeWarning, stacklevel=3
            )
    if device == "cpu":
        if onednn.unsupported(x, needs_grad) is None:
            if not needs_grad and _thin_nchw_gemm(x, geo):
                return gemm
            return onednn
        if not _warned_fallback and not onednn.is_available():
            _warned_fallback = True
            warnings.warn(
                "onebyone: this PyTorch build lacks oneDNN's fused convolution; "
                "the CPU uses the GEMM path.",
                RuntimeWarning,
                stacklevel=3,
            )
    return gemm


# One validated call per signature: its geometry, normalised stride and activation,
# and kernel. A layer calls with the same signature every time, so the checks and the
# kernel choice run once; what they read (shapes, strides, dtypes, devices, whether
# autograd records) is all in the key.
_Plan = tuple[_checks.ConvGeometry, tuple[int, int], "str | None", ModuleType]
_PLANS: dict[tuple[object, ...], _Plan] = {}
_MAX_PLANS = 1024


def _signature(
    x: object,
    weight: object,
    bias: object,
    residual: object,
    stride: object,
    groups: object,
    activation: object,
    backend: object,
) -> tuple[object, ...] | None:
    """The plan key of a call, or ``None`` when its arguments must go through the checks.

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
        or not isinstance(x, torch.Tensor)
        or not isinstance(weight, torch.Tensor)
        or torch.compiler.is_compiling()
    ):
        return None
    if bias is None:
        bias_key: tuple[object, ...] | None = None
    elif isinstance(bias, torch.Tensor):
        bias_key = (bias.shape, bias.dtype, bias.device)
    else:
        return None
    if residual is None:
        residual_key: tuple[object, ...] | None = None
    elif isinstance(residual, torch.Tensor):
        residual_key = (residual.shape, residual.dtype, residual.device)
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
    x: object,
    weight: object,
    bias: object,
    residual: object,
    stride: object,
    groups: object,
    activation: object,
    backend: object,
) -> _Plan:
    """Check every argument of a call and choose its kernel."""
    _tensor("x", x)
    _tensor("weight", weight)
    _tensor("bias", bias, optional=True)
    _tensor("residual", residual, optional=True)
    x, weight = cast(torch.Tensor, x), cast(torch.Tensor, weight)
    bias, residual = cast("torch.Tensor | None", bias), cast("torch.Tensor | None", residual)
    _same_kind(x, weight, bias, residual)
    strides = _checks.pair("stride", stride)
    act = _checks.activation(activation)
    _checks.choice("backend", backend, BACKENDS)
    if bias is not None and bias.dim() != 1:
        raise ValueError(
            "Invalid value for argument `bias`. Expected a 1-D tensor of shape (K,). "
            f"Received bias of shape {tuple(bias.shape)}."
        )
    geo = _checks.geometry(
        x.shape,
        weight.shape,
        None if bias is None else bias.shape,
        stride=strides,
        groups=groups,
    )
    if residual is not None and residual.shape != geo.output_shape("NCHW"):
        raise ValueError(
            "Invalid value for argument `residual`. Expected the output's shape "
            f"{geo.output_shape('NCHW')}. Received residual of shape {tuple(residual.shape)}."
        )
    xb = x if geo.batched else x.unsqueeze(0)
    needs_grad = records_grad(x, weight, bias, residual)
    return geo, strides, act, _pick_kernel(str(backend), xb, needs_grad, geo)


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
        activation: ``None`` or one of ``relu``, ``relu6``, ``leaky_relu`` (slope
            0.01), ``silu``, ``gelu`` (exact erf form), ``hardswish``, ``sigmoid``, ``tanh``.
        residual: optional tensor of the output's shape, added before the activation.
        backend: ``"auto"`` (oneDNN on the CPU for float32/bfloat16, Triton for CUDA
            tensors when Triton is installed, else the GEMM path), ``"gemm"`` (matmul on
            views; any device and dtype), ``"onednn"`` or ``"triton"``. Every backend
            runs forward and backward.
            An explicit backend that cannot run raises ``BackendUnavailableError``.

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
