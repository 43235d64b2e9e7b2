"""``fold_batchnorm``: fold eval-mode batch norm into the convolution or Linear before it.

An eval-mode ``BatchNorm`` is a per-channel affine map
``y = gamma * (z - mean) / sqrt(var + eps) + beta = s * z + t``. After a
convolution ``z = W * x + b`` it folds into the convolution's own parameters:
``W' = s[:, None, ...] * W`` and ``b' = s * (b - mean) + beta``, for any
kernel size and groups (each output channel scales its own filter).

``fold_bn_weights`` is that tensor math; ``fold_conv_bn`` copies a layer and
swaps in the folded parameters; ``fold_batchnorm`` finds every such pair in
a model and returns a folded copy.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Literal, cast, overload

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from onebyone.nn.conv import Conv1x1
from onebyone.nn.untouchable import copy_module, global_hooks, why_untouchable
from onebyone.transforms._fx import (
    call_counts,
    chain_proofs,
    graph_module,
    owner_counts,
    plain_sequentials,
    report_untouchable,
    set_module,
    trace,
)
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import as_inputs, check_transform

__all__ = [
    "batchnorm_affine",
    "check_eval",
    "check_model",
    "fold_batchnorm",
    "fold_bn_weights",
    "fold_conv_bn",
    "known_base",
]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# the batch norm that can follow each layer type
_PAIRS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    Conv1x1: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}


def batchnorm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode batch norm as ``y = scale * x + shift`` per channel, in float64.

    Shape:
        every argument ``(K,)`` (``weight`` / ``bias`` may be ``None``: 1 and 0)
        -> ``scale (K,)``, ``shift (K,)``.

    Example:
        >>> import torch
        >>> s, t = batchnorm_affine(torch.ones(2), torch.full((2,), 4.0), 0.0, None, None)
        >>> s.tolist(), t.tolist()
        ([0.5, 0.5], [-0.5, -0.5])
    """
    mean = running_mean.detach().to(torch.float64)
    scale = torch.rsqrt(running_var.detach().to(torch.float64) + eps)  # (K,)
    if weight is not None:
        scale = scale * weight.detach().to(torch.float64)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.detach().to(torch.float64)
    return scale, shift


