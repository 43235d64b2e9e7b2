"""``merge_pointwise``: consecutive pointwise affine layers become one 1x1 convolution.

A 1x1 convolution (groups 1, no padding) is the matrix ``W (K, C)`` applied at
every pixel, and an eval-mode batch norm is the diagonal matrix ``diag(s)``
plus a shift. With nothing non-linear between them, two such maps compose:
``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``, and strides multiply
(subsampling twice is subsampling once by the product). So

- 1x1 -> 1x1 becomes one 1x1 (``W2 W1``, ``W2 b1 + b2``);
- 1x1 -> batch norm folds the norm in (``diag(s) W``, ``s * b + t``);
- batch norm -> 1x1 folds it the other way (``W diag(s)``, ``W t + b``).

Merging a bottleneck (``C -> M -> K`` with small ``M``) costs more multiplies
than it saves; ``only_if_cheaper=True`` keeps those apart.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Literal, cast, overload

import torch
from torch import fx, nn

from onebyone.geometry import is_pointwise
from onebyone.nn.conv import Conv1x1
from onebyone.nn.untouchable import copy_module, global_hooks, why_untouchable
from onebyone.transforms._fx import (
    activation_of,
    any_inplace,
    call_counts,
    chain_proofs,
    graph_module,
    owner_counts,
    plain_sequentials,
    report_untouchable,
    set_module,
    trace,
)
from onebyone.transforms.fold import (
    _BN_TYPES,
    _check_example,
    batchnorm_affine,
    check_eval,
    check_model,
    fold_conv_bn,
    known_base,
    why_not_foldable,
)
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import check_transform

__all__ = ["merge_pointwise", "merge_pointwise_weights"]


def merge_pointwise_weights(
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compose two pointwise maps: ``W2 (W1 x + b1) + b2 = W x + b``.

    Computed in float64, returned in ``w2``'s dtype; ``b`` is ``None`` only when
    both biases are.

    Args:
        w1: ``(M, C)`` or ``(M, C, 1, 1)``.
        b1: ``(M,)`` or ``None``.
        w2: ``(K, M)`` or ``(K, M, 1, 1)``.
        b2: ``(K,)`` or ``None``.

    Shape:
        ``-> W (K, C)`` (4-D ``(K, C, 1, 1)`` when ``w2`` is 4-D), ``b (K,)``.

    Example:
        >>> import torch
        >>> w, b = merge_pointwise_weights(torch.eye(2) * 2, torch.ones(2), torch.ones(1, 2), None)
        >>> w.tolist(), b.tolist()
        ([[2.0, 2.0]], [2.0])
    """
    m1 = w1.detach().reshape(w1.shape[0], -1).to(torch.float64)  # (M, C)
    m2 = w2.detach().reshape(w2.shape[0], -1).to(torch.float64)  # (K, M)
    if m2.shape[1] != m1.shape[0]:
        raise ValueError(
            f"Invalid value for argument `w2`. Expected {m1.shape[0]} input channels (the "
            f"outputs of w1 {tuple(w1.shape)}). Received w2 of shape {tuple(w2.shape)}."
        )
    w = m2 @ m1  # (K, C)
    b: torch.Tensor | None = None
    if b1 is not None:
        b = m2 @ b1.detach().to(torch.float64)  # (K,)
    if b2 is not None:
        b = b2.detach().to(torch.float64) if b is None else b + b2.detach().to(torch.float64)
    if w2.dim() == 4:
        w = w.reshape(w.shape[0], w.shape[1], 1, 1)  # (K, C) -> (K, C, 1, 1)
    return w.to(w2.dtype), None if b is None else b.to(w2.dtype)


def _pointwise(module: Any) -> str | None:
    """Why ``module`` is not a plain pointwise convolution, or ``None`` when it is."""
    reason = why_untouchable(module, known_base(module))
    if reason is not None:
        return reason
    if isinstance(module, Conv1x1):
        return "it is grouped" if module.groups != 1 else None
    if type(module) is nn.Conv2d:
        if not is_pointwise(module.kernel_size):
            return f"its kernel is {tuple(module.kernel_size)}, not 1x1"
        if module.padding != (0, 0):
            return "it pads its input (a padded 1x1 adds a border of bias)"
        return "it is grouped" if module.groups != 1 else None
    return f"{type(module).__name__} is not a 1x1 convolution"


