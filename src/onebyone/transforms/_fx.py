"""``torch.fx`` helpers shared by the transforms: tracing, module paths, op recognition.

The transforms find their patterns on an ``fx`` graph (residual adds live in
``forward``, not in modules) and then either swap modules in a copy of the
model (when every change is expressible that way, so the model keeps its
class) or rewrite the graph of a ``torch.fx.GraphModule``.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn

from onebyone.activations import TABLE, module_activation
from onebyone.nn.blocks import channel_shuffle
from onebyone.nn.conv import Conv1x1

__all__ = [
    "CONV_TYPES",
    "LEAF_FUNCTIONS",
    "Tracer",
    "activation_of",
    "any_inplace",
    "call_counts",
    "compute_nodes",
    "drop_identities",
    "graph_module",
    "is_add",
    "is_inplace",
    "owner_counts",
    "plain_sequentials",
    "set_module",
    "trace",
]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1x1)
"""Convolution modules the transforms understand (weight ``(K, C/g, *kernel)`` or ``(K, C/g)``)."""

_LEAF_TYPES: list[type[nn.Module]] = [Conv1x1]


def register_leaf(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: keep modules of ``cls`` as single nodes when tracing."""
    _LEAF_TYPES.append(cls)
    return cls


LEAF_FUNCTIONS: tuple[Callable[..., Any], ...] = (channel_shuffle,)
"""Functions recorded as one node (their argument checks cannot run on symbolic values)."""


class Tracer(fx.Tracer):
    """``torch.fx.Tracer`` that keeps onebyone's layers (``Conv1x1``, fused modules) and
    ``LEAF_FUNCTIONS`` whole."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=LEAF_FUNCTIONS)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, tuple(_LEAF_TYPES)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """Trace ``model`` symbolically; ``(graph, None)`` or ``(None, why it does not trace)``.

    The graph refers to submodules by their dotted paths in ``model``; ``model``
    itself is not modified.
    """
    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, RuntimeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {first}"[:200]
    drop_identities(graph, dict(model.named_modules()), dropout=False)
    return graph, None


def drop_identities(graph: fx.Graph, modules: dict[str, nn.Module], *, dropout: bool) -> int:
    """Remove calls of ``nn.Identity`` (and, with ``dropout``, of eval-mode dropout) from
    ``graph``; returns how many were removed."""
    kinds: tuple[type[nn.Module], ...] = (nn.Identity,)
    if dropout:
        kinds += (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    removed = 0
    for node in list(graph.nodes):
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if (
            isinstance(m, kinds)
            and not (m.training and not isinstance(m, nn.Identity))
            and len(node.args) == 1
            and not node.kwargs
            and isinstance(node.args[0], fx.Node)
        ):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
    return removed


def plain_sequentials(root: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """``(path, container)`` for every ``nn.Sequential`` in ``root`` that runs its children
    in order (a subclass with its own ``forward`` may not, so it is left out)."""
    return [
        (path, m)
        for path, m in root.named_modules()
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward
    ]


def owner_counts(root: nn.Module) -> Counter[int]:
    """How many places in ``root`` hold each module, by ``id``: a module held twice
    must not be rewritten in place for one of its users."""
    return Counter(id(m) for _, m in root.named_modules(remove_duplicate=False))


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``module`` (which takes the
    replaced module's training mode)."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, name, None)
    module.train(old.training if isinstance(old, nn.Module) else parent.training)
    setattr(parent, name, module)


def graph_module(root: nn.Module, graph: fx.Graph, like: nn.Module) -> fx.GraphModule:
    """``fx.GraphModule(root, graph)`` named and in the training mode of ``like``."""
    gm = fx.GraphModule(root, graph, class_name=type(like).__name__)
    gm.train(like.training)
    return gm


def call_counts(graph: fx.Graph) -> Counter[str]:
    """How many ``call_module`` nodes call each submodule path."""
    return Counter(str(n.target) for n in graph.nodes if n.op == "call_module")


def compute_nodes(graph: fx.Graph) -> list[fx.Node]:
    """The nodes that compute something (not inputs, outputs or attribute reads)."""
    return [n for n in graph.nodes if n.op in ("call_module", "call_function", "call_method")]


# --- activations -------------------------------------------------------------------------


def activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The onebyone activation name that ``node`` computes from its first argument, if any.

    Recognises what ``onebyone.activations.TABLE`` lists for each activation: its
    modules (``nn.ReLU``, ``nn.Hardtanh(0, 6)``, ``nn.LeakyReLU(0.01)``, ...), its
    functional forms and its tensor methods.
    """
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return None if m is None else module_activation(m)
    if node.op == "call_function":
        for entry in TABLE.values():
            test = entry.functions.get(node.target)  # type: ignore[arg-type]
            if test is not None and test(tuple(node.args), node.kwargs):
                return entry.name
        return None
    if node.op == "call_method" and len(node.args) == 1 and not node.kwargs:
        return next((e.name for e in TABLE.values() if node.target in e.methods), None)
    return None


def is_add(node: fx.Node) -> bool:
    """True when ``node`` is a plain two-tensor addition ``a + b`` (no ``alpha``)."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return False
    extra = set(node.kwargs) - {"alpha"}
    if extra:
        return False
    if not all(isinstance(a, fx.Node) for a in node.args):
        return False
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd, torch.add)
    if node.op == "call_method":
        return node.target in ("add", "add_")
    return False


_OPERATOR_INPLACE = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift, operator.imatmul,
}  # fmt: skip


def is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when ``node`` may overwrite its first argument."""
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (
            bool(node.kwargs.get("inplace"))
            or (name.endswith("_") and not name.endswith("__"))  # torch.relu_, F.relu_
            or node.target in _OPERATOR_INPLACE
        )
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    return False


def any_inplace(nodes: Iterable[fx.Node], modules: dict[str, nn.Module]) -> bool:
    """True when one of ``nodes`` may write a tensor in place.

    A module-level graph does not say which values share memory (``x.view(-1)``,
    ``x[:, :2]`` and ``x`` do), so any in-place op may change any value: a transform
    that moves a read past one must refuse.
    """
    return any(is_inplace(n, modules) for n in nodes)
