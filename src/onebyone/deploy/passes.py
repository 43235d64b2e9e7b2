"""The 1x1 algebra on an exported ATen graph: norm folding and pointwise merging, and
the removal of slices that take a whole dimension.

Each pass takes a ``Program`` (an owned, functional exported program), edits it in
place and returns a ``PassReport``. Patterns are recognised by the operation, not
by the module that produced it: a batch norm is any
``aten._native_batch_norm_legit_no_training`` (``nn.BatchNorm2d``, timm's
``BatchNormAct2d``, ``F.batch_norm(training=False)``) or any per-channel
``x * scale + shift`` whose scale and shift depend on the model's state alone
(``FrozenBatchNorm2d``). Functionalisation has turned in-place ops and views into
values, so a node's users are all its readers. The tensor math is
``onebyone.transforms.fold_bn_weights`` / ``merge_pointwise_weights``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from onebyone.deploy.program import Program
from onebyone.transforms.fold import batchnorm_affine
from onebyone.transforms.merge import merge_pointwise_weights
from onebyone.transforms.report import PassReport

__all__ = [
    "ConvCall",
    "conv_call",
    "drop_whole_slices",
    "fold_norms",
    "merge_pointwise",
    "set_conv_parameters",
]

aten = torch.ops.aten
CONVOLUTIONS = (
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.convolution.default,
)
LINEAR = aten.linear.default
ONEBYONE = torch.ops.onebyone.conv1x1.default
NORM = aten._native_batch_norm_legit_no_training.default
_SCALE_OPS = (aten.mul.Tensor,)
_SHIFT_OPS = (aten.add.Tensor, aten.sub.Tensor)


@dataclass
class ConvCall:
    """A convolution (or ``aten.linear``) node with its arguments normalised."""

    node: fx.Node
    x: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    linear: bool = False
    activation: str | None = None
    residual: fx.Node | None = None

    @property
    def spatial(self) -> int:
        """Number of spatial dimensions (0 for a linear layer)."""
        return 0 if self.linear else len(self.stride)

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel, no padding: a per-pixel matrix product."""
        return not self.linear and not isinstance(self.padding, str) and not any(self.padding)

    @property
    def plain(self) -> bool:
        """No epilogue of its own (``onebyone.conv1x1`` may carry an activation and a
        residual): what follows it sees the convolution itself."""
        return self.activation is None and self.residual is None


def _ints(value: object, n: int, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, int):
        return (value,) * n
    items = tuple(int(v) for v in value)  # type: ignore[attr-defined]
    return items * n if len(items) == 1 else items


def conv_call(node: fx.Node) -> ConvCall | None:
    """The normalised arguments of a convolution / linear node, or ``None``."""
    if node.op != "call_function":
        return None
    args = list(node.args)
    if node.target == LINEAR:
        x, w, b = [*args, None][:3]
        if not (isinstance(x, fx.Node) and isinstance(w, fx.Node)):
            return None
        return ConvCall(node, x, w, b if isinstance(b, fx.Node) else None, (), (), (), 1, True)
    if node.target == ONEBYONE and not node.kwargs:
        x, w, b, stride, groups, activation, residual = [*args, None, None][:7]
        if not (isinstance(x, fx.Node) and isinstance(w, fx.Node)):
            return None
        return ConvCall(
            node, x, w, b if isinstance(b, fx.Node) else None, _ints(stride, 2, 1), (0, 0),
            (1, 1), int(groups), activation=activation,  # type: ignore[arg-type]
            residual=residual if isinstance(residual, fx.Node) else None,
        )  # fmt: skip
    if node.target not in CONVOLUTIONS or node.kwargs:
        return None
    x, w = args[0], args[1]
    if not (isinstance(x, fx.Node) and isinstance(w, fx.Node)):
        return None
    val = w.meta.get("val")
    n = (val.dim() - 2) if isinstance(val, torch.Tensor) else 2
    b = args[2] if len(args) > 2 else None
    if node.target == aten.convolution.default:
        stride, padding, dilation, transposed, _, groups = args[3:9]
        if transposed:
            return None
    else:
        stride = args[3] if len(args) > 3 else None
        padding = args[4] if len(args) > 4 else None
        dilation = args[5] if len(args) > 5 else None
        groups = args[6] if len(args) > 6 else 1
    return ConvCall(
        node, x, w, b if isinstance(b, fx.Node) else None,
        _ints(stride, n, 1), _ints(padding, n, 0), _ints(dilation, n, 1), int(groups),  # type: ignore[arg-type]
    )  # fmt: skip