def _stride(module: Any) -> tuple[int, int]:
    return tuple(module.stride)


def _merge_convs(first: Any, second: Any) -> nn.Module:
    """One layer of ``second``'s type computing ``second(first(x))``."""
    w, b = merge_pointwise_weights(first.weight, first.bias, second.weight, second.bias)
    s1, s2 = _stride(first), _stride(second)
    stride = (s1[0] * s2[0], s1[1] * s2[1])
    k, c = w.shape[0], w.shape[1]
    factory: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    merged: nn.Module
    if isinstance(second, Conv1x1):
        merged = Conv1x1(
            c, k, stride=stride, bias=b is not None, activation=second.activation, **factory
        )
    else:
        merged = nn.Conv2d(c, k, 1, stride=stride, bias=b is not None, **factory)
    grad = bool(second.weight.requires_grad)
    merged.weight = nn.Parameter(w.reshape(merged.weight.shape), requires_grad=grad)
    if b is not None:
        merged.bias = nn.Parameter(b, requires_grad=grad)
    return merged.train(second.training)


def _merge_bn_conv(bn: Any, conv: Any) -> nn.Module:
    """A copy of ``conv`` computing ``conv(bn(x))``: ``W diag(s)``, ``W t + b``."""
    scale, shift = batchnorm_affine(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    c = scale.numel()
    w = conv.weight
    k = w.shape[0]
    w_scaled = w.detach().reshape(k, c).to(torch.float64) * scale  # (K, C) * (C,)
    b = w.detach().reshape(k, c).to(torch.float64) @ shift  # (K,)
    if conv.bias is not None:
        b = b + conv.bias.detach().to(torch.float64)
    out = copy_module(conv)
    grad = bool(w.requires_grad)
    out.weight = nn.Parameter(w_scaled.reshape(w.shape).to(w.dtype), requires_grad=grad)
    if "bias" not in out._parameters and hasattr(out, "bias"):
        delattr(out, "bias")
    out.bias = nn.Parameter(b.to(w.dtype), requires_grad=grad)
    return out


def _plan(first: Any, second: Any, only_if_cheaper: bool) -> tuple[str | None, str]:
    """``(why not, kind)``: ``why not`` is ``None`` when ``first -> second`` can merge."""
    first_bn, second_bn = isinstance(first, _BN_TYPES), isinstance(second, _BN_TYPES)
    if first_bn and second_bn:
        return "two batch norms in a row (no convolution to merge into)", ""
    if second_bn:
        reason = _pointwise(first)
        return (
            f"the first layer: {reason}" if reason else why_not_foldable(first, second)
        ), "conv-bn"
    if first_bn:
        reason = _pointwise(second)
        untouchable = why_untouchable(first, known_base(first))
        if reason is None and untouchable is not None:
            reason = f"the batch norm {untouchable}"
        if reason is None and type(first) is not nn.BatchNorm2d:
            reason = f"{type(first).__name__} before a 2-D convolution"
        if reason is None and (first.running_mean is None or first.training):
            reason = "the batch norm has no running statistics or is in training mode"
        if reason is None and first.num_features != second.weight.shape[1]:
            reason = "channel counts differ"
        return reason, "bn-conv"
    for module, role in ((first, "first"), (second, "second")):
        reason = _pointwise(module)
        if reason is not None:
            return f"the {role} layer: {reason}", ""
    if isinstance(first, Conv1x1) and first.activation is not None:
        return f"the first layer ends in an activation ({first.activation})", ""
    m, c = first.weight.shape[:2]
    k = second.weight.shape[0]
    if only_if_cheaper:
        s2 = _stride(second)
        separate = s2[0] * s2[1] * m * c + k * m  # multiplies per output pixel
        if k * c > separate:
            return f"merged ({c}->{k}) costs more than {c}->{m}->{k} apart", ""
    return None, "conv-conv"


def _merge(first: Any, second: Any, kind: str) -> nn.Module:
    if kind == "conv-bn":
        return fold_conv_bn(first, second)
    if kind == "bn-conv":
        return _merge_bn_conv(first, second)
    return _merge_convs(first, second)


_MERGEABLE = (Conv1x1, nn.Conv2d, *_BN_TYPES)


def _candidate(module: nn.Module | None) -> bool:
    """A 1x1 convolution or a batch norm: the layers this pass looks at."""
    if isinstance(module, _BN_TYPES):
        return True
    if isinstance(module, Conv1x1):
        return True
    # subclasses too: ``_plan`` says why one with its own forward stays
    return isinstance(module, nn.Conv2d) and is_pointwise(module.kernel_size)


def _merge_sequentials(
    root: nn.Module, only_if_cheaper: bool, report: PassReport, unproven: dict[int, str]
) -> None:
    """Merge adjacent children of plain ``nn.Sequential`` containers shown to run as one
    chain (``unproven``: why the others are not)."""
    owners = owner_counts(root)
    for path, seq in plain_sequentials(root):
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            first, second = seq._modules[a], seq._modules[b]
            if not (_candidate(first) and _candidate(second)):
                continue
            where = f"{path}.{a} -> {path}.{b}" if path else f"{a} -> {b}"
            reason, kind = _plan(first, second, only_if_cheaper)
            reason = unproven.get(id(seq)) or reason
            if reason is None and (owners[id(first)] > 1 or owners[id(second)] > 1):
                reason = "a layer is shared with another part of the model"
            if reason is not None:
                report.skipped.append((where, reason))
                continue
            setattr(seq, b, _merge(first, second, kind))
            setattr(seq, a, nn.Identity().train(first.training))
            report.applied.append(where)


@overload
def merge_pointwise(
    model: nn.Module,
    example_input: object = None,
    *,
    only_if_cheaper: bool = False,
    siblings: bool = False,
    with_report: Literal[False] = False,
) -> nn.Module: ...


@overload
def merge_pointwise(
    model: nn.Module,
    example_input: object = None,
    *,
    only_if_cheaper: bool = False,
    siblings: bool = False,
    with_report: Literal[True],
) -> tuple[nn.Module, PassReport]: ...


def merge_pointwise(
    model: nn.Module,
    example_input: object = None,
    *,
    only_if_cheaper: bool = False,
    siblings: bool = False,
    with_report: bool = False,
) -> nn.Module | tuple[nn.Module, PassReport]:
    """A copy of ``model`` where consecutive pointwise affine layers are one layer.

    Pairs: two 1x1 convolutions (``nn.Conv2d`` with a 1x1 kernel and no padding,
    or ``Conv1x1`` without an activation in the first; groups 1; any strides),
    a 1x1 followed by an eval-mode ``BatchNorm2d``, and a ``BatchNorm2d``
    followed by a 1x1. The intermediate result must have no other user and each
    layer must be called once; the merged layer takes the second's place (and
    type, and its activation) and the first becomes ``nn.Identity``. Chains
    merge pair by pair. ``model`` is never modified.

    A layer with hooks or a parametrisation, a subclass with its own
    ``forward``, and a module with hooks and layers inside are left as they are and
    named in the report.

    Args:
        model: a model in eval mode.
        example_input: optional tensor (or tuple) the model accepts. When given, the
            result is checked against ``model`` on it before it is returned, and a model
            that does not trace is merged inside the ``nn.Sequential`` containers it
            shows running their children as one chain (without it, nothing is merged
            there).
        only_if_cheaper: merge two convolutions only when the merged one needs no
            more multiplies than the pair (a ``C -> M -> K`` bottleneck with
            ``K * C > M * (C + K)`` stays apart).
        siblings: also merge 1x1 convolutions that read the same tensor (with the
            same stride and activation after them) into one wider 1x1 followed by
            a split, ``[W1; W2] x = [W1 x; W2 x]``, as in GoogLeNet's Inception
            branches. Same multiplies, fewer and wider products, plus the split's
            copies; the result is a ``torch.fx.GraphModule``.
        with_report: also return a ``PassReport``.

    Returns:
        The merged copy (and the report when ``with_report``).

    Raises:
        ValueError: ``model`` (or a submodule) is in training mode.
        VerificationError: the result differs from ``model`` on ``example_input``.

    Shape:
        Unchanged: the copy computes ``model``'s function.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.Conv2d(32, 8, 1), nn.ReLU()).eval()
        >>> merged = obo.merge_pointwise(model)
        >>> merged[1], merged[0]
        (Conv2d(16, 8, kernel_size=(1, 1), stride=(1, 1)), Identity())
    """
    check_model(model)
    check_eval(model)
    if not isinstance(only_if_cheaper, bool):
        raise TypeError(
            "Invalid value for argument `only_if_cheaper`. Expected True or False. "
            f"Received only_if_cheaper={only_if_cheaper!r}."
        )
    if not isinstance(siblings, bool):
        raise TypeError(
            "Invalid value for argument `siblings`. Expected True or False. "
            f"Received siblings={siblings!r}."
        )
    if example_input is not None:
        _check_example(model, example_input)
    result, report = _merge_model(
        model, example_input, only_if_cheaper=only_if_cheaper, in_place=False, siblings=siblings
    )
    if example_input is not None:
        check_transform("merge_pointwise", model, result, example_input)
    return (result, report) if with_report else result


def _merge_model(
    model: nn.Module,
    example_input: object,
    *,
    only_if_cheaper: bool,
    in_place: bool,
    siblings: bool,
) -> tuple[nn.Module, PassReport]:
    """``merge_pointwise``'s work; with ``in_place`` ``model`` may be changed instead of
    copied."""
    result = model if in_place else copy_module(model)
    everywhere = global_hooks()
    if everywhere is not None:
        return result, PassReport(
            "merge_pointwise", skipped=[("model", f"left as it is: {everywhere}")]
        )
    graph, why = trace(model)
    report = PassReport("merge_pointwise", traced=graph is not None)
    if graph is None:
        _merge_sequentials(result, only_if_cheaper, report, chain_proofs(result, example_input))
        report.skipped.append(
            ("model", f"does not trace ({why}); only layers adjacent in nn.Sequential merged")
        )
        return result, report

    modules = dict(result.named_modules())
    report_untouchable(report, graph, modules)
    current = dict(modules)  # path -> module in the copy, updated as we merge
    counts = call_counts(graph)
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(current.get(str(node.target)), _MERGEABLE):
            continue
        prev = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module":
            continue
        first, second = current[str(prev.target)], current[str(node.target)]
        if not (isinstance(first, _MERGEABLE) and _candidate(first) and _candidate(second)):
            continue
        where = f"{prev.target} -> {node.target}"
        reason, kind = _plan(first, second, only_if_cheaper)
        if reason is None and (len(prev.users) != 1 or len(prev.args) != 1 or prev.kwargs):
            reason = "the first layer's output has other users or it takes extra arguments"
        if reason is None and (counts[str(prev.target)] != 1 or counts[str(node.target)] != 1):
            reason = "a layer is called more than once"
        if reason is not None:
            report.skipped.append((where, reason))
            continue
        merged = _merge(first, second, kind)
        set_module(result, str(node.target), merged)
        set_module(result, str(prev.target), nn.Identity())
        current[str(node.target)], current[str(prev.target)] = (
            merged,
            nn.Identity().train(first.training),
        )
        report.applied.append(where)
    own = why_untouchable(result)
    if siblings and own is not None:  # a graph module would not run the model's hooks
        report.skipped.append(("model", f"siblings not merged (a graph rewrite): it {own}"))
        siblings = False
    return (_merge_siblings(result, report) if siblings else result), report


def _sibling_key(module: nn.Module) -> tuple[object, ...] | None:
    """What siblings must share to merge (``None``: not a plain pointwise convolution)."""
    if _pointwise(module) is not None:
        return None
    weight = cast(torch.Tensor, module.weight)
    return (_stride(module), weight.dtype, weight.device)


def _merge_siblings(model: nn.Module, report: PassReport) -> nn.Module:
    """1x1 convolutions reading the same tensor become one wider 1x1 and a split.

    ``[W1; W2; W3] x = [W1 x; W2 x; W3 x]``: one matrix product instead of
    several thin ones (GoogLeNet's Inception branches start this way). An
    activation that follows every member the same way moves into the merged
    layer; members with different activations stay apart.
    """
    graph, _ = trace(model)
    if graph is None:
        return model
    modules = dict(model.named_modules())
    counts = call_counts(graph)
    order = {n: i for i, n in enumerate(graph.nodes)}
    plans: list[tuple[fx.Node, list[tuple[fx.Node, fx.Node]], str | None]] = []
    for value in graph.nodes:
        groups: dict[tuple[object, ...], list[tuple[fx.Node, fx.Node]]] = {}
        for user in sorted(value.users, key=order.__getitem__):
            module = modules.get(str(user.target)) if user.op == "call_module" else None
            key = None if module is None else _sibling_key(module)
            if key is None or user.args != (value,) or user.kwargs or counts[str(user.target)] != 1:
                continue
            act = module.activation if isinstance(module, Conv1x1) else None
            last = user
            follower = next(iter(user.users)) if len(user.users) == 1 else None
            if act is None and follower is not None and follower.args[:1] == (user,):
                act = activation_of(follower, modules)
                last = follower if act is not None else user
            groups.setdefault((*key, act), []).append((user, last))
        for group_key, members in groups.items():
            if len(members) < 2:
                continue
            act = cast("str | None", group_key[-1])
            first, final = members[0][0], max((m[1] for m in members), key=order.__getitem__)
            between = [n for n in graph.nodes if order[first] < order[n] < order[final]]
            if any_inplace(between, modules):
                report.skipped.append(
                    (str(first.target), "an in-place op may change the shared input")
                )
                continue
            plans.append((value, members, act))
    if not plans:
        return model
    gm = graph_module(model, graph, model)
    for value, members, act in plans:
        convs = [modules[str(conv.target)] for conv, _ in members]
        weights = [cast(torch.Tensor, c.weight) for c in convs]
        sizes = [w.shape[0] for w in weights]
        c_in = weights[0].shape[1]
        with torch.no_grad():
            weight = torch.cat([w.reshape(w.shape[0], c_in) for w in weights])  # (sum K, C)
            biases = [cast("torch.Tensor | None", c.bias) for c in convs]
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat(
                    [
                        b if b is not None else weight.new_zeros(k)
                        for b, k in zip(biases, sizes, strict=True)
                    ]
                )
        merged = Conv1x1(
            c_in,
            sum(sizes),
            stride=_stride(convs[0]),
            bias=bias is not None,
            activation=act,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(weight)
            if bias is not None and merged.bias is not None:
                merged.bias.copy_(bias)
        merged.requires_grad_(weights[0].requires_grad).train(convs[0].training)
        first = members[0][0]
        target = f"{first.target}_siblings"
        gm.add_submodule(target, merged)
        with graph.inserting_before(first):
            wide = graph.call_module(target, (value,))
            parts = graph.call_function(torch.split, (wide, sizes), {"dim": 1})
            pieces = [graph.call_function(operator.getitem, (parts, i)) for i in range(len(sizes))]
        for (conv, last), piece in zip(members, pieces, strict=True):
            last.replace_all_uses_with(piece)
            if last is not conv:
                graph.erase_node(last)
            graph.erase_node(conv)
        names = " + ".join(str(conv.target) for conv, _ in members)
        report.applied.append(f"{names} (siblings on one input) -> {target}")
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
