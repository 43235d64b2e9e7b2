"""``torch.fx`` helpers shared by the transforms: tracing, module paths, op recognition.

The transforms find their patterns on an ``fx`` graph (residual adds live in
``forward``, not in modules) and then either swap modules in a copy of the
model (when every change is expressible that way, so the model keeps its
class) or rewrite the graph of a ``torch.fx.GraphModule``. A module with hooks
or a parametrisation (``onebyone.nn.untouchable``) stays one node of the graph,
called as it is, so a rewritten graph still runs its hooks. A model that does
not trace is rewritten only inside ``nn.Sequential`` containers that an example
input shows running their children as one chain (``chain_proofs``).
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
from onebyone.nn.untouchable import why_untouchable
from onebyone.transforms.report import PassReport
from onebyone.transforms.verify import as_inputs, run_model

__all__ = [
    "CONV_TYPES",
    "LEAF_FUNCTIONS",
    "Tracer",
    "activation_of",
    "any_inplace",
    "call_counts",
    "chain_proofs",
    "compute_nodes",
    "drop_identities",
    "graph_module",
    "is_add",
    "is_inplace",
    "owner_counts",
    "plain_sequentials",
    "report_untouchable",
    "set_module",
    "trace",
]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1x1)
"""Convolution modules the transforms understand (weight ``(K, C/g, *kernel)`` or ``(K, C/g)``)."""

_LEAF_TYPES: list[type[nn.Module]] = [Conv1x1]
_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    *CONV_TYPES,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


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
        if isinstance(m, tuple(_LEAF_TYPES)) or why_untouchable(m) is not None:
            return True  # a module with hooks runs as one call, hooks included
        if isinstance(m, _LAYER_TYPES):
            return True  # a subclass too: the transforms see it, and say why it stays
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
            and why_untouchable(m) is None
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


def chain_proofs(root: nn.Module, example_input: object) -> dict[int, str]:
    """Why each plain ``nn.Sequential`` of ``root`` is not shown to run its children as
    one chain, by the container's ``id``; a container absent from the result is shown.

    A model that does not trace may call a container's children one by one and read
    what each returns (a backbone returning every stage's output), so rewriting two
    neighbours as one would change what it reads. ``root`` runs once on
    ``example_input`` (its hooks are added for the run and removed after): a container
    is shown when it ran, and each of its children ran only from the container's own
    call. Without an example nothing is shown.
    """
    containers = {id(seq): (path, seq) for path, seq in plain_sequentials(root) if len(seq) > 1}
    if example_input is None:
        why = (
            "the model does not trace and no example_input shows that the container runs "
            "its children as one chain (pass example_input)"
        )
        return dict.fromkeys(containers, why)
    unproven: dict[int, str] = {}
    parent: dict[int, int] = {}
    for key, (_, seq) in containers.items():
        if why_untouchable(seq) is not None:
            unproven[key] = f"the container {why_untouchable(seq)}"
        for child in seq.children():
            if parent.setdefault(id(child), key) != key:  # held by two containers
                unproven[key] = unproven[parent[id(child)]] = "a child is held twice"
    stack: list[int] = []  # the tracked modules running now, innermost last
    ran: set[int] = set()

    def enter(module: nn.Module, args: object) -> None:
        owner = parent.get(id(module))
        if owner is not None and (not stack or stack[-1] != owner):
            unproven.setdefault(
                owner,
                f"a child ({type(module).__name__}) is called outside the container's chain, "
                "so its output may be read elsewhere",
            )
        stack.append(id(module))
        ran.add(id(module))

    def leave(module: nn.Module, args: object, output: object) -> None:
        stack.pop()

    tracked = {id(m): m for _, seq in containers.values() for m in (seq, *seq.children())}
    handles = []
    for m in tracked.values():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave, always_call=True))
    try:
        run_model(root, as_inputs(example_input), "original")
    finally:
        for handle in handles:
            handle.remove()
    for key in containers:
        if key not in ran:
            unproven.setdefault(key, "the container did not run on example_input")
    return unproven


def report_untouchable(report: PassReport, graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Name in ``report`` every module with layers inside that the graph calls whole
    because of its hooks or parametrisations (nothing inside it is changed)."""
    for node in graph.nodes:
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        inside = m is not None and any(n != "parametrizations" for n, _ in m.named_children())
        reason = why_untouchable(m) if m is not None and inside else None
        if reason is not None:
            report.skipped.append(
                (str(node.target), f"{reason}: left whole, nothing inside changed")
            )


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
        return None if m is None or why_untouchable(m) else module_activation(m)
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