def set_conv_parameters(call: ConvCall, weight: fx.Node, bias: fx.Node | None) -> None:
    """Point ``call``'s node at another weight and bias (shapes unchanged)."""
    args = list(call.node.args)
    while len(args) < 3:
        args.append(None)
    args[1], args[2] = weight, bias
    call.node.args = tuple(args)
    call.weight, call.bias = weight, bias


def _channel_vector(value: torch.Tensor | None, channels: int, rank: int) -> torch.Tensor | None:
    """``value`` as ``(K,)`` when, broadcast against a rank-``rank`` output (``(N, K, ...)``),
    it varies along the channel dim only: ``(K, 1, 1)``, ``(1, K, 1, 1)``, ``(K,)`` for
    ``(N, K)``, or one element."""
    if value is None or not value.is_floating_point() or value.dim() > rank or rank < 2:
        return None
    if value.numel() == 1:
        return value.reshape(1).expand(channels)
    padded = [1] * (rank - value.dim()) + list(value.shape)
    if padded[0] != 1 or padded[1] != channels or any(d != 1 for d in padded[2:]):
        return None
    return value.reshape(channels)


def _dtype(node: fx.Node) -> torch.dtype | None:
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _fold(program: Program, call: ConvCall, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``call`` computes ``scale * conv(x) + shift`` from now on (new constants)."""
    weight = program.value(call.weight)
    bias = program.value(call.bias) if call.bias is not None else None
    assert weight is not None  # checked by the caller
    scale, shift = scale.detach(), shift.detach()
    bias = None if bias is None else bias.detach()
    w64 = weight.detach().to(torch.float64)
    folded_w = w64 * scale.to(torch.float64).reshape(-1, *([1] * (weight.dim() - 1)))
    b64 = torch.zeros_like(scale, dtype=torch.float64) if bias is None else bias.double()
    folded_b = b64 * scale.double() + shift.double()
    name = str(call.weight.name)
    w_node = program.add_constant(folded_w.to(weight.dtype), f"{name}_folded")
    b_node = program.add_constant(folded_b.to(weight.dtype), f"{name}_folded_bias")
    set_conv_parameters(call, w_node, b_node)


def _foldable_layer(program: Program, node: object) -> tuple[ConvCall | None, str]:
    if not isinstance(node, fx.Node):
        return None, "its input is not a node"
    call = conv_call(node)
    if call is None:
        return None, "it does not follow a convolution or linear layer"
    if not call.plain:
        return None, "an activation or residual sits between the layer and the norm"
    if program.value(call.weight) is None:
        return None, "the layer's weight is computed from the input"
    if call.bias is not None and program.value(call.bias) is None:
        return None, "the layer's bias is computed from the input"
    if len(node.users) != 1:
        return None, "the layer's output has other readers"
    return call, ""


def fold_norms(program: Program) -> PassReport:
    """Fold every inference-mode norm and per-channel affine after a convolution or linear
    layer into that layer's weight and bias.

    Shape:
        Unchanged: the program computes the same function.
    """
    report = PassReport("fold_norms")
    for norm in list(program.calls([NORM])):
        x, weight, bias, mean, var, _momentum, eps = (list(norm.args) + [None] * 7)[:7]
        where = norm.name
        outs = list(norm.users)
        result = next((u for u in outs if u.target is operator.getitem and u.args[1] == 0), None)
        others = [u for u in outs if u is not result and u.users]
        call, why = _foldable_layer(program, x)
        stats = [program.value(t) if t is not None else None for t in (weight, bias, mean, var)]
        if call is not None and (stats[2] is None or stats[3] is None):
            call, why = None, "its running statistics are computed from the input"
        if call is not None and (
            (weight is not None and stats[0] is None) or (bias is not None and stats[1] is None)
        ):
            call, why = None, "its affine parameters are computed from the input"
        if call is not None and (result is None or others):
            call, why = None, "its saved statistics are read"
        if call is not None and call.linear and len(program.shape(call.node) or ()) != 2:
            call, why = None, "a linear layer's output is not (N, F): the norm acts on another dim"
        if call is None:
            report.skipped.append((where, why))
            continue
        mean_v, var_v = stats[2], stats[3]
        assert mean_v is not None and var_v is not None  # checked above
        scale, shift = batchnorm_affine(mean_v, var_v, float(eps), stats[0], stats[1])  # type: ignore[arg-type]
        _fold(program, call, scale, shift)
        assert result is not None
        result.replace_all_uses_with(call.node)
        report.applied.append(f"{call.node.name} <- {where}")
    _fold_affines(program, report)
    return report


def _fold_affines(program: Program, report: PassReport) -> None:
    """``conv(x) * s + t`` with per-channel constants ``s``, ``t`` (a frozen norm)."""
    for node in list(program.graph.nodes):
        call = conv_call(node)
        if call is None or not call.plain or program.value(call.weight) is None:
            continue
        if call.bias is not None and program.value(call.bias) is None:
            continue
        rank = len(program.shape(node) or ())
        channels = int(program.value(call.weight).shape[0])  # type: ignore[union-attr]
        absorbed: list[str] = []
        while True:
            user = _sole_user(call.node)
            if user is None or user.op != "call_function" or user.kwargs:
                break
            if user.target not in _SCALE_OPS + _SHIFT_OPS or len(user.args) != 2:
                break
            a, b = user.args
            other = b if a is call.node else a if b is call.node else None
            if other is None or (user.target == aten.sub.Tensor and a is not call.node):
                break
            if isinstance(other, (int, float)) and not isinstance(other, bool):
                value: torch.Tensor | None = torch.tensor(float(other), dtype=torch.float64)
            else:
                value = program.value(other)
            vector = _channel_vector(value, channels, rank)
            same_dtype = _dtype(user) == _dtype(call.node)
            if vector is None or not same_dtype or (call.linear and rank != 2):
                break
            ones, zeros = torch.ones_like(vector), torch.zeros_like(vector)
            if user.target in _SCALE_OPS:
                _fold(program, call, vector, zeros)
            else:
                _fold(program, call, ones, -vector if user.target == aten.sub.Tensor else vector)
            user.replace_all_uses_with(call.node)
            program.graph.erase_node(user)
            absorbed.append(user.name)
        if absorbed:
            report.applied.append(f"{node.name} <- per-channel {' '.join(absorbed)}")


def _macs_per_pixel(c: int, m: int, k: int, stride_area: int) -> tuple[int, int]:
    """Multiplies per output pixel of ``C -> M -> K`` apart and merged."""
    return stride_area * m * c + k * m, k * c


def merge_pointwise(program: Program) -> PassReport:
    """Merge a 1x1 convolution into the next when nothing sits between them and the merged
    layer needs fewer multiplies: ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``.

    Shape:
        Unchanged: the program computes the same function.
    """
    report = PassReport("merge_pointwise")
    for node in list(program.graph.nodes):
        second = conv_call(node)
        if second is None or second.linear or second.spatial != 2 or not second.pointwise:
            continue
        if not second.plain:
            continue
        first = conv_call(second.x)
        if first is None or first.linear or first.spatial != 2 or not first.pointwise:
            continue
        if not first.plain:
            continue
        where = f"{first.node.name} -> {node.name}"
        w1, w2 = program.value(first.weight), program.value(second.weight)
        if w1 is None or w2 is None:
            continue
        if first.groups != 1 or second.groups != 1:
            report.skipped.append((where, "grouped"))
            continue
        if any(d != 1 for d in first.dilation + second.dilation) or len(first.node.users) != 1:
            report.skipped.append((where, "the first layer's output has other readers"))
            continue
        m, c = w1.shape[:2]
        k = w2.shape[0]
        apart, merged = _macs_per_pixel(c, m, k, second.stride[0] * second.stride[1])
        if merged > apart:
            report.skipped.append((where, f"merged ({c}->{k}) costs more than {c}->{m}->{k}"))
            continue
        b1 = program.value(first.bias) if first.bias is not None else None
        b2 = program.value(second.bias) if second.bias is not None else None
        if (first.bias is not None and b1 is None) or (second.bias is not None and b2 is None):
            continue
        w, b = merge_pointwise_weights(w1, b1, w2, b2)
        stride = [a * s for a, s in zip(first.stride, second.stride, strict=True)]
        w_node = program.add_constant(w.reshape(k, c, 1, 1), f"{node.name}_merged")
        b_node = None if b is None else program.add_constant(b, f"{node.name}_merged_bias")
        with program.graph.inserting_before(node):
            new = program.graph.call_function(
                aten.convolution.default,
                (first.x, w_node, b_node, stride, [0, 0], [1, 1], False, [0, 0], 1),
            )

        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        report.applied.append(where)
    return report


_WHOLE = 2**62  # an end at or past this takes the whole dimension, whatever its size


def _whole(dim_size: object, start: object, end: object, step: object) -> bool:
    """Whether ``[start:end:step]`` takes every index of a dimension of ``dim_size``."""
    if start not in (None, 0) or step not in (None, 1):
        return False
    if end is None or (isinstance(end, int) and end >= _WHOLE):
        return True
    # a symbolic size is never compared (that would guard on it): only a known one
    return isinstance(end, int) and isinstance(dim_size, int) and end == dim_size


def drop_whole_slices(program: Program) -> PassReport:
    """Remove slices that take a whole dimension, and writes into them.

    Exporting with a dynamic batch keeps ``x[:, :C]`` on a tensor of ``C`` channels as
    ``slice(x, 0, 0, INT64_MAX)`` (the batch dimension's slice cannot be dropped while its
    size is symbolic), and functionalisation turns an in-place op on such a view
    (``x[:, :C] += shortcut``) into ``slice_scatter`` into the whole tensor. Both are the
    identity on their value: ``slice`` returns its input, ``slice_scatter`` its source.
    Engines otherwise copy tensors for them (OpenVINO: a scatter per write).

    Shape:
        Unchanged: the program computes the same function.
    """
    report = PassReport("drop_whole_slices")
    for node in program.calls((aten.slice.Tensor, aten.slice_scatter.default)):
        scatter = node.target == aten.slice_scatter.default
        whole, kept = node.args[0], node.args[1] if scatter else node.args[0]
        dim, start, end, step = _slice_arguments(node, 2 if scatter else 1)
        shape = program.shape(whole)
        if shape is None or not isinstance(dim, int) or not isinstance(kept, fx.Node):
            continue
        if not _whole(shape[dim], start, end, step):
            continue
        if scatter and [str(d) for d in program.shape(kept) or ()] != [str(d) for d in shape]:
            continue
        if kept.op == "placeholder" and any(u.op == "output" for u in node.users):
            continue  # an output must not become the input itself
        node.replace_all_uses_with(kept)
        report.applied.append(node.name)
    return report


def _slice_arguments(node: fx.Node, first: int) -> list[object]:
    """``(dim, start, end, step)`` of a ``slice`` (``first=1``) or ``slice_scatter`` (2)."""
    given = list(node.args[first:])
    names, defaults = ("dim", "start", "end", "step"), (0, None, None, 1)
    return [given[i] if i < len(given) else node.kwargs.get(name, default)
            for i, (name, default) in enumerate(zip(names, defaults, strict=True))]  # fmt: skip


def count_norms_after_layers(program: Any) -> int:
    """How many norm nodes read a convolution or linear output directly (for reports)."""
    graph = program.graph if hasattr(program, "graph") else program
    return sum(
        1
        for n in graph.nodes
        if n.op == "call_function"
        and n.target == NORM
        and isinstance(n.args[0], fx.Node)
        and conv_call(n.args[0]) is not None
    )
