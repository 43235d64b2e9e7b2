"""What every engine's module shares: the model's call signature, flattened and restored.

An exported program takes its inputs as the pytree ``(args, kwargs)`` and returns a
pytree of tensors; an engine runs flat lists of tensors. ``FlatModule`` flattens a
call with the program's input spec, runs ``run`` and rebuilds the output with the
output spec, so the engine's module is called like the original model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["FlatModule", "arrays_of"]


def arrays_of(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """C-contiguous NumPy arrays over the tensors' memory (a copy only where a tensor is
    not contiguous).

    The common tensor converts in one call (``Tensor.numpy``); one that needs grad or
    carries a lazy conjugate or negation is detached and resolved first. Each call into
    PyTorch counts here: right after an engine has run, the caches hold the engine's
    weights, and one call costs 10-50 us instead of under one (measured on MobileNetV2
    at batch 1 on a Zen 4 CPU, against an engine call of 2-5 ms).
    """
    arrays = []
    for t in tensors:
        try:
            a = t.numpy()
        except RuntimeError:  # needs grad, or a lazy conjugate or negation
            a = t.detach().resolve_conj().resolve_neg().numpy()
        arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    return arrays


class FlatModule(nn.Module):
    """Base of the ONNX Runtime and OpenVINO modules.

    Called with the exported positional inputs (``Served`` binds the caller's call to
    them and checks they are proven first).

    Args:
        in_spec: the pytree spec of ``(args, kwargs)`` the program was exported with.
        out_spec: the pytree spec of its outputs.
        input_dtypes: the dtype each flat input must have.
        output_constants: the flat outputs that are constants (``None`` beside tensors),
            by position: ONNX and OpenVINO graphs leave them out, they are put back.
    """

    def __init__(
        self,
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        input_dtypes: list[torch.dtype],
        output_constants: dict[int, Any] | None = None,
    ) -> None:
        super().__init__()
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.input_dtypes = input_dtypes
        self.output_constants = dict(output_constants or {})
        # the common call, positional tensors in and one tensor out, skips the pytree
        # work on each call (tens of microseconds; an engine call of a small model at
        # batch 1 takes a millisecond or two)
        n = in_spec.num_leaves
        self._positional = in_spec == pytree.tree_flatten((tuple(range(n)), {}))[1]
        self._one_tensor = out_spec.is_leaf() and not self.output_constants

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The engine's computation on flat CPU tensors: ``run_arrays`` on views of their
        memory, its outputs wrapped without a copy."""
        return [torch.from_numpy(o) for o in self.run_arrays(arrays_of(inputs))]

    def run_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The engine's computation on C-contiguous arrays; outputs the caller owns."""
        raise NotImplementedError

    def single(self, shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray] | None:
        """For a model of one tensor in and one out, called at ``shape``: ``run_arrays``
        as one function of the input's C-contiguous array, its output the caller's, made
        of the runtime's calls alone; ``None`` for any other call structure."""
        return None

    def forward(self, *args: Any) -> Any:
        if (self._positional and len(args) == len(self.input_dtypes)
                and all(isinstance(a, torch.Tensor) for a in args)):  # fmt: skip
            flat = list(args)  # the common call: no pytree work
        else:
            flat, spec = pytree.tree_flatten((args, {}))
            if spec != self.in_spec:
                raise TypeError(
                    "Invalid value for argument `inputs`. Expected the call the model was "
                    f"optimised for ({self.in_spec.num_leaves} tensor(s)). Received "
                    f"{spec.num_leaves} leaf value(s) in another structure."
                )
        for i, (t, dtype) in enumerate(zip(flat, self.input_dtypes, strict=True)):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.device.type != "cpu":
                raise TypeError(
                    f"Invalid value for argument `inputs`. Expected a CPU tensor of dtype "
                    f"{dtype} at position {i}. Received {type(t).__name__} "
                    f"{getattr(t, 'dtype', '')}."
                )
        return self.proven(*flat)

    def proven(self, *flat: torch.Tensor) -> Any:
        """The engine on flat inputs already checked (``Served`` checked them against
        the capture, and remembers their shapes): no check here."""
        return self.proven_arrays(arrays_of(list(flat)))

    def proven_arrays(self, arrays: list[np.ndarray]) -> Any:
        """``proven`` on the inputs' C-contiguous arrays, in the program's output structure."""
        outputs = self.run_arrays(arrays)
        if self._one_tensor and len(outputs) == 1:
            return torch.from_numpy(outputs[0])
        return self._restore([torch.from_numpy(o) for o in outputs])

    def _restore(self, results: list[Any]) -> Any:
        """The flat outputs put back into the program's output structure."""
        constants = self.output_constants
        if constants and len(results) + len(constants) == self.out_spec.num_leaves:
            tensors = iter(results)
            results = [constants[i] if i in constants else next(tensors)
                       for i in range(self.out_spec.num_leaves)]  # fmt: skip
        return pytree.tree_unflatten(results, self.out_spec)