def fold_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a batch norm into the layer before it: ``(W', b')`` with ``bn(W x + b) = W' x + b'``.

    Computed in float64 and returned in ``weight``'s dtype and device.

    Args:
        weight: the layer's weight, output channels first: ``(K, C/g, *kernel)``
            for a convolution, ``(K, C)`` for a Linear or a 2-D ``Conv1x1`` weight.
        bias: the layer's ``(K,)`` bias or ``None``.
        running_mean: the batch norm's ``(K,)`` running mean.
        running_var: its ``(K,)`` running variance.
        eps: the batch norm's epsilon.
        bn_weight: its ``(K,)`` scale (``None`` when ``affine=False``).
        bn_bias: its ``(K,)`` shift (``None`` when ``affine=False``).

    Shape:
        ``weight (K, ...)``, ``bias (K,)`` -> ``(K, ...)``, ``(K,)``.

    Example:
        >>> import torch
        >>> w, b = fold_bn_weights(torch.ones(2, 3, 1, 1), None, torch.ones(2),
        ...                        torch.full((2,), 4.0), 0.0, None, None)
        >>> w[:, 0, 0, 0].tolist(), b.tolist()
        ([0.5, 0.5], [-0.5, -0.5])
    """
    k = weight.shape[0]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("bias", bias),
        ("bn_weight", bn_weight),
        ("bn_bias", bn_bias),
    ):
        if t is not None and tuple(t.shape) != (k,):
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected shape ({k},), one value per "
                f"output channel of the weight. Received {name} of shape {tuple(t.shape)}."
            )
    scale, shift = batchnorm_affine(running_mean, running_var, eps, bn_weight, bn_bias)
    w64 = weight.detach().to(torch.float64)
    folded_w = w64 * scale.view(k, *([1] * (weight.dim() - 1)))  # (K, ...) * (K, 1, ...)
    folded_b = shift if bias is None else bias.detach().to(torch.float64) * scale + shift
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)


def _set_bias(module: nn.Module, bias: torch.Tensor, requires_grad: bool) -> None:
    if "bias" not in module._parameters and hasattr(module, "bias"):
        delattr(module, "bias")  # a plain ``None`` attribute (e.g. Conv1x1(bias=False))
    module.bias = nn.Parameter(bias, requires_grad=requires_grad)


def fold_conv_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` (a convolution, ``Conv1x1`` or ``Linear``) with ``bn`` folded in.

    The copy has a bias even when ``layer`` had none; ``layer`` and ``bn`` are unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(fold_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    reason = why_not_foldable(layer, bn)
    if reason is not None:
        raise ValueError(
            f"Invalid value for argument `bn`. Expected a batch norm that folds into "
            f"{type(layer).__name__}. Received {type(bn).__name__}: {reason}."
        )
    norm: Any = bn  # a batch norm with running statistics, as checked above
    weight: torch.Tensor = cast(torch.Tensor, layer.weight)
    bias = cast("torch.Tensor | None", layer.bias)
    w, b = fold_bn_weights(
        weight, bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    memo: dict[int, Any] = {id(weight): nn.Parameter(w, requires_grad=weight.requires_grad)}
    if bias is not None:
        memo[id(bias)] = nn.Parameter(b, requires_grad=bias.requires_grad)
    out = copy.deepcopy(layer, memo)  # the copy gets the folded parameters, the rest copied
    if bias is None:
        _set_bias(out, b, weight.requires_grad)
    return out


def known_base(module: nn.Module) -> type[nn.Module] | None:
    """The class of the transforms' layers (a convolution, ``Conv1x1``, ``Linear``, a batch
    norm) that ``module`` is an instance of, or ``None``."""
    return next((t for t in (*_PAIRS, *_BN_TYPES) if isinstance(module, t)), None)


def why_not_foldable(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``bn`` cannot fold into ``layer``, or ``None`` when it can."""
    if not isinstance(bn, _BN_TYPES):
        return f"{type(bn).__name__} is not a batch norm"
    for role, module in (("the layer", layer), ("the norm", bn)):
        reason = why_untouchable(module, known_base(module))
        if reason is not None:
            return f"{role} {reason}"
    expected = _PAIRS.get(type(layer))
    if expected is None:
        return f"follows a {type(layer).__name__}, not a convolution or Linear"
    if type(bn) is not expected:
        return f"{type(layer).__name__} is followed by {type(bn).__name__}, not {expected.__name__}"
    if bn.running_mean is None or bn.running_var is None:
        return "has no running statistics (track_running_stats=False normalises by batch)"
    if bn.training:
        return "is in training mode"
    if isinstance(layer, Conv1x1) and layer.activation is not None:
        return f"an activation ({layer.activation}) sits between the Conv1x1 and the norm"
    channels = cast(torch.Tensor, layer.weight).shape[0]
    if bn.num_features != channels:
        return f"has {bn.num_features} channels, the layer {channels}"
    return None


def check_model(model: object) -> nn.Module:
    """Validate the ``model`` argument of a transform."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "Invalid value for argument `model`. Expected a torch.nn.Module. "
            f"Received model of type {type(model).__name__}."
        )
    return model


def check_eval(model: nn.Module) -> None:
    """Raise ``ValueError`` when ``model`` or one of its submodules is in training mode."""
    training = [name or "(root)" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            "Invalid value for argument `model`. Expected a model in eval mode (call "
            "model.eval() first: folding uses the batch norms' running statistics). "
            f"Received a model with {len(training)} module(s) in training mode, e.g. "
            f"`{training[0]}`."
        )


def _check_example(model: nn.Module, example_input: object) -> None:
    """An example must hold data on the model's device (``meta`` tensors have none)."""
    param = next(iter(model.parameters()), None)
    for t in as_inputs(example_input):
        if t.device.type == "meta" or t.layout != torch.strided:
            raise ValueError(
                "Invalid value for argument `example_input`. Expected dense tensors with data "
                f"the model can run. Received a tensor on {t.device} with layout {t.layout}."
            )
        if param is not None and t.device != param.device:
            raise ValueError(
                "Invalid value for argument `example_input`. Expected tensors on the model's "
                f"device {param.device}. Received a tensor on {t.device}."
            )


