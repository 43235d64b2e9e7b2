"""``fuse_epilogues``: a convolution, its activation and a residual add become one module.

The patterns are found on the model's ``torch.fx`` graph, where residual adds
live (they are in ``forward``, not in modules):

- ``act(conv(x))``                     -> one fused convolution;
- ``act(conv(x) + r)``, ``conv(x) + r``  -> residual added before the activation;
- ``act(conv(x)) + r``                 -> residual added after the activation.

A 1x1 convolution becomes a ``FusedConv1x1``, which calls
``onebyone.conv1x1`` (oneDNN for CPU inference, by its measured routes); any
other ``nn.Conv2d`` becomes a ``FusedConv2d``, which takes the same routes.
Both fall back to plain PyTorch ops (and autograd) where oneDNN cannot run, so
the fused model works everywhere the original did.
Batch norms are folded first (``fold_batchnorm``).
"""

from __future__ import annotations

from typing import Any, Literal, overload

from torch import fx, nn

from onebyone.activations import module_activation
from onebyone.geometry import is_pointwise
from onebyone.nn.conv import Conv1x1
from onebyone.nn.untouchable import copy_module, global_hooks, why_untouchable
from onebyone.transforms._fx import (
    activation_of,
    any_inplace,
    call_counts,
    chain_proofs,
    drop_identities,
    graph_module,
    is_add,
    plain_sequentials,
    report_untouchable,
    set_module,
    trace,
)
from onebyone.transforms.fold import _check_example, _fold_model, check_eval, check_model
from onebyone.transforms.fused import FusedConv1x1, FusedConv2d
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import check_transform

__all__ = ["fuse_epilogues"]


def _is_1x1(m: nn.Module) -> bool:
    if isinstance(m, Conv1x1):
        return True
    return (
        type(m) is nn.Conv2d
        and is_pointwise(m.kernel_size, m.padding)
        and m.padding_mode == "zeros"
    )


def _fusable(m: nn.Module) -> str | None:
    """Why ``m`` cannot become a fused convolution, or ``None``."""
    if isinstance(m, (FusedConv1x1, FusedConv2d)):
        return "already fused"
    reason = why_untouchable(m, Conv1x1 if isinstance(m, Conv1x1) else nn.Conv2d)
    if reason is not None:
        return reason
    if _is_1x1(m):
        return None
    if type(m) is not nn.Conv2d:
        return f"{type(m).__name__} is not a 2-D convolution"
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        return "padding is not numeric zero padding"
    return None


def _report_held_activation(report: PassReport, where: str, m: nn.Module | None) -> None:
    """Name an activation module that stays out of any fusion because of its hooks."""
    reason = None if m is None or module_activation(m) is None else why_untouchable(m)
    if reason is not None:
        report.skipped.append((where, f"{reason}: not fused into a convolution"))


def _make_fused(m: nn.Module, activation: str | None, position: str) -> nn.Module:
    if _is_1x1(m):
        return FusedConv1x1.from_module(m, activation=activation, residual_position=position).train(
            m.training
        )
    assert isinstance(m, nn.Conv2d)
    return FusedConv2d.from_conv(m, activation=activation, residual_position=position).train(
        m.training
    )


def _describe(conv: str, pre_add: bool, act: str | None, post_add: bool) -> str:
    parts = [conv]
    if pre_add:
        parts.append("+ residual")
    if act:
        parts.append(act)
    if post_add:
        parts.append("+ residual")
    return " -> ".join(parts)


def _other(add: fx.Node, value: fx.Node) -> fx.Node | None:
    """The operand of ``add`` that is not ``value`` (``None`` when both or neither are)."""
    a, b = add.args
    if a is value and isinstance(b, fx.Node) and b is not value:
        return b
    if b is value and isinstance(a, fx.Node) and a is not value:
        return a
    return None


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


class _Match:
    """A convolution node and the epilogue nodes that follow it."""

    def __init__(self, conv: fx.Node, own_act: str | None) -> None:
        self.chain = [conv]
        self.act = own_act
        self.residual: fx.Node | None = None
        self.pre_add = False
        self.post_add = False


