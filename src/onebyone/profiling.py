"""``profile(model, input)``: the exact cost of every layer a model runs, and a roofline.

The model runs once (eval mode, no autograd) under a ``TorchFunctionMode``
that sees every counted call where ``forward`` makes it: module layers and
functional calls alike (``onebyone.conv1x1``, ``F.conv2d``, ``F.linear``,
``matmul``, norms, pooling, elementwise ops). Forward hooks keep a stack of
the executing modules, so each call is charged to the innermost module
running it; a module called twice gives two rows. Counts follow
``onebyone.cost.CONVENTION``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from onebyone import _checks
from onebyone.cost import CONVENTION, Cost, conv_counts, touched, window_reads

__all__ = ["CATEGORIES", "Layer", "MachinePeak", "Profile", "machine_peak", "profile"]

CATEGORIES: tuple[str, ...] = (
    "pointwise",
    "depthwise",
    "grouped",
    "conv",
    "linear",
    "norm",
    "elementwise",
    "pooling",
)
"""Layer categories: ``pointwise`` is any convolution with a 1x1 kernel (any
groups); ``depthwise`` has ``groups == in_channels``; ``grouped`` other
``groups > 1``; ``conv`` dense ``k x k``; ``linear`` covers ``F.linear`` and
matrix products."""

BOUNDS: tuple[str, ...] = ("compute", "memory")


# ---------------------------------------------------------------- the machine


@dataclass(frozen=True)
class MachinePeak:
    """A machine's measured peaks: the roof of the roofline.

    Args:
        gflops: fp32 matrix-product throughput, GFLOP/s.
        gbps: memory bandwidth, GB/s (10^9 bytes per second).
        engine: the engine that reached ``gflops``.
        device: where it was measured.

    A layer with ``F`` FLOPs moving ``B`` bytes is predicted to take
    ``max(F / gflops, B / gbps)`` (in 10^-9 s) and is compute-bound when the
    first term is the larger.

    Example:
        >>> import onebyone as obo
        >>> peak = obo.MachinePeak(gflops=400.0, gbps=20.0, engine="given")
        >>> peak.bound(obo.conv_cost(256, 64, input_size=56))
        'compute'
        >>> peak.bound(obo.conv_cost(32, 32, input_size=56))
        'memory'
    """

    gflops: float
    gbps: float
    engine: str = "given"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("gflops", "gbps"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise _checks.invalid(name, "a positive number", value, kind=TypeError)
            if not (math.isfinite(value) and value > 0):
                raise _checks.invalid(name, "a positive finite number", value)

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where a layer turns compute-bound."""
        return self.gflops / self.gbps

    def _terms(self, cost: Cost) -> tuple[float, float]:
        return cost.flops / (self.gflops * 1e9), cost.bytes_moved / (self.gbps * 1e9)

    def seconds(self, cost: Cost) -> float:
        """Roofline time of ``cost``: ``max(flops / peak, bytes / bandwidth)``."""
        return max(self._terms(cost))

    def bound(self, cost: Cost) -> str:
        """``"compute"`` or ``"memory"``: which roof limits ``cost``."""
        compute, memory = self._terms(cost)
        return "compute" if compute >= memory and compute > 0 else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "gbps": self.gbps, "engine": self.engine,
                "device": self.device}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachinePeak:
        return cls(data["gflops"], data["gbps"], data["engine"], data["device"])


_PEAKS: dict[str, MachinePeak] = {}


def _best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: allocation, kernel choice
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(device: torch.device) -> MachinePeak:
    n = 1024
    rates: dict[str, float] = {}
    with torch.no_grad():
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        c = torch.empty(n, n, device=device)
        seconds = _best_seconds(lambda: torch.matmul(a, b, out=c), 3, device)
        rates["torch.matmul"] = 2 * n**3 / seconds
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            # oneDNN's channels-last 1x1 convolution often beats the BLAS behind matmul
            x = torch.randn(1, n, 32, 32).to(memory_format=torch.channels_last)
            w = torch.randn(n, n, 1, 1)
            rates["oneDNN 1x1 conv (channels-last)"] = (
                2 * n * n * 32 * 32 / _best_seconds(lambda: F.conv2d(x, w), 3, device)
            )
        # bandwidth: copy 64 MiB into 64 MiB, beyond the last-level caches
        src = torch.ones(16 * 2**20, device=device)
        dst = torch.zeros_like(src)
        moved = 2 * src.numel() * src.element_size()
        gbps = moved / _best_seconds(lambda: dst.copy_(src), 4, device) / 1e9
    engine = max(rates, key=lambda k: rates[k])
    return MachinePeak(rates[engine] / 1e9, gbps, engine, str(device))