def _ranks(model: nn.Module, graph: fx.Graph, example_input: object) -> dict[str, int]:
    """Number of dimensions of every node's output on ``example_input``."""
    probe = copy.deepcopy(graph)  # node names are kept; the caller's graph stays unowned
    gm = fx.GraphModule(model, probe)
    with torch.no_grad():
        ShapeProp(gm).propagate(*as_inputs(example_input))
    ranks: dict[str, int] = {}
    for n in probe.nodes:
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            ranks[n.name] = len(meta.shape)
    return ranks


def _fold_sequentials(root: nn.Module, report: PassReport, unproven: dict[int, str]) -> None:
    """Fold adjacent (layer, batch norm) children of plain ``nn.Sequential`` containers
    shown to run as one chain (``unproven``: why the others are not)."""
    owners = owner_counts(root)
    pairs: list[tuple[str, nn.Sequential, str, str]] = []
    for path, seq in plain_sequentials(root):
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            layer, bn = seq._modules[a], seq._modules[b]
            if isinstance(bn, _BN_TYPES) and layer is not None:
                pairs.append((path, seq, a, b))
    for path, seq, a, b in pairs:
        layer, bn = seq._modules[a], seq._modules[b]
        assert layer is not None and bn is not None
        where = f"{path}.{b}" if path else b
        reason = unproven.get(id(seq)) or why_not_foldable(layer, bn)
        if reason is None and isinstance(layer, nn.Linear):
            reason = "the model does not trace, so the Linear's output layout is unknown"
        if reason is None and (owners[id(layer)] > 1 or owners[id(bn)] > 1):
            reason = "the layer or the norm is shared with another part of the model"
        if reason is not None:
            report.skipped.append((where, reason))
            continue
        setattr(seq, a, fold_conv_bn(layer, bn))
        setattr(seq, b, nn.Identity().train(bn.training))
        report.applied.append(f"{path}.{a} <- {where}" if path else f"{a} <- {where}")


@overload
def fold_batchnorm(
    model: nn.Module, example_input: object = None, *, with_report: Literal[False] = False
) -> nn.Module: ...


@overload
def fold_batchnorm(
    model: nn.Module, example_input: object = None, *, with_report: Literal[True]
) -> tuple[nn.Module, PassReport]: ...


def fold_batchnorm(
    model: nn.Module, example_input: object = None, *, with_report: bool = False
) -> nn.Module | tuple[nn.Module, PassReport]:
    """A copy of ``model`` with every eval-mode batch norm folded into the layer before it.

    Layers: ``nn.Conv1d/2d/3d`` (any kernel size, stride, padding, dilation,
    groups, with or without bias), ``onebyone.nn.Conv1x1`` without an
    activation, and ``nn.Linear`` followed by ``BatchNorm1d`` on ``(N, F)``
    activations. The pairs are found on the model's ``torch.fx`` graph. A
    folded layer replaces the old one and the norm becomes ``nn.Identity``, so
    the model keeps its class; when the layer's output has other users too
    (or the layer is called more than once) the norm's call is replaced by a
    folded copy of the layer instead and the result is a ``torch.fx.GraphModule``.
    A model that does not trace gets the pairs that are adjacent in an
    ``nn.Sequential`` that ``example_input`` shows running its children as one
    chain, and the report says so. A layer or norm with hooks, a
    ``weight_norm`` / ``spectral_norm`` / parametrised weight, or a class with its
    own ``forward`` is left alone and named in the report. ``model`` is never
    modified; parameters keep their dtype and device.

    Args:
        model: a model in eval mode.
        example_input: optional tensor (or tuple) the model accepts. When given, the
            result is checked against ``model`` on it before it is returned. A
            ``Linear -> BatchNorm1d`` pair folds only when it shows the activations are
            ``(N, F)`` (on ``(N, C, L)`` the two act on different dims); without it such
            pairs are left alone and the report says why.
        with_report: also return a ``PassReport`` of what was folded and skipped.

    Returns:
        The folded copy (and the report when ``with_report``).

    Raises:
        ValueError: ``model`` (or a submodule) is in training mode.
        TypeError: ``model`` is not an ``nn.Module``.
        VerificationError: the result differs from ``model`` on ``example_input``.

    Shape:
        Unchanged: the copy computes ``model``'s function.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import onebyone as obo
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        >>> folded = obo.fold_batchnorm(model.eval())
        >>> folded
        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
          (2): ReLU()
        )
    """
    check_model(model)
    check_eval(model)
    if example_input is not None:
        _check_example(model, example_input)
    result, report = _fold_model(model, example_input, in_place=False)
    if example_input is not None:
        check_transform("fold_batchnorm", model, result, example_input)
    return (result, report) if with_report else result


