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
from onebyone.geometry import is_pointwise
from onebyone.transforms.branches import (
    diagonal_kernel,
    kernel_then_pointwise,
    pointwise_then_kernel,
    sum_branch_weights,
)
from onebyone.transforms.fold import batchnorm_affine
from onebyone.transforms.merge import merge_pointwise_weights
from onebyone.transforms.report import PassReport

__all__ = [
    "ConvCall",
    "conv_call",
    "drop_whole_slices",
    "fold_norms",
    "merge_branches",
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
    kernel: tuple[int, ...] | None = None

    @property
    def spatial(self) -> int:
        """Number of spatial dimensions (0 for a linear layer)."""
        return 0 if self.linear else len(self.stride)

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel, no padding: a per-pixel matrix product (any stride)."""
        kernel = self.kernel
        return not self.linear and kernel is not None and is_pointwise(kernel, self.padding)

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
            residual=residual if isinstance(residual, fx.Node) else None, kernel=(1, 1),
        )  # fmt: skip
    if node.target not in CONVOLUTIONS or node.kwargs:
        return None
    x, w = args[0], args[1]
    if not (isinstance(x, fx.Node) and isinstance(w, fx.Node)):
        return None
    val = w.meta.get("val")
    n = (val.dim() - 2) if isinstance(val, torch.Tensor) else 2
    kernel = tuple(int(k) for k in val.shape[2:]) if isinstance(val, torch.Tensor) else None
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
        kernel=kernel,
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
        _fold_norm(program, norm, report)
    program.graph.eliminate_dead_code()  # a folded norm no longer reads its layer
    _fold_affines(program, report)
    return report


def _fold_norm(program: Program, norm: fx.Node, report: PassReport) -> None:
    """Fold one inference-mode norm into the layer it reads, or say why not."""
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
        return
    mean_v, var_v = stats[2], stats[3]
    assert mean_v is not None and var_v is not None  # checked above
    scale, shift = batchnorm_affine(mean_v, var_v, float(eps), stats[0], stats[1])  # type: ignore[arg-type]
    _fold(program, call, scale, shift)
    assert result is not None
    result.replace_all_uses_with(call.node)
    report.applied.append(f"{call.node.name} <- {where}")


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


def _area(shape: tuple[Any, ...] | None) -> int | None:
    """``H * W`` of an ``(N, C, H, W)`` shape, or ``None`` when a size is symbolic."""
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return int(shape[2]) * int(shape[3])


def _taps(call: ConvCall) -> int:
    return int(torch.Size(call.kernel or (1, 1)).numel())


def _chain_plan(program: Program, first: ConvCall, second: ConvCall) -> tuple[str, str]:
    """How ``first -> second`` merges (``"pointwise"``, ``"kernel"``: a 1x1 then a k x k,
    ``"pointwise_after"``: a k x k then a 1x1) and ``""``, or ``""`` and why not."""
    if first.groups != 1 or second.groups != 1:
        return "", "grouped"
    if len(first.node.users) != 1:
        return "", "the first layer's output has other readers"
    if first.pointwise and second.pointwise:
        kind = "pointwise"
    elif second.pointwise:
        kind = "pointwise_after"
    else:
        kind = "kernel"
        if any(s != 1 for s in first.stride):
            return "", "a strided 1x1 before a k x k convolution"
        bias = program.value(first.bias) if first.bias is not None else None
        if bias is not None and bool(bias.any()) and any(second.padding):
            return "", "the 1x1's bias would reach the k x k's zero padding"
    before, after = _area(program.shape(first.node)), _area(program.shape(second.node))
    if before is None or after is None:
        return "", "a symbolic image size"
    w1, w2 = program.value(first.weight), program.value(second.weight)
    assert w1 is not None and w2 is not None  # checked by the caller
    c, m, k = int(w1.shape[1]), int(w1.shape[0]), int(w2.shape[0])
    apart = before * m * c * _taps(first) + after * k * m * _taps(second)
    merged = after * k * c * max(_taps(first), _taps(second))
    if merged > apart:
        return "", f"merged ({c}->{k}) costs more MACs than {c}->{m}->{k} ({merged} > {apart})"
    return kind, ""


def merge_pointwise(program: Program) -> PassReport:
    """Merge a 1x1 convolution into the convolution next to it (either side) when nothing
    sits between them and the merged layer needs fewer multiplies.

    ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``, per kernel tap when one of
    them is k x k (``onebyone.transforms.branches``). A 1x1 with a bias before a padded
    k x k is left apart: the padding would read zeros where the chain reads the bias.

    Shape:
        Unchanged: the program computes the same function.
    """
    report = PassReport("merge_pointwise")
    program.graph.eliminate_dead_code()  # a replaced node no longer counts as a reader
    for node in list(program.graph.nodes):
        second = conv_call(node)
        if second is None or second.linear or second.spatial != 2 or not second.plain:
            continue
        first = conv_call(second.x)
        if first is None or first.linear or first.spatial != 2 or not first.plain:
            continue
        if not (first.pointwise or second.pointwise) or isinstance(second.padding, str):
            continue
        if isinstance(first.padding, str):
            continue
        w1, w2 = program.value(first.weight), program.value(second.weight)
        b1 = program.value(first.bias) if first.bias is not None else None
        b2 = program.value(second.bias) if second.bias is not None else None
        if w1 is None or w2 is None:
            continue
        if (first.bias is not None and b1 is None) or (second.bias is not None and b2 is None):
            continue
        where = f"{first.node.name} -> {node.name}"
        kind, why = _chain_plan(program, first, second)
        if not kind:
            report.skipped.append((where, why))
            continue
        if kind == "kernel":
            w, b = pointwise_then_kernel(w1, b1, w2, b2)
            geometry = (second.stride, second.padding, second.dilation)
        elif kind == "pointwise_after":
            w, b = kernel_then_pointwise(w1, b1, w2, b2)
            stride = [a * s for a, s in zip(first.stride, second.stride, strict=True)]
            geometry = (tuple(stride), first.padding, first.dilation)
        else:
            w, b = merge_pointwise_weights(w1, b1, w2, b2)
            w = w.reshape(w.shape[0], w.shape[1], 1, 1)  # (K, C) -> (K, C, 1, 1)
            stride = [a * s for a, s in zip(first.stride, second.stride, strict=True)]
            geometry = (tuple(stride), (0, 0), (1, 1))
        w_node = program.add_constant(w, f"{node.name}_merged")
        b_node = None if b is None else program.add_constant(b, f"{node.name}_merged_bias")
        with program.graph.inserting_before(node):
            new = program.graph.call_function(
                aten.convolution.default,
                (first.x, w_node, b_node, *[list(g) for g in geometry], False, [0, 0], 1),
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        report.applied.append(f"{where} ({'x'.join(map(str, w.shape[2:]))})")
    return report


# norms that compute batch statistics (a model exported in training mode)
_TRAINING_NORMS = (
    aten._native_batch_norm_legit_functional.default,
    aten._native_batch_norm_legit.default,
    aten.native_batch_norm.default,
    aten.batch_norm.default,
)


@dataclass
class _Branch:
    """One term ``scale * branch(source)`` of a sum: a convolution, an inference-mode
    norm, or the identity (``call`` and ``norm`` both ``None``)."""

    node: fx.Node
    source: fx.Node
    scale: torch.Tensor  # (K,) float64
    call: ConvCall | None = None
    norm: tuple[torch.Tensor, torch.Tensor] | None = None  # the norm's (scale, shift)
    refused: str = ""


def _constant_vector(program: Program, value: object, node: fx.Node) -> torch.Tensor | None:
    """``value`` as a per-channel ``(K,)`` float64 constant for ``node``'s output (a
    number, or a state tensor varying along channels only), else ``None``."""
    shape = program.shape(node)
    assert shape is not None  # checked by the caller
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((int(shape[1]),), float(value), dtype=torch.float64)
    if not isinstance(value, fx.Node) or _dtype(value) != _dtype(node):
        return None
    if program.from_input(value):
        return None
    vector = _channel_vector(program.value(value), int(shape[1]), len(shape))
    return None if vector is None else vector.detach().double()


_Term = tuple[fx.Node | None, torch.Tensor]  # (node, factor), or (None, a constant term)


def _tree_operands(program: Program, node: fx.Node) -> list[_Term] | None:
    """``node`` as a linear combination of nodes of its own shape and constants:
    ``a + alpha b``, ``a - alpha b`` (``b`` may be a per-channel constant), ``a * c``
    with ``c`` a per-channel constant; else ``None``."""
    if node.op != "call_function" or set(node.kwargs) - {"alpha"} or len(node.args) != 2:
        return None
    shape = program.shape(node)
    if shape is None or len(shape) != 4:
        return None

    def term(v: object) -> fx.Node | None:
        ok = isinstance(v, fx.Node) and str(program.shape(v)) == str(shape)
        ok = ok and _dtype(v) == _dtype(node) and program.from_input(v)  # type: ignore[arg-type]
        return v if ok else None  # type: ignore[return-value]

    a, b = node.args
    if node.target in (aten.add.Tensor, aten.sub.Tensor):
        alpha = node.kwargs.get("alpha", 1)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            return None
        sign = (-1.0 if node.target == aten.sub.Tensor else 1.0) * float(alpha)
        one = torch.ones(int(shape[1]), dtype=torch.float64)
        out: list[_Term] = []
        for v, factor in ((a, 1.0), (b, sign)):
            if term(v) is not None:
                out.append((term(v), one * factor))
            elif (c := _constant_vector(program, v, node)) is not None:
                out.append((None, c * factor))
            else:
                return None
        return out if any(n is not None for n, _ in out) else None
    if node.target == aten.mul.Tensor:
        for v, other in ((a, b), (b, a)):
            vector = _constant_vector(program, other, node)
            if term(v) is not None and vector is not None:
                return [(term(v), vector)]
    return None


def _absorbed(program: Program, node: fx.Node) -> bool:
    """Whether ``node`` is an inner term of a larger sum (its one reader combines it)."""
    user = _sole_user(node)
    if user is None:
        return False
    operands = _tree_operands(program, user)
    if operands is None or not any(a is node for a, _ in operands):
        return False
    return user.target != aten.mul.Tensor or _absorbed(program, user)


def _terms(program: Program, node: fx.Node, scale: torch.Tensor, root: bool) -> list[_Term]:
    """``node`` as ``sum scale_i * leaf_i + constants`` (a leaf: a node that is not a
    combination; a constant term comes as ``(None, value)``)."""
    operands = _tree_operands(program, node) if root or len(node.users) == 1 else None
    if operands is None:
        return [(node, scale)]
    out: list[_Term] = []
    for child, factor in operands:
        if child is None:
            out.append((None, scale * factor))
        else:
            out += _terms(program, child, scale * factor, False)
    return out


def _branch(program: Program, leaf: fx.Node, scale: torch.Tensor) -> _Branch:
    """What ``leaf`` computes from which source."""
    call = conv_call(leaf)
    if call is not None and not call.linear and call.spatial == 2 and call.plain:
        if program.value(call.weight) is None or isinstance(call.padding, str):
            return _Branch(leaf, leaf, scale)
        if call.bias is not None and program.value(call.bias) is None:
            return _Branch(leaf, leaf, scale)
        refused = "" if len(leaf.users) == 1 else f"{leaf.name}'s output is read elsewhere"
        return _Branch(leaf, call.x, scale, call=call, refused=refused)
    base = leaf.args[0] if leaf.target is operator.getitem and leaf.args[1] == 0 else None
    if not isinstance(base, fx.Node) or not isinstance(base.args[0], fx.Node):
        return _Branch(leaf, leaf, scale)
    source = base.args[0]
    if base.target in _TRAINING_NORMS:
        return _Branch(leaf, source, scale, refused=f"{base.name} is a norm in training mode")
    if base.target != NORM:
        return _Branch(leaf, leaf, scale)
    weight, bias, mean, var, _momentum, eps = (list(base.args[1:]) + [None] * 6)[:6]
    values = [program.value(t) if t is not None else None for t in (weight, bias, mean, var)]
    given = [t is not None for t in (weight, bias, mean, var)]
    needed = [g and v is None for g, v in zip(given, values, strict=True)]
    if any(needed) or values[2] is None or values[3] is None:
        return _Branch(leaf, leaf, scale)  # computed from the input: not a norm of the state
    affine = batchnorm_affine(values[2], values[3], float(eps), values[0], values[1])  # type: ignore[arg-type]
    read = [u for u in base.users if u is not leaf and u.users]
    refused = f"{leaf.name}'s output is read elsewhere" if len(leaf.users) != 1 or read else ""
    return _Branch(leaf, source, scale, norm=affine, refused=refused)


def _centre(call: ConvCall) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per axis: the kernel extent and ``d (k - 1) - 2 p`` (twice the centre's offset)."""
    kernel = call.kernel or (1, 1)
    padding = tuple(int(p) for p in call.padding)
    offsets = tuple(
        d * (k - 1) - 2 * p for k, p, d in zip(kernel, padding, call.dilation, strict=True)
    )
    return kernel, offsets


