"""One counting function per op family, and the table from a call's name to its counter.

Each counter takes the call as the recorder saw it (``func, args, kwargs``)
and its output, and returns the call's category and ``Cost`` under
``onebyone.cost.CONVENTION`` (``params`` left at 0: the recorder fills it
from the parameters the call read).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from onebyone import _checks
from onebyone.cost import Cost, conv_counts, touched, window_reads
from onebyone.geometry import same_padding

__all__ = [
    "CATEGORIES",
    "COUNTERS",
    "FREE",
    "METADATA",
    "SOFTMAX_OPS",
    "Count",
    "first_tensor",
    "tensor_args",
]

CATEGORIES: tuple[str, ...] = (
    "pointwise",
    "depthwise",
    "grouped",
    "conv",
    "linear",
    "attention",
    "norm",
    "elementwise",
    "pooling",
)
"""Layer categories: ``pointwise`` is any convolution with a 1x1 kernel (any
groups); ``depthwise`` has ``groups == in_channels``; ``grouped`` other
``groups > 1``; ``conv`` dense ``k x k``; ``linear`` covers ``F.linear`` and
matrix products; ``attention`` is ``F.scaled_dot_product_attention`` (attention
written out as ``q @ k.transpose(-2, -1)``, ``softmax``, ``@ v`` is counted as
two ``linear`` products and an ``elementwise`` softmax)."""


Args = Sequence[Any]
Kwargs = dict[str, Any]


@dataclass(frozen=True)
class Count:
    category: str
    cost: Cost  # params filled in later, from the parameters the call read
    input_shape: tuple[int, ...]


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str,
         default: Any = None) -> Any:  # fmt: skip
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def tensor_args(args: Sequence[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def first_tensor(out: object) -> torch.Tensor | None:
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


def _count_conv(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
        pad = tuple(same_padding(k, d)[0] for k, d in zip(kernel, dilation, strict=True))
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
    return Count(_conv_category(kernel, groups, c), cost, tuple(x.shape))


def _count_conv_transpose(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
    return Count(_conv_category(kernel, groups, w.shape[0]), cost, tuple(x.shape))


def _count_conv1x1(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
    return Count("pointwise", cost, tuple(x.shape))


def _count_linear(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
    return Count("linear", cost, tuple(x.shape))


def _count_matmul(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
    # matmul/mm/bmm/mv/dot(a, b); addmm/baddbmm/addmv(c, a, b): c added apart, as a bias
    tensors = tensor_args(args, kwargs)
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
    return Count("linear", cost, tuple(a.shape))


def _count_norm(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
        bytes_read=_read_bytes(tensor_args(args, kwargs)),
        bytes_written=out.numel() * out.element_size(),
    )
    return Count("norm", cost, tuple(x.shape))


def _count_elementwise(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
    tensors = tensor_args(args, kwargs)
    cost = Cost(
        other_ops=out.numel(),
        bytes_read=_read_bytes(tensors),
        bytes_written=out.numel() * out.element_size(),
    )
    return Count("elementwise", cost, tuple(tensors[0].shape) if tensors else ())


def _count_pool(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
    return Count("pooling", cost, tuple(x.shape))


def _count_adaptive_pool(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
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
    return Count("pooling", cost, tuple(x.shape))


def _count_reduction(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
    # mean/sum/amax/amin over some axes: a pooling that reads each input element once
    x = _arg(args, kwargs, 0, "input")
    cost = Cost(
        other_ops=x.numel(),
        bytes_read=x.numel() * x.element_size(),
        bytes_written=out.numel() * out.element_size(),
    )
    return Count("pooling", cost, tuple(x.shape))


SOFTMAX_OPS = 5
"""Other ops per element of a softmax: max, subtract, exp, sum, divide (``log_softmax``:
max, subtract, exp, sum, subtract the log)."""


def _count_softmax(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
    x = _arg(args, kwargs, 0, "input")
    cost = Cost(
        other_ops=SOFTMAX_OPS * x.numel(),
        bytes_read=x.numel() * x.element_size(),
        bytes_written=out.numel() * out.element_size(),
    )
    return Count("elementwise", cost, tuple(x.shape))


def _count_attention(func: Any, args: Args, kwargs: Kwargs, out: torch.Tensor) -> Count:
    # F.scaled_dot_product_attention(query (..., L, E), key (..., S, E), value (..., S, Ev),
    #                                attn_mask, dropout_p, is_causal, scale, enable_gqa)
    q, k = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
    v, mask = _arg(args, kwargs, 2, "value"), _arg(args, kwargs, 3, "attn_mask")
    causal = bool(_arg(args, kwargs, 5, "is_causal", False))
    rows = q.numel() // q.shape[-1]  # batch x heads x L queries
    scores = rows * k.shape[-2]  # one per query and key: B x heads x L x S
    # QK^T, then the weights times V; a causal mask still computes every score
    macs = scores * q.shape[-1] + scores * v.shape[-1]
    # per score: the scale, the mask (given or causal) and the softmax
    per_score = 1 + (mask is not None or causal) + SOFTMAX_OPS
    cost = Cost(
        macs=macs,
        other_ops=per_score * scores,
        bytes_read=_read_bytes(t for t in (q, k, v, mask) if isinstance(t, torch.Tensor)),
        bytes_written=out.numel() * out.element_size(),
    )
    return Count("attention", cost, tuple(q.shape))


_Counter = Callable[[Any, Sequence[Any], dict[str, Any], torch.Tensor], Count]

# fmt: off
COUNTERS: dict[str, _Counter] = {
    "conv1x1": _count_conv1x1,
    **dict.fromkeys(("conv1d", "conv2d", "conv3d"), _count_conv),
    **dict.fromkeys(("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
                    _count_conv_transpose),
    "linear": _count_linear,
    **dict.fromkeys(
        ("matmul", "mm", "bmm", "mv", "dot", "addmm", "addmv", "baddbmm"), _count_matmul
    ),
    "scaled_dot_product_attention": _count_attention,
    **dict.fromkeys(("softmax", "log_softmax"), _count_softmax),
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
FREE = frozenset(
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
        "as_tensor", "copy_", "fill_", "zero_", "requires_grad_", "_assert", "roll", "flip",
        "repeat", "tile", "repeat_interleave", "gather", "index_select", "movedim", "swapaxes",
    )
)

# calls that read a tensor's metadata only (shape, dtype, strides), never its elements;
# ``__get__`` (attribute access) reads data only where it gives a tensor (``.T``, ``.data``)
METADATA = frozenset(
    (
        "__get__", "__set__", "__len__", "_set_grad_enabled", "size", "dim", "numel",
        "stride", "is_contiguous", "is_floating_point", "element_size", "data_ptr",
        "storage_offset", "requires_grad_", "_assert",
    )
)
# fmt: on