def _fold_model(
    model: nn.Module, example_input: object, *, in_place: bool
) -> tuple[nn.Module, PassReport]:
    """``fold_batchnorm``'s work; with ``in_place`` the caller hands ``model`` over and it
    may be changed instead of copied."""
    everywhere = global_hooks()
    if everywhere is not None:
        report = PassReport("fold_batchnorm", skipped=[("model", f"left as it is: {everywhere}")])
        return (model if in_place else copy_module(model)), report
    graph, why = trace(model)
    report = PassReport("fold_batchnorm", traced=graph is not None)
    if graph is None:
        result = model if in_place else copy_module(model)
        _fold_sequentials(result, report, chain_proofs(result, example_input))
        report.skipped.append(
            ("model", f"does not trace ({why}); only layers adjacent in nn.Sequential folded")
        )
        return result, report

    modules = dict(model.named_modules())
    report_untouchable(report, graph, modules)
    counts = call_counts(graph)
    plans: list[tuple[fx.Node, fx.Node, bool]] = []  # (layer, norm, swap the modules)
    linear_pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _BN_TYPES):
            continue
        where = str(node.target)
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(node.args) != 1:
            report.skipped.append((where, "its input is not the output of a layer module"))
            continue
        layer, bn = modules[str(prev.target)], modules[where]
        reason = why_not_foldable(layer, bn)
        if reason is None and (len(prev.args) != 1 or prev.kwargs):
            reason = "the layer is called with more than its input (e.g. a residual)"
        if reason is not None:
            report.skipped.append((where, reason))
            continue
        swap = counts[str(prev.target)] == 1 and counts[where] == 1 and len(prev.users) == 1
        plans.append((prev, node, swap))
        if isinstance(layer, nn.Linear):
            linear_pairs.append((prev, node))
    # BatchNorm1d normalises dim 1 and a Linear maps the last dim: they fold only on (N, F)
    ranks = (
        _ranks(model, graph, example_input) if linear_pairs and example_input is not None else {}
    )
    for prev, node in linear_pairs:
        rank = ranks.get(prev.name)
        if rank == 2:
            continue
        plans = [p for p in plans if p[1] is not node]
        why = (
            f"the Linear's output is {rank}-D, not (N, F)"
            if example_input is not None
            else "a Linear -> BatchNorm1d folds only on (N, F) activations; pass example_input "
            "to show their layout"
        )
        report.skipped.append((str(node.target), why))
    own = why_untouchable(model)
    if own is not None:  # a graph module would not run the model's own hooks
        for _, node, _ in [p for p in plans if not p[2]]:
            report.skipped.append(
                (str(node.target), f"folding it needs a graph rewrite, but the model {own}")
            )
        plans = [p for p in plans if p[2]]

    if all(swap for _, _, swap in plans):
        if in_place:
            result = model
        else:
            # the layers and norms about to be replaced are not worth copying
            skip = [modules[str(n.target)] for plan in plans for n in plan[:2]]
            result = copy_module(model, {id(m): nn.Identity().train(m.training) for m in skip})
        for prev, node, _ in plans:
            set_module(
                result,
                str(prev.target),
                fold_conv_bn(modules[str(prev.target)], modules[str(node.target)]),
            )
            set_module(result, str(node.target), nn.Identity())
            report.applied.append(f"{prev.target} <- {node.target}")
        return result, report

    gm = graph_module(model if in_place else copy_module(model), graph, model)
    for prev, node, swap in plans:
        folded = fold_conv_bn(modules[str(prev.target)], modules[str(node.target)])
        if swap:
            set_module(gm, str(prev.target), folded)
            node.replace_all_uses_with(prev)
            report.applied.append(f"{prev.target} <- {node.target}")
        else:
            # one folded copy per call of the norm: a norm shared by two layers folds into each
            target = f"{node.target}_folded_{node.name}".replace(".", "_")
            gm.add_submodule(target, folded)
            with graph.inserting_before(node):
                new = graph.call_module(target, prev.args, prev.kwargs)
            node.replace_all_uses_with(new)
            report.applied.append(
                f"{target} = {prev.target} with {node.target} folded in (output shared)"
            )
        graph.erase_node(node)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, report
