"""``OnnxRuntimeModule``: an ONNX graph run by ONNX Runtime behind the ``nn.Module`` interface.

Tensors go in and come out without copies (inputs as numpy views of their
memory, outputs wrapped by ``torch.from_numpy``). The graph has the
static shapes of the example it was exported with; other inputs (other shapes
or dtypes, inputs that need gradients) run through the ``fallback`` module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxRuntimeModule", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntimeModule(nn.Module):
    """Runs an ONNX model with ONNX Runtime's CPU execution provider.

    Args:
        model_bytes: the serialised ONNX model.
        initializers: ``{name: array}`` for constants the model stores as external
            data (handed to the session without serialising them); may be empty.
        input_shapes: the static shape of every input, in order.
        output_shapes: the static shape of every output, in order.
        single_output: return a tensor rather than a sequence.
        output_list: return several outputs as a list rather than a tuple.
        fallback: module for inputs the graph was not built for; ``None`` raises instead.
        intra_op_threads: ONNX Runtime's thread count (``0``: its default, one per core).

    Shape:
        The example's shapes: ``input_shapes -> output_shapes`` (float32, CPU).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from onebyone.transforms import OnnxRuntimeModule, to_onnx
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> ort_model = OnnxRuntimeModule(to_onnx(model, x).SerializeToString(), {},
        ...                               input_shapes=[(1, 3, 8, 8)], output_shapes=[(1, 4, 6, 6)])
        >>> torch.allclose(ort_model(x), model(x), atol=1e-5)
        True
    """

    def __init__(
        self,
        model_bytes: bytes,
        initializers: dict[str, np.ndarray],
        *,
        input_shapes: list[tuple[int, ...]],
        output_shapes: list[tuple[int, ...]],
        single_output: bool = True,
        output_list: bool = False,
        fallback: nn.Module | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        super().__init__()
        if not onnxruntime_available():
            raise RuntimeError(
                "engine 'onnxruntime' needs the `onnxruntime` package: pip install 'onebyone[onnx]'"
            )
        self.model_bytes = model_bytes
        self.initializers = initializers
        self.input_shapes = [tuple(int(d) for d in s) for s in input_shapes]
        self.output_shapes = [tuple(int(d) for d in s) for s in output_shapes]
        self.single_output = single_output
        self.output_list = output_list
        self.fallback = fallback
        self.intra_op_threads = intra_op_threads
        self._session: Any = None
        self._session = self._make_session()

    def _make_session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3
        if self.initializers:
            names = list(self.initializers)
            values = [ort.OrtValue.ortvalue_from_numpy(self.initializers[n]) for n in names]
            options.add_external_initializers(names, values)
        session = ort.InferenceSession(
            self.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [o.name for o in session.get_outputs()]
        return session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # rebuilt on first use after a copy or unpickling
        return state

    def accepts(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Whether ``inputs`` match the graph (else ``forward`` uses the fallback)."""
        if len(inputs) != len(self.input_shapes):
            return False
        needs_grad = torch.is_grad_enabled()
        for t, shape in zip(inputs, self.input_shapes, strict=True):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
                return False
            if t.device.type != "cpu" or tuple(t.shape) != shape:
                return False
            if needs_grad and t.requires_grad:
                return False
        return True

    def forward(
        self, *inputs: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]:
        if not self.accepts(inputs):
            if self.fallback is None:
                shapes = [tuple(t.shape) for t in inputs]
                raise ValueError(
                    "Invalid value for argument `inputs`. Expected float32 CPU tensors of "
                    f"shapes {self.input_shapes} (the graph's static shapes). Received "
                    f"shapes {shapes}."
                )
            return self.fallback(*inputs)
        if self._session is None:
            self._session = self._make_session()
        # numpy views share the tensors' memory; ONNX Runtime's outputs become tensors as is
        feed = {
            name: t.detach().contiguous().numpy()
            for name, t in zip(self._input_names, inputs, strict=True)
        }
        outputs = [torch.from_numpy(o) for o in self._session.run(self._output_names, feed)]
        if self.single_output:
            return outputs[0]
        return outputs if self.output_list else tuple(outputs)

    def extra_repr(self) -> str:
        return f"inputs={self.input_shapes}, outputs={self.output_shapes}"