def _compatible(branches: list[_Branch]) -> str:
    """Why these branches of one source cannot be one convolution, or ``""``."""
    refused = next((b.refused for b in branches if b.refused), "")
    if refused:
        return refused
    convs = [b.call for b in branches if b.call is not None]
    if len({c.stride for c in convs}) > 1:
        return "the branches differ in stride"
    if len({c.groups for c in convs}) > 1:
        return "the branches differ in groups"
    dilations = {
        d for c in convs for k, d in zip(c.kernel or (1, 1), c.dilation, strict=True) if k > 1
    }
    if len(dilations) > 1:
        return "the branches differ in dilation"
    centres = {_centre(c)[1] for c in convs}
    if len(branches) > len(convs):
        if any(s != 1 for s in convs[0].stride):
            return "an identity branch beside a strided convolution"
        centres.add((0, 0))
    if len(centres) > 1:
        return "the branches' kernels are not centred on the same pixel (padding)"
    kernels = [c.kernel or (1, 1) for c in convs]
    size = tuple(max(k[i] for k in kernels) for i in range(2))
    if any((size[i] - k[i]) % 2 for k in kernels for i in range(2)):
        return "the kernels differ by an odd size"
    return ""


def _merge_group(
    program: Program, branches: list[_Branch], anchor: fx.Node, constant: torch.Tensor | None
) -> fx.Node:
    """One convolution node computing the sum of the (compatible) ``branches``, plus
    ``constant`` (per channel) when given."""
    convs = [b.call for b in branches if b.call is not None]
    first = convs[0]
    kernels = [c.kernel or (1, 1) for c in convs]
    size = tuple(max(k[i] for k in kernels) for i in range(2))
    dilation = next((c.dilation for c in convs if any(k > 1 for k in c.kernel or (1, 1))), (1, 1))
    offsets = _centre(first)[1]
    padding = [(d * (k - 1) - o) // 2 for k, d, o in zip(size, dilation, offsets, strict=True)]
    first_weight = program.value(first.weight)
    assert first_weight is not None  # checked by _branch
    dtype, channels = first_weight.dtype, int(first_weight.shape[0])
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    for b in branches:
        if b.call is not None:
            weight = program.value(b.call.weight)
            assert weight is not None  # checked by _branch
            weights.append(weight.double())
            biases.append(program.value(b.call.bias) if b.call.bias is not None else None)
        else:  # a norm, or the identity
            ones = torch.ones(channels, dtype=torch.float64)
            factor, shift = b.norm if b.norm is not None else (ones, None)
            weights.append(diagonal_kernel(factor.double(), first.groups))
            biases.append(shift)
    scales = [b.scale.expand(channels) if b.scale.dim() == 0 else b.scale for b in branches]
    w, bias = sum_branch_weights(weights, biases, scales, size)
    if constant is not None:
        bias = bias + constant.to(bias.dtype)
    w_node = program.add_constant(w.to(dtype), f"{first.node.name}_branches")
    b_node = program.add_constant(bias.to(dtype), f"{first.node.name}_branches_bias")
    with program.graph.inserting_before(anchor):
        new = program.graph.call_function(
            aten.convolution.default,
            (first.x, w_node, b_node, list(first.stride), padding, list(dilation),
             False, [0, 0], first.groups),
        )  # fmt: skip
    new.meta = dict(anchor.meta)
    return new


def merge_branches(program: Program) -> PassReport:
    """Sum parallel branches into one convolution: convolutions, inference-mode norms
    and the identity reading the same input, whose outputs are added (through chains
    of ``add``/``sub`` and per-channel constant scales), become one convolution whose
    kernel is the sum of theirs (smaller kernels zero-padded, centred; a norm or the
    identity a diagonal kernel, grouped like the convolutions) and whose bias is the
    sum of theirs. Norms and per-channel affines after the new convolution are then
    folded into it. Run it after ``fold_norms``: each convolution's own norm is then
    part of its weight.

    Left apart, and named in the report: branches that differ in stride, groups or
    dilation, whose kernels are not centred on the same pixel, a norm in training
    mode, a branch whose output is read elsewhere.

    Shape:
        Unchanged: the program computes the same function.
    """
    report = PassReport("merge_branches")
    program.graph.eliminate_dead_code()  # a replaced node no longer counts as a reader
    merged: list[fx.Node] = []
    for node in list(program.graph.nodes):
        if not node.users or node.target not in (aten.add.Tensor, aten.sub.Tensor):
            continue
        if _tree_operands(program, node) is None or _absorbed(program, node):
            continue
        one = torch.ones((), dtype=torch.float64)
        terms = _terms(program, node, one, True)
        branches = [_branch(program, leaf, s) for leaf, s in terms if leaf is not None]
        # a term that other branches read is their identity branch, whatever computed it
        sources = {b.source for b in branches if b.source is not b.node}
        branches = [_Branch(b.node, b.node, b.scale) if b.node in sources else b for b in branches]
        constant = sum((c for leaf, c in terms if leaf is None), torch.zeros(()).double())
        groups: dict[fx.Node, list[_Branch]] = {}
        for b in branches:
            groups.setdefault(b.source, []).append(b)
        ready: dict[fx.Node, list[_Branch]] = {}
        for source, group in groups.items():
            if len(group) < 2 or not any(b.call is not None for b in group):
                continue
            why = _compatible(group)
            if why:
                report.skipped.append((" + ".join(b.node.name for b in group), why))
            else:
                ready[source] = group
        rest = [b for b in branches if b.source not in ready]
        if ready and any(not bool((b.scale == 1).all()) for b in rest):
            report.skipped.append((node.name, "the sum's other terms are scaled"))
            continue
        done: dict[fx.Node, fx.Node] = {}
        for source, group in ready.items():
            done[source] = _merge_group(program, group, node, constant if not done else None)
            where = " + ".join(b.node.name for b in group)
            report.applied.append(f"{where} -> {done[source].name}")
        if not done:
            continue
        value = None
        with program.graph.inserting_before(node):
            for term in [*done.values(), *(b.node for b in rest)]:
                if value is None:
                    value = term
                    continue
                value = program.graph.call_function(aten.add.Tensor, (value, term))
                value.meta = dict(node.meta)
        assert value is not None
        node.replace_all_uses_with(value)
        merged += done.values()
    program.graph.eliminate_dead_code()  # the merged branches no longer read anything
    for norm in list(program.calls([NORM])):
        if norm.args[0] in merged:
            _fold_norm(program, norm, report)
    program.graph.eliminate_dead_code()
    _fold_affines(program, report)
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