def machine_peak(device: str | torch.device = "cpu") -> MachinePeak:
    """Measure this machine's fp32 GEMM GFLOP/s and memory GB/s, once per process.

    The compute peak is the best of ``torch.matmul`` on 1024x1024 matrices and
    (on CPU) oneDNN's channels-last 1x1 convolution of the same size, the
    fastest engine available here; bandwidth is a 64 MiB tensor copy (bytes
    read + written). Best of a few runs after a warm-up; about 0.1-0.3 s the
    first time, then cached for the process.

    Args:
        device: where to measure (``"cpu"`` or a CUDA device).

    Example:
        >>> import onebyone as obo
        >>> peak = obo.machine_peak()
        >>> peak.gflops > 0 and peak.gbps > 0
        True
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise _checks.invalid(
            "device", "a torch.device or a device string", device, kind=kind
        ) from exc
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = str(dev)
    if key not in _PEAKS:
        _PEAKS[key] = _measure(dev)
    return _PEAKS[key]


# ---------------------------------------------------------------- one call -> its cost


Args = Sequence[Any]
Kwargs = dict[str, Any]


@dataclass(frozen=True)
class _Count:
    category: str
    cost: Cost  # params filled in later, from the parameters the call read
    input_shape: tuple[int, ...]


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str,
         default: Any = None) -> Any:  # fmt: skip
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _tensors(args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _ntuple(value: object, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n  # type: ignore[call-overload]


def _read_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _conv_category(kernel: Sequence[int], groups: int, in_channels: int) -> str:
    if all(k == 1 for k in kernel):
        return "pointwise"
    if groups > 1 and groups == in_channels:
        return "depthwise"
    return "grouped" if groups > 1 else "conv"


def _count_conv(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # F.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups)
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    nd = w.dim() - 2
    kernel = tuple(w.shape[2:])
    dilation = _ntuple(_arg(args, kwargs, 5, "dilation", 1), nd)
    padding = _arg(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        pad: tuple[int, ...] = (0,) * nd
    elif padding == "same":
        pad = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
    else:
        pad = _ntuple(padding, nd)
    c = w.shape[1] * groups
    in_size, out_size = tuple(x.shape[-nd:]), tuple(out.shape[-nd:])
    cost = conv_counts(
        batch=x.numel() // (c * math.prod(in_size)),
        in_channels=c,
        out_channels=w.shape[0],
        groups=groups,
        kernel=kernel,
        in_size=in_size,
        out_size=out_size,
        stride=_ntuple(_arg(args, kwargs, 3, "stride", 1), nd),
        pad=pad,
        dilation=dilation,
        bias=b is not None,
        itemsize=x.element_size(),
    )
    return _Count(_conv_category(kernel, groups, c), cost, tuple(x.shape))


def _count_conv_transpose(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # F.conv_transpose{1,2,3}d(input, weight, bias, stride, padding, output_padding, groups, ...)
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    kernel = tuple(w.shape[2:])
    taps = math.prod(kernel)
    size = x.element_size()
    cost = Cost(
        macs=x.numel() * w.shape[1] * taps,  # every input element feeds K/groups * taps outputs
        bias_adds=out.numel() if b is not None else 0,
        bytes_read=_read_bytes(t for t in (x, w, b) if t is not None),
        bytes_written=out.numel() * size,
    )
    return _Count(_conv_category(kernel, groups, w.shape[0]), cost, tuple(x.shape))


def _count_conv1x1(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # onebyone.conv1x1(x, weight, bias, *, stride, groups, activation, residual): one fused layer
    x, w = _arg(args, kwargs, 0, "x"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    residual = kwargs.get("residual")
    groups = int(kwargs.get("groups", 1))
    c = x.shape[-3]
    in_size, out_size = tuple(x.shape[-2:]), tuple(out.shape[-2:])
    cost = conv_counts(
        batch=x.numel() // (c * math.prod(in_size)),
        in_channels=c,
        out_channels=w.shape[0],
        groups=groups,
        kernel=(1, 1),
        in_size=in_size,
        out_size=out_size,
        stride=_checks.pair("stride", kwargs.get("stride", 1)),
        pad=(0, 0),
        dilation=(1, 1),
        bias=b is not None,
        itemsize=x.element_size(),
    )
    epilogue = out.numel() * ((residual is not None) + (kwargs.get("activation") is not None))
    extra_read = 0 if residual is None else residual.numel() * residual.element_size()
    cost = replace(cost, other_ops=epilogue, bytes_read=cost.bytes_read + extra_read)
    return _Count("pointwise", cost, tuple(x.shape))


def _count_linear(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    b = _arg(args, kwargs, 2, "bias")
    in_features = w.shape[-1]
    outputs = out.numel()
    cost = Cost(
        macs=outputs * in_features,
        bias_adds=outputs if b is not None else 0,
        bytes_read=_read_bytes(t for t in (x, w, b) if t is not None),
        bytes_written=outputs * out.element_size(),
    )
    return _Count("linear", cost, tuple(x.shape))


def _count_matmul(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # matmul/mm/bmm/mv/dot(a, b); addmm/baddbmm/addmv(c, a, b): c added apart, as a bias
    tensors = _tensors(args, kwargs)
    with_bias = func.__name__.startswith(("addm", "baddbmm"))
    a = tensors[1] if with_bias else tensors[0]
    inner = a.shape[-1]
    outputs = out.numel()
    cost = Cost(
        macs=outputs * inner,
        bias_adds=outputs if with_bias else 0,
        bytes_read=_read_bytes(tensors),
        bytes_written=outputs * out.element_size(),
    )
    return _Count("linear", cost, tuple(a.shape))


def _count_norm(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    x = _arg(args, kwargs, 0, "input")
    name = func.__name__
    if name == "batch_norm":
        # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...);
        # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
        stats = 3 if func is torch.batch_norm else 1
        stored = _arg(args, kwargs, stats, "running_mean") is not None and not _arg(
            args, kwargs, 5, "training", False
        )
    elif name == "instance_norm":
        stored = not _arg(args, kwargs, 5, "use_input_stats", True)
    else:  # layer_norm, group_norm: statistics from the input
        stored = False
    # stored statistics: x * scale + shift; computed: mean, centred square, variance, scale, shift
    per_element = 2 if stored else 5
    cost = Cost(
        other_ops=per_element * out.numel(),
        bytes_read=_read_bytes(_tensors(args, kwargs)),
        bytes_written=out.numel() * out.element_size(),
    )
    return _Count("norm", cost, tuple(x.shape))


def _count_elementwise(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    tensors = _tensors(args, kwargs)
    cost = Cost(
        other_ops=out.numel(),
        bytes_read=_read_bytes(tensors),
        bytes_written=out.numel() * out.element_size(),
    )
    return _Count("elementwise", cost, tuple(tensors[0].shape) if tensors else ())


def _count_pool(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # max_pool{1,2,3}d(input, kernel_size, stride, padding, dilation, ...),
    # avg_pool{1,2,3}d(input, kernel_size, stride, padding, ...)
    x = _arg(args, kwargs, 0, "input")
    nd = int(func.__name__[-2])
    kernel = _ntuple(_arg(args, kwargs, 1, "kernel_size"), nd)
    stride_arg = _arg(args, kwargs, 2, "stride")
    stride = kernel if stride_arg is None or stride_arg == [] else _ntuple(stride_arg, nd)
    pad = _ntuple(_arg(args, kwargs, 3, "padding", 0), nd)
    dilation = (1,) * nd
    if func.__name__.startswith("max"):  # avg_pool has no dilation
        dilation = _ntuple(_arg(args, kwargs, 4, "dilation", 1), nd)
    in_size, out_size = tuple(x.shape[-nd:]), tuple(out.shape[-nd:])
    planes = x.numel() // math.prod(in_size)
    axes = list(zip(in_size, out_size, kernel, stride, pad, dilation, strict=True))
    cost = Cost(
        other_ops=planes * math.prod(window_reads(*a) for a in axes),
        bytes_read=planes * math.prod(touched(*a) for a in axes) * x.element_size(),
        bytes_written=out.numel() * out.element_size(),
    )
    return _Count("pooling", cost, tuple(x.shape))


def _count_adaptive_pool(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # window o of an axis of length n spans [floor(o*n/m), ceil((o+1)*n/m))
    x = _arg(args, kwargs, 0, "input")
    nd = int(func.__name__[-2])
    in_size, out_size = tuple(x.shape[-nd:]), tuple(out.shape[-nd:])
    reads = math.prod(
        sum(-(-(o + 1) * n // m) - (o * n // m) for o in range(m))
        for n, m in zip(in_size, out_size, strict=True)
    )
    cost = Cost(
        other_ops=(x.numel() // math.prod(in_size)) * reads,
        bytes_read=x.numel() * x.element_size(),
        bytes_written=out.numel() * out.element_size(),
    )
    return _Count("pooling", cost, tuple(x.shape))


def _count_reduction(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> _Count:
    # mean/sum/amax/amin over some axes: a pooling that reads each input element once
    x = _arg(args, kwargs, 0, "input")
    cost = Cost(
        other_ops=x.numel(),
        bytes_read=x.numel() * x.element_size(),
        bytes_written=out.numel() * out.element_size(),
    )
    return _Count("pooling", cost, tuple(x.shape))


_Counter = Callable[[Any, Sequence[Any], dict[str, Any], torch.Tensor], _Count]

# fmt: off
_COUNTERS: dict[str, _Counter] = {
    "conv1x1": _count_conv1x1,
    **dict.fromkeys(("conv1d", "conv2d", "conv3d"), _count_conv),
    **dict.fromkeys(("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
                    _count_conv_transpose),
    "linear": _count_linear,
    **dict.fromkeys(
        ("matmul", "mm", "bmm", "mv", "dot", "addmm", "addmv", "baddbmm"), _count_matmul
    ),
    **dict.fromkeys(("batch_norm", "layer_norm", "group_norm", "instance_norm"), _count_norm),
    **dict.fromkeys(
        ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"),
        _count_pool,
    ),
    **dict.fromkeys(
        ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
         "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
        _count_adaptive_pool,
    ),
    **dict.fromkeys(("mean", "sum", "amax", "amin"), _count_reduction),
    **dict.fromkeys(
        (
            "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide",
            "neg", "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu",
            "leaky_relu_", "elu", "elu_", "selu", "celu", "silu", "gelu", "mish", "hardswish",
            "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "softplus", "clamp",
            "clamp_", "clip", "clip_", "exp", "prelu", "__add__", "__iadd__", "__radd__",
            "__mul__", "__imul__", "__rmul__", "__sub__", "__rsub__", "__truediv__",
        ),
        _count_elementwise,
    ),
}

# calls that move or describe data but do no arithmetic: not counted, not reported
_FREE = frozenset(
    (
        "__get__", "__set__", "__getitem__", "__setitem__", "__len__", "__iter__", "__bool__",
        "__index__", "__int__", "__float__", "__format__", "__repr__", "__contains__",
        "_set_grad_enabled", "size", "dim", "numel", "stride", "is_contiguous",
        "is_floating_point", "element_size", "data_ptr", "storage_offset", "item", "tolist",
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
        "transpose", "t", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as",
        "narrow", "select", "chunk", "split", "split_with_sizes", "unbind", "cat", "concat",
        "concatenate", "stack", "clone", "detach", "to", "type", "float", "half", "double",
        "bfloat16", "cpu", "cuda", "pad", "pixel_shuffle", "pixel_unshuffle",
        "channel_shuffle", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
        "feature_alpha_dropout", "empty", "zeros", "ones", "full", "empty_like", "zeros_like",
        "ones_like", "full_like", "new_empty", "new_zeros", "new_ones", "new_full", "tensor",
        "as_tensor", "copy_", "fill_", "zero_", "requires_grad_",
    )
)
# fmt: on


# ---------------------------------------------------------------- the profile


@dataclass(frozen=True)
class Layer:
    """One executed call: where it ran, what it is, what it costs.

    Args:
        name: path of the innermost module running it (``""``: the model's own ``forward``).
        type: that module's class name.
        op: the call (``"conv2d"``, ``"conv1x1"``, ``"linear"``, ``"batch_norm"``, ``"add_"``...).
        category: one of ``onebyone.profiling.CATEGORIES``.
        input_shape, output_shape: the first input's and the output's shapes.
        cost: its ``Cost`` (``params``: the model parameters this call read).
        parameters: the names of those parameters.
        time_s: roofline-predicted time, seconds.
        bound: ``"compute"`` or ``"memory"``.
    """

    name: str
    type: str
    op: str
    category: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    cost: Cost
    parameters: tuple[str, ...]
    time_s: float
    bound: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "op": self.op,
            "category": self.category,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "cost": self.cost.to_dict(),
            "parameters": list(self.parameters),
            "time_s": self.time_s,
            "bound": self.bound,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layer:
        return cls(
            name=data["name"],
            type=data["type"],
            op=data["op"],
            category=_checks.choice("category", data["category"], CATEGORIES),
            input_shape=tuple(data["input_shape"]),
            output_shape=tuple(data["output_shape"]),
            cost=Cost.from_dict(data["cost"]),
            parameters=tuple(data["parameters"]),
            time_s=float(data["time_s"]),
            bound=_checks.choice("bound", data["bound"], BOUNDS),
        )


CSV_COLUMNS: tuple[str, ...] = (
    "name", "type", "op", "category", "input_shape", "output_shape", "params", "macs",
    "flops", "bias_adds", "other_ops", "bytes_read", "bytes_written", "arithmetic_intensity",
    "time_s", "bound",
)  # fmt: skip


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


@dataclass(frozen=True)
class Profile:
    """The cost of every layer one forward pass ran, with totals and a roofline.

    Counts follow ``CONVENTION`` (``Profile.convention``): MAC = one
    multiply-accumulate; FLOPs = 2 x MACs; bias adds and other elementwise
    ops apart; params count weights, biases and norm affine terms, not
    running statistics (torchvision convention).

    Args:
        model: the model's class name.
        inputs: the shapes of the example inputs.
        dtype: the floating dtype it ran in.
        peak: the ``MachinePeak`` behind ``Layer.time_s``.
        layers: one ``Layer`` per counted call, in execution order.
        parameter_sizes: every model parameter, by name, with its element count.
        uncounted: calls seen that do arithmetic this profile does not count
            (name -> number of calls); empty when every call was counted.

    Example:
        >>> import torch, onebyone as obo
        >>> model = torch.nn.Sequential(obo.nn.Conv1x1(64, 32), torch.nn.ReLU())
        >>> p = obo.profile(model, (1, 64, 28, 28), peak=obo.MachinePeak(400.0, 20.0))
        >>> [(l.name, l.category, l.cost.macs) for l in p.layers]
        [('0', 'pointwise', 1605632), ('1', 'elementwise', 0)]
        >>> p.total.params, p.by_category()["pointwise"].flops
        (2080, 3211264)
    """

    model: str
    inputs: tuple[tuple[int, ...], ...]
    dtype: str
    peak: MachinePeak
    layers: tuple[Layer, ...]
    parameter_sizes: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)

    convention = CONVENTION

    def _combine(self, layers: Iterable[Layer]) -> Cost:
        layers = list(layers)
        total = sum((layer.cost for layer in layers), Cost())
        used = {name for layer in layers for name in layer.parameters}
        return replace(total, params=sum(self.parameter_sizes[name] for name in used))

    @property
    def total(self) -> Cost:
        """Sum over the layers; a parameter read by several calls is counted once."""
        return self._combine(self.layers)

    def by_category(self) -> dict[str, Cost]:
        """The total of each category in ``CATEGORIES`` (every key present)."""
        return {c: self._combine(l for l in self.layers if l.category == c) for c in CATEGORIES}

    @property
    def unused_params(self) -> dict[str, int]:
        """Parameters no counted call read (modules that never ran), by name; not in ``total``."""
        used = {name for layer in self.layers for name in layer.parameters}
        return {n: size for n, size in self.parameter_sizes.items() if n not in used}

    @property
    def time_s(self) -> float:
        """Roofline-predicted time of the whole pass: the layers' times added."""
        return sum(layer.time_s for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready, with the convention and the derived totals."""
        return {
            "convention": CONVENTION,
            "model": self.model,
            "inputs": [list(s) for s in self.inputs],
            "dtype": self.dtype,
            "peak": self.peak.to_dict(),
            "total": self.total.to_dict(),
            "time_s": self.time_s,
            "by_category": {c: cost.to_dict() for c, cost in self.by_category().items()},
            "unused_params": self.unused_params,
            "uncounted": dict(self.uncounted),
            "parameter_sizes": dict(self.parameter_sizes),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """``to_dict()`` as JSON text; ``Profile.from_json`` reads it back."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of ``to_dict`` (derived totals are recomputed, not read)."""
        return cls(
            model=data["model"],
            inputs=tuple(tuple(s) for s in data["inputs"]),
            dtype=data["dtype"],
            peak=MachinePeak.from_dict(data["peak"]),
            layers=tuple(Layer.from_dict(layer) for layer in data["layers"]),
            parameter_sizes=dict(data["parameter_sizes"]),
            uncounted=dict(data["uncounted"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Profile:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))

    def to_csv(self) -> str:
        """One row per layer, columns ``CSV_COLUMNS``; shapes written as ``1x64x56x56``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for layer in self.layers:
            c = layer.cost
            writer.writerow([
                layer.name, layer.type, layer.op, layer.category,
                _shape_text(layer.input_shape), _shape_text(layer.output_shape),
                c.params, c.macs, c.flops, c.bias_adds, c.other_ops, c.bytes_read,
                c.bytes_written, repr(c.arithmetic_intensity), repr(layer.time_s), layer.bound,
            ])  # fmt: skip
        return buffer.getvalue()


class _Recorder(TorchFunctionMode):
    """Counts each call as ``forward`` makes it; nested calls inside it are not seen."""

    def __init__(self, root_type: str, names: dict[int, str], sizes: dict[str, int]) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = [("", root_type)]
        self.calls: list[tuple[str, str, str, _Count, tuple[int, ...], tuple[str, ...]]] = []
        self.uncounted: Counter[str] = Counter()
        self.names = names
        self.sizes = sizes

    def _parameters(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, ...]:
        found: list[str] = []
        for t in _tensors(args, kwargs):
            base = t if isinstance(t, nn.Parameter) else t._base
            if not isinstance(base, nn.Parameter):
                continue
            name = self.names.get(id(base))
            if name is None:  # a parameter that is not the model's
                name = self.names[id(base)] = f"(outside the model #{len(self.names)})"
                self.sizes[name] = base.numel()
            if name not in found:
                found.append(name)
        return tuple(found)

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        counter = _COUNTERS.get(name)
        result = _first_tensor(out)
        if counter is None or result is None:
            if counter is None and name not in _FREE:
                self.uncounted[name] += 1
            return out
        counted = counter(func, args, kwargs, result)
        path, module_type = self.stack[-1]
        params = self._parameters(args, kwargs)
        self.calls.append((path, module_type, name, counted, tuple(result.shape), params))
        return out


def _examples(value: object, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    expected = "a shape (a sequence of positive ints), a tensor, or a tuple of tensors"
    if isinstance(value, torch.Tensor):
        return (value.to(dtype) if value.is_floating_point() else value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise _checks.invalid("input_shape_or_example", expected, value, kind=TypeError)
    if all(isinstance(v, torch.Tensor) for v in value):
        return tuple(v.to(dtype) if v.is_floating_point() else v for v in value)
    if all(_checks._is_int(v) for v in value):
        shape = tuple(int(v) for v in value)
        if min(shape) < 1:
            raise _checks.invalid("input_shape_or_example", expected, value)
        if device.type == "meta":  # shapes only: nothing is computed
            return (torch.empty(shape, dtype=dtype, device=device),)
        generator = torch.Generator(device=device).manual_seed(0)
        return (torch.randn(shape, dtype=dtype, device=device, generator=generator),)
    raise _checks.invalid("input_shape_or_example", expected, value, kind=TypeError)


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype | None, torch.device]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return None, torch.device("cpu")


def profile(
    model: nn.Module,
    input_shape_or_example: Sequence[int] | torch.Tensor | Sequence[torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    peak: MachinePeak | None = None,
) -> Profile:
    """Run ``model`` once and count every layer it executes, exactly.

    The pass runs in eval mode without autograd (the modules' training flags
    are restored afterwards; nothing in the model changes). Each counted call
    becomes a ``Layer``: ``nn.Conv2d``, ``nn.Linear``, norms and pools, and
    the same calls made functionally inside ``forward`` (``onebyone.conv1x1``
    as one fused layer with its bias, residual and activation, ``F.conv2d``,
    ``F.linear``, ``matmul``/``@``, ``F.relu``, ``+``...). A module that runs
    twice gives two rows. Counts follow ``onebyone.cost.CONVENTION``: MAC = one
    multiply-accumulate; FLOPs = 2 x MACs; bias adds and other elementwise
    ops apart; params count weights, biases and norm affine terms, not
    running statistics (torchvision convention).

    The counts depend on shapes only, so a model on the meta device
    (``with torch.device("meta"): model = ...``) is profiled without
    allocating or computing any data.

    Args:
        model: any ``nn.Module``.
        input_shape_or_example: a shape such as ``(1, 3, 224, 224)`` (a random
            input is made), an example tensor, or a tuple of positional inputs.
        dtype: run and count in this floating dtype (default: the model's);
            a model of another dtype is copied and cast, never changed.
        peak: the roof for the predicted times (default ``machine_peak()``
            measured on the model's device; the CPU for a meta model).

    Shape:
        any input the model accepts, e.g. ``(N, C, H, W)``.

    Example:
        >>> import torch, onebyone as obo
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        >>> p = obo.profile(net, (1, 3, 32, 32))
        >>> p.total.macs, p.total.params, [l.category for l in p.layers]
        (221184, 240, ['conv', 'norm'])
    """
    if not isinstance(model, nn.Module):
        raise _checks.invalid("model", "a torch.nn.Module", type(model).__name__, kind=TypeError)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise _checks.invalid("dtype", "None or a floating torch.dtype", dtype, kind=TypeError)
    if peak is not None and not isinstance(peak, MachinePeak):
        raise _checks.invalid("peak", "None or a MachinePeak", type(peak).__name__, kind=TypeError)
    own_dtype, device = _model_dtype_device(model)
    run_dtype = dtype or own_dtype or torch.float32
    work = model
    if own_dtype is not None and run_dtype != own_dtype:
        work = copy.deepcopy(model).to(run_dtype)
    inputs = _examples(input_shape_or_example, run_dtype, device)
    if peak is None:
        peak = machine_peak("cpu" if device.type == "meta" else device)

    names = {id(p): n for n, p in work.named_parameters()}
    sizes = {n: p.numel() for n, p in work.named_parameters()}
    recorder = _Recorder(type(work).__name__, names, sizes)
    flags = [(m, m.training) for m in work.modules()]
    handles = []
    for path, module in work.named_modules():
        entry = (path, type(module).__name__)

        def enter(module: nn.Module, args: Any, entry: tuple[str, str] = entry) -> None:
            recorder.stack.append(entry)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            recorder.stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        work.eval()
        with torch.no_grad(), recorder:
            work(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training

    layers = []
    for path, module_type, op, counted, out_shape, params in recorder.calls:
        cost = replace(counted.cost, params=sum(sizes[n] for n in params))
        layers.append(
            Layer(
                name=path,
                type=module_type,
                op=op,
                category=counted.category,
                input_shape=counted.input_shape,
                output_shape=out_shape,
                cost=cost,
                parameters=params,
                time_s=peak.seconds(cost),
                bound=peak.bound(cost),
            )
        )
    return Profile(
        model=type(model).__name__,
        inputs=tuple(tuple(t.shape) for t in inputs),
        dtype=str(run_dtype).removeprefix("torch."),
        peak=peak,
        layers=tuple(layers),
        parameter_sizes=sizes,
        uncounted=dict(recorder.uncounted),
    )
