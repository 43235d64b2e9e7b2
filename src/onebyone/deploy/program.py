"""``Program``: an exported program owned by ``optimize``, and the edits its passes make.

``torch.export`` lifts parameters, buffers and constant tensors into placeholders
of the graph, listed in the graph signature. The passes read those values (and
values computed from them alone, such as a frozen norm's scale), and add new
constants (a folded weight) as lifted constants, so the program stays a valid
``ExportedProgram`` that ``torch.onnx.export`` and ``openvino.convert_model``
accept. The tensors of the user's model are read, never written.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

__all__ = ["Program"]

_STATE = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


class Program:
    """A functional ``ExportedProgram`` being transformed in place.

    Args:
        program: an exported program whose graph is functional (``run_decompositions``
            has run); it is edited in place, so pass one nobody else holds.
    """

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self.graph: fx.Graph = program.graph_module.graph
        self._values: dict[fx.Node, torch.Tensor | None] = {}
        self._from_input: dict[fx.Node, bool] = {}
        self._added = 0

    # ------------------------------------------------------------------ reading

    def _spec(self, node: fx.Node) -> InputSpec | None:
        if node.op != "placeholder":
            return None
        return next(
            (
                s
                for s in self.program.graph_signature.input_specs
                if isinstance(s.arg, TensorArgument) and s.arg.name == node.name
            ),
            None,
        )

    def state_value(self, node: fx.Node) -> torch.Tensor | None:
        """The tensor a parameter, buffer or constant placeholder stands for."""
        spec = self._spec(node)
        if spec is None or spec.kind not in _STATE or spec.target is None:
            return None
        if spec.kind == InputKind.CONSTANT_TENSOR:
            value = self.program.constants.get(spec.target)
        else:
            value = self.program.state_dict.get(spec.target)
            if value is None:  # a non-persistent buffer lives with the constants
                value = self.program.constants.get(spec.target)
        return value if isinstance(value, torch.Tensor) else None

    def value(self, node: object) -> torch.Tensor | None:
        """The value of ``node`` when it depends on the model's state alone (no input),
        computed from the state's tensors and remembered; else ``None``."""
        if not isinstance(node, fx.Node):
            return None
        if node in self._values:
            return self._values[node]
        if self.from_input(node):
            return None  # without walking back through the activations
        result: torch.Tensor | None = None
        if node.op == "placeholder":
            result = self.state_value(node)
        elif node.op == "call_function" and node.target is not operator.getitem:
            result = self._evaluate(node)
        elif node.op == "call_function":  # getitem of a constant tuple
            base = node.args[0]
            if isinstance(base, fx.Node) and base.op == "call_function":
                out = self._evaluate(base, whole=True)
                if isinstance(out, (tuple, list)):
                    item = out[node.args[1]]  # type: ignore[index]
                    result = item if isinstance(item, torch.Tensor) else None
        self._values[node] = result
        return result

    def _evaluate(self, node: fx.Node, *, whole: bool = False) -> Any:
        inputs = [n for n in node.all_input_nodes]
        if not inputs or any(self.value(n) is None for n in inputs):
            return None
        args, kwargs = fx.map_arg((node.args, node.kwargs), lambda n: self._values[n])
        try:
            with torch.no_grad():
                out = node.target(*args, **kwargs)  # type: ignore[operator]
        except (RuntimeError, TypeError, ValueError):
            return None
        if whole:
            return out
        return out if isinstance(out, torch.Tensor) else None

    def from_input(self, node: fx.Node) -> bool:
        """Whether ``node``'s value depends on an input of the program (not on the
        model's state alone). One pass over the graph, redone when it has new nodes;
        unlike ``value`` it never computes anything."""
        if node not in self._from_input:
            self._from_input = {}
            for n in self.graph.nodes:
                if n.op == "placeholder":
                    self._from_input[n] = self.state_value(n) is None
                else:
                    inputs = n.all_input_nodes
                    self._from_input[n] = any(self._from_input.get(i, True) for i in inputs)
        return self._from_input.get(node, True)

    def shape(self, node: object) -> tuple[Any, ...] | None:
        """The (possibly symbolic) shape export recorded for ``node``."""
        if not isinstance(node, fx.Node):
            return None
        val = node.meta.get("val")
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None

    def calls(self, targets: object) -> Iterator[fx.Node]:
        """The ``call_function`` nodes whose target is in ``targets``, in graph order."""
        wanted = set(targets)  # type: ignore[call-overload]
        for node in list(self.graph.nodes):
            if node.op == "call_function" and node.target in wanted:
                yield node

    # ------------------------------------------------------------------ editing

    def add_constant(self, tensor: torch.Tensor, name: str) -> fx.Node:
        """A new lifted constant holding ``tensor`` (owned by the program)."""
        self._added += 1
        target = f"onebyone_{name}_{self._added}".replace(".", "_")
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        specs = self.program.graph_signature.input_specs
        index = next((i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT), len(specs))
        anchor = placeholders[index] if index < len(placeholders) else None
        if anchor is not None:
            with self.graph.inserting_before(anchor):
                node = self.graph.placeholder(target)
        else:
            with self.graph.inserting_after(placeholders[-1] if placeholders else None):
                node = self.graph.placeholder(target)
        node.meta["val"] = self._fake(tensor)
        specs.insert(index, InputSpec(InputKind.CONSTANT_TENSOR, TensorArgument(node.name), target))
        self.program.constants[target] = tensor
        self._values[node] = tensor
        return node

    def _fake(self, tensor: torch.Tensor) -> Any:
        for node in self.graph.nodes:
            val = node.meta.get("val")
            mode = getattr(val, "fake_mode", None)
            if mode is not None:
                return mode.from_tensor(tensor, static_shapes=True)
        return tensor

    def finish(self) -> None:
        """Drop what the edits left unused (nodes, state inputs) and check the program."""
        self.graph.eliminate_dead_code()
        specs = self.program.graph_signature.input_specs
        used = {n.name for n in self.graph.nodes if n.op != "placeholder" or n.users}
        keep: list[InputSpec] = []
        for node, spec in zip(
            [n for n in self.graph.nodes if n.op == "placeholder"], list(specs), strict=True
        ):
            if spec.kind in _STATE and node.name not in used:
                self.graph.erase_node(node)
                if spec.target is not None:
                    self.program.state_dict.pop(spec.target, None)
                    self.program.constants.pop(spec.target, None)
                continue
            keep.append(spec)
        specs[:] = keep
        # an output whose node an edit replaced keeps its place under the new node's name
        output = next(n for n in self.graph.nodes if n.op == "output")
        values = output.args[0] if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
        for spec, value in zip(self.program.graph_signature.output_specs, values, strict=False):
            if isinstance(spec.arg, TensorArgument) and isinstance(value, fx.Node):
                spec.arg.name = value.name
        self.graph.lint()
        self.program.graph_module.recompile()
        self._values.clear()
        self._from_input.clear()
        self.program.validate()
