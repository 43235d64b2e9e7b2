"""The torch engine in int8: PyTorch 2 export quantisation (PT2E) with the x86 Inductor
quantiser, lowered to oneDNN's int8 kernels.

PT2E works on the pre-dispatch ATen graph ``torch.export`` gives (``aten.conv2d``,
``aten.linear``), so this builder captures the model itself rather than taking the
transformed program. ``prepare_pt2e`` inserts observers where
``X86InductorQuantizer`` says (int8 activations per tensor, int8 weights per channel;
batch norm folded into the convolution), the calibration batches run through it,
``convert_pt2e`` writes quantise / dequantise pairs, and torchao's
``lower_pt2e_quantized_to_x86`` (Inductor's freezing passes) turns the pairs around
convolutions and linear layers into ``onednn.qconv_pointwise`` /
``onednn.qlinear_pointwise`` with prepacked int8 weights. The lowering is made at the
example's shapes; another input shape gets its own lowering on its first call.

Where PT2E lives: ``torch.ao.quantization.quantize_pt2e`` up to PyTorch 2.9; later
releases ship it in ``torchao`` (``torchao.quantization.pt2e``): on PyTorch 2.13,
``import torch.ao.quantization.quantize_pt2e`` raises ``ModuleNotFoundError``, and
``available`` says so and names the install. The route PyTorch documents after
``convert_pt2e``, ``torch.compile`` with ``freezing`` on, fails on PyTorch 2.13 with
torchao 0.18: ``InductorError: UnsupportedOperatorException:
onednn.qconv_prepack.default`` (the op has no fake-tensor implementation, and
Inductor's compilation propagates fake tensors through it); without freezing it
compiles, but runs dequantise + float32 convolutions. Hence the lowering above; its
graph runs eagerly, and that is slow: each ``quantize_per_tensor`` between the int8
kernels runs as five separate ATen ops (mul, round, add, clamp, copy) that Inductor
would have fused, and ``torch.compile`` of the lowered graph fails too (with or without
freezing: ``AssertionError`` in ``mkldnn_lowerings.qlinear_unary``, the packed weight
not being a graph constant). Measured on MobileNetV2 at batch 1 on a loaded machine:
359 ms against 32 ms for OpenVINO float32 (``benchmarks/bench_int8.py``). The builder
is correct (its accuracy is measured like the others') but no speed candidate on this
PyTorch; ``SLOW`` says so. On the built-in ResNet-50 ``prepare_pt2e`` fails with
torchao 0.18 (``ValueError: Input partition has more than one output node``).
"""

from __future__ import annotations

import copy
import importlib
import time
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from onebyone.activations import apply_activation
from onebyone.deploy.quantize.data import Batch
from onebyone.nn import Conv1x1

__all__ = ["SLOW", "Pt2eInt8Module", "available", "torch_int8_module"]


def _modules() -> tuple[ModuleType, ModuleType] | str:
    """``(quantize_pt2e, x86_inductor_quantizer)`` from torchao, or why they do not import."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (
                importlib.import_module("torchao.quantization.pt2e.quantize_pt2e"),
                importlib.import_module(
                    "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"
                ),
            )
    except ImportError as exc:
        try:
            importlib.import_module("torch.ao.quantization.quantize_pt2e")
            inside = "PyTorch's own copy lacks the x86 lowering"
        except ImportError:
            inside = (
                f"PyTorch {torch.__version__} no longer ships torch.ao.quantization.quantize_pt2e"
            )
        return (
            f"PT2E quantisation needs torchao ({type(exc).__name__}: {exc}; {inside}): "
            "pip install 'onebyone[pt2e]'"
        )


SLOW = (
    "PT2E int8 runs eagerly here (torch.compile of the PT2E graph fails on PyTorch "
    f"{torch.__version__}: onednn.qconv_prepack has no fake-tensor implementation), its "
    "quantise steps unfused: slower than float32"
)
"""Why the torch engine's int8 is no speed candidate on this PyTorch (for a report)."""


def available() -> str | None:
    """``None`` when PT2E and the x86 Inductor quantiser import, else why and the install."""
    found = _modules()
    return found if isinstance(found, str) else None