def _match(
    conv: fx.Node, own_act: str | None, modules: dict[str, nn.Module], residual: bool
) -> _Match:
    """Follow single-user edges from ``conv``: [+ r] [act] [+ r] as far as oneDNN can fuse."""
    m = _Match(conv, own_act)
    cur = conv
    nxt = _single_user(cur)
    if residual and own_act is None and nxt is not None and is_add(nxt):
        r = _other(nxt, cur)
        if r is not None:
            m.residual, m.pre_add, cur = r, True, nxt
            m.chain.append(nxt)
            nxt = _single_user(cur)
    if own_act is None and nxt is not None and nxt.args and nxt.args[0] is cur:
        name = activation_of(nxt, modules)
        if name is not None:
            m.act, cur = name, nxt
            m.chain.append(nxt)
            nxt = _single_user(cur)
    if residual and not m.pre_add and m.act is not None and nxt is not None and is_add(nxt):
        r = _other(nxt, cur)
        if r is not None:
            m.residual, m.post_add = r, True
            m.chain.append(nxt)
    return m


def _fuse_graph(
    model: nn.Module, graph: fx.Graph, report: PassReport, *, in_place: bool
) -> fx.GraphModule:
    modules = dict(model.named_modules())
    report_untouchable(report, graph, modules)
    for node in graph.nodes:
        _report_held_activation(report, str(node.target), modules.get(str(node.target)))
    drop_identities(graph, modules, dropout=True)
    counts = call_counts(graph)
    gm = graph_module(model if in_place else copy_module(model), graph, model)
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for conv_node in nodes:
        module = modules.get(str(conv_node.target)) if conv_node.op == "call_module" else None
        if not isinstance(module, (nn.Conv2d, Conv1x1)):
            continue
        where = str(conv_node.target)
        reason = _fusable(module)
        if reason is None and (len(conv_node.args) != 1 or conv_node.kwargs):
            reason = "called with more than its input (it computes its own epilogue)"
        if reason is not None:
            report.skipped.append((where, reason))
            continue
        own_act = module.activation if isinstance(module, Conv1x1) else None
        x = conv_node.args[0]
        m = _match(conv_node, own_act, modules, residual=True)
        if m.residual is not None:
            # the fused call moves down to the add; nothing in between may overwrite x
            last = m.chain[-1]
            between = [n for n in nodes[order[conv_node] + 1 : order[last]] if n not in m.chain]
            if any_inplace(between, modules):
                report.skipped.append(
                    (
                        where,
                        "an in-place op between the convolution and its add may overwrite its "
                        "input (or a view of it); residual not fused",
                    )
                )
                m = _match(conv_node, own_act, modules, residual=False)
        fused = _make_fused(module, None if own_act else m.act, "after" if m.post_add else "before")
        if counts[where] == 1:
            target = where
            set_module(gm, target, fused)
        else:
            target = f"{where}_fused{order[conv_node]}"
            gm.add_submodule(target, fused)
        # without a residual the fused call stays where the convolution was
        anchor = m.chain[-1] if m.residual is not None else conv_node
        with graph.inserting_before(anchor):
            kwargs: dict[str, Any] = {"residual": m.residual} if m.residual is not None else {}
            new = graph.call_module(target, (x,), kwargs)
        m.chain[-1].replace_all_uses_with(new)
        for n in reversed(m.chain):
            graph.erase_node(n)
        if len(m.chain) > 1 or own_act is not None:
            report.applied.append(_describe(where, m.pre_add, m.act, m.post_add))
        else:
            report.applied.append(f"{where} (no epilogue; runs through the fused oneDNN path)")
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _fuse_sequentials(root: nn.Module, report: PassReport, unproven: dict[int, str]) -> None:
    """Module-level fusion: a convolution followed by an activation in an ``nn.Sequential``
    shown to run as one chain (``unproven``: why the others are not)."""
    for path, seq in plain_sequentials(root):
        names = list(seq._modules)
        for i, a in enumerate(names):
            conv = seq._modules[a]
            if not isinstance(conv, (nn.Conv2d, Conv1x1)):
                continue
            reason = unproven.get(id(seq)) or _fusable(conv)
            if reason is not None:
                report.skipped.append((f"{path}.{a}" if path else a, reason))
                continue
            act: str | None = None
            # the next child that is not an identity (a folded norm leaves one behind)
            nxt = next(
                (n for n in names[i + 1 :] if not isinstance(seq._modules[n], nn.Identity)), None
            )
            following = seq._modules[nxt] if nxt is not None else None
            if nxt is not None:
                _report_held_activation(report, f"{path}.{nxt}" if path else nxt, following)
            own = conv.activation if isinstance(conv, Conv1x1) else None
            if own is None and following is not None:
                g = fx.Graph()
                probe = g.call_module("m", (g.placeholder("x"),))
                act = activation_of(probe, {"m": following})
            setattr(seq, a, _make_fused(conv, act, "before"))
            where = f"{path}.{a}" if path else a
            if act is not None and nxt is not None:
                setattr(seq, nxt, nn.Identity().train(conv.training))
                report.applied.append(f"{where} -> {act}")
            else:
                report.applied.append(f"{where} (no epilogue; runs through the fused oneDNN path)")