class _PlainConv1x1(nn.Module):
    """A ``Conv1x1`` as ``nn.Conv2d`` + residual + activation (ATen ops PT2E annotates)."""

    def __init__(self, layer: Conv1x1) -> None:
        super().__init__()
        converted = layer.to_conv2d()
        self.conv = converted[0] if isinstance(converted, nn.Sequential) else converted
        self.activation = layer.activation

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        if residual is not None:
            y = y + residual
        return y if self.activation is None else apply_activation(y, self.activation, inplace=False)


def _plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``Conv1x1`` as ``nn.Conv2d`` (the registered op is
    opaque to the quantiser, which annotates ``aten.conv2d``)."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, Conv1x1) and name:
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name) if parent_name else plain
            setattr(parent, child, _PlainConv1x1(module))
    if isinstance(plain, Conv1x1):
        plain = _PlainConv1x1(plain)
    return plain


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The pre-dispatch graph module PT2E prepares: the batch dynamic when the model allows
    it (traced at batch 2 or more), else at the example's shapes."""
    traced = tuple(torch.cat([t, t]) if t.dim() >= 1 and t.shape[0] == 1 else t for t in inputs)
    shapes = tuple({0: Dim.AUTO} if t.dim() >= 1 else None for t in traced)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(model, traced, dynamic_shapes=shapes, strict=False).module()
        except Exception:  # a model that fixes its batch size: static shapes
            return torch.export.export(model, inputs, strict=False).module()


class Pt2eInt8Module(nn.Module):
    """A PT2E-quantised graph lowered to oneDNN's int8 kernels, called like the original.

    Args:
        converted: the graph module ``convert_pt2e`` returned (lowered again for input
            shapes other than the example's).
        lowered: the lowering at the example's shapes.
        shapes: the example's input shapes.
        calibration_s: seconds spent preparing, calibrating, converting and lowering.

    Shape:
        The original model's.
    """

    def __init__(
        self, converted: Any, lowered: Any, shapes: list[tuple[int, ...]], *, calibration_s: float
    ) -> None:
        super().__init__()
        self.converted = converted
        self._lowered: dict[tuple[tuple[int, ...], ...], Any] = {tuple(shapes): lowered}
        self.calibration_s = calibration_s

    def forward(self, *args: torch.Tensor) -> Any:
        key = tuple(tuple(t.shape) for t in args)
        with torch.no_grad():
            lowered = self._lowered.get(key)
            if lowered is None:
                lowered = self._lowered[key] = _lower(self.converted, args)
            return lowered(*args)

    def train(self, mode: bool = True) -> Pt2eInt8Module:
        """Frozen for inference: only the flag changes."""
        self.training = mode
        return self

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a PT2E-lowered module does not pickle; quantise again")


def _lower(converted: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lower_pt2e_quantized_to_x86(converted, inputs)


def torch_int8_module(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], *, calibration: Sequence[Batch]
) -> Pt2eInt8Module:
    """Quantise ``model`` with PT2E and the x86 Inductor quantiser, calibrated on
    ``calibration``, and lower it to oneDNN's int8 kernels at the example's shapes.

    Args:
        model: the float32 model in eval mode (not modified: a copy is captured).
        inputs: the example's inputs (the first lowering is made for their shapes).
        calibration: the batches the observers see (``split_data``).

    Raises:
        RuntimeError: PT2E is not available here (the message says why and what to
            install), or capture, quantisation or lowering failed.
        ValueError: no calibration batch.

    Shape:
        The original model's.
    """
    found = _modules()
    if isinstance(found, str):
        raise RuntimeError(found)
    pt2e, xiq = found
    if not calibration:
        raise ValueError(
            "Invalid value for argument `calibration`. Expected at least one batch of real "
            "inputs. Received none."
        )
    start = time.perf_counter()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = pt2e.prepare_pt2e(_export(_plain(model).eval(), inputs), quantizer)
        with torch.no_grad():
            for batch in calibration:
                prepared(*batch.inputs)
        converted = pt2e.convert_pt2e(prepared)
    lowered = _lower(converted, inputs)
    return Pt2eInt8Module(
        converted, lowered, [tuple(t.shape) for t in inputs],
        calibration_s=time.perf_counter() - start,
    )  # fmt: skip