@overload
def fuse_epilogues(
    model: nn.Module, example_input: object = None, *, with_report: Literal[False] = False
) -> nn.Module: ...


@overload
def fuse_epilogues(
    model: nn.Module, example_input: object = None, *, with_report: Literal[True]
) -> tuple[nn.Module, PassReport]: ...


def fuse_epilogues(
    model: nn.Module, example_input: object = None, *, with_report: bool = False
) -> nn.Module | tuple[nn.Module, PassReport]:
    """A copy of ``model`` whose convolutions run with their epilogue fused.

    Batch norms are folded first. Then every ``nn.Conv2d`` / ``Conv1x1`` on the
    ``torch.fx`` graph becomes a ``FusedConv1x1`` (1x1) or ``FusedConv2d``
    (other kernels) that also computes the activation after it and a residual
    add before or after that activation, as the graph has them (the add's
    other operand must not depend on the convolution). A model that does not
    trace gets the module-level fusions (a convolution followed by an
    activation inside an ``nn.Sequential``); the report says what was skipped
    and why. ``model`` is never modified; dtypes are kept.

    A convolution or activation with hooks or a parametrisation, a subclass with
    its own ``forward``, and a module with hooks and layers inside are left as they
    are and named in the report.

    Args:
        model: a model in eval mode.
        example_input: optional tensor (or tuple) the model accepts. When given, the
            result is checked against ``model`` on it before it is returned, and a model
            that does not trace is fused inside the ``nn.Sequential`` containers it shows
            running their children as one chain (without it, nothing is fused there).
        with_report: also return the ``PassReport`` (the folds are listed in it too).

    Returns:
        The fused copy, a ``torch.fx.GraphModule`` when the model traces (and the report).

    Raises:
        ValueError: ``model`` (or a submodule) is in training mode.
        VerificationError: the result differs from ``model`` on ``example_input``.

    Shape:
        Unchanged: the copy computes ``model``'s function.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> fused, report = obo.fuse_epilogues(model, with_report=True)
        >>> report.applied
        ['0 <- 1', '0 -> relu']
    """
    check_model(model)
    check_eval(model)
    if example_input is not None:
        _check_example(model, example_input)
    folded, fold_report = _fold_model(model, example_input, in_place=False)
    result, report = _fuse_model(folded, example_input, in_place=True)
    report.applied[:0] = fold_report.applied
    report.skipped[:0] = fold_report.skipped
    if example_input is not None:
        check_transform("fuse_epilogues", model, result, example_input)
    return (result, report) if with_report else result


def _fuse_model(
    model: nn.Module, example_input: object, *, in_place: bool
) -> tuple[nn.Module, PassReport]:
    """``fuse_epilogues``'s work on a model whose batch norms are folded already; with
    ``in_place`` ``model`` may be changed instead of copied."""
    everywhere = global_hooks()
    if everywhere is not None:
        report = PassReport("fuse_epilogues", skipped=[("model", f"left as it is: {everywhere}")])
        return (model if in_place else copy_module(model)), report
    graph, why = trace(model)
    own = why_untouchable(model)
    if graph is not None and own is not None:  # a graph module would not run its hooks
        graph, why = None, f"is not rewritten as a graph: it {own}"
    elif graph is None:
        why = f"does not trace ({why})"
    report = PassReport("fuse_epilogues", traced=graph is not None)
    if graph is None:
        result = model if in_place else copy_module(model)
        _fuse_sequentials(result, report, chain_proofs(result, example_input))
        report.skipped.append(
            (
                "model",
                f"{why}; residual adds not fused, only conv -> activation inside nn.Sequential",
            )
        )
        return result, report
    return _fuse_graph(model, graph, report, in_place=in_place), report
