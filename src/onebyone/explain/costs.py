"""What a 1x1 reduction costs and saves: seed 000's 50 -> 20 maps, seed 001's 64 -> 32
reduction and its bottleneck (1x1 reduce -> 3x3 -> 1x1 expand) against a plain 3x3.

Every number comes from real layers: they are built and run on an input of the
stated shape under ``onebyone.profile``, which counts what each executed
convolution costs. A MAC is one multiply-accumulate (bias adds not included);
parameters are weights and biases; memory is ``numel x element size`` of the
tensors involved (float32: 4 bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from onebyone import _checks
from onebyone.nn import Conv1x1
from onebyone.profiling import profile

__all__ = [
    "BottleneckComparison",
    "LayerCount",
    "ReductionCase",
    "bottleneck_comparison",
    "count_layers",
    "reduction_case",
    "reduction_examples",
]


@dataclass(frozen=True)
class LayerCount:
    """One convolution as it ran: shapes, parameters, multiply-accumulates, output bytes."""

    name: str
    kernel: tuple[int, int]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    output_bytes: int


def count_layers(model: nn.Module, x: torch.Tensor) -> tuple[list[LayerCount], torch.Tensor]:
    """Run ``model(x)`` once and report every convolution it executed (``onebyone.profile``).

    Args:
        model: any module; it is not changed.
        x: the input.

    Returns:
        ``(layers, output)``: one ``LayerCount`` per executed convolution (1x1 or kxk),
        in call order, and the model's output.

    Example:
        >>> layers, y = count_layers(Conv1x1(64, 32), torch.zeros(1, 64, 28, 28))
        >>> layers[0].macs == 64 * 32 * 28 * 28
        True
    """
    report = profile(model, x)
    records = []
    for layer in report.layers:
        if layer.category not in ("pointwise", "conv", "grouped", "depthwise"):
            continue
        module = model.get_submodule(layer.name)
        kernel = getattr(module, "kernel_size", (1, 1))
        records.append(
            LayerCount(
                name=layer.name or type(model).__name__,
                kernel=(int(kernel[0]), int(kernel[1])),
                input_shape=layer.input_shape,
                output_shape=layer.output_shape,
                params=layer.cost.params,
                macs=layer.cost.macs,
                output_bytes=layer.cost.bytes_written,
            )
        )
    with torch.inference_mode():
        y = model(x)
    return records, y


@dataclass(frozen=True)
class ReductionCase:
    """A 1x1 layer reducing ``C`` maps to ``K`` maps, measured on a real run."""

    title: str
    input_shape: tuple[int, ...]  # (N, C, H, W)
    output_shape: tuple[int, ...]  # (N, K, H, W)
    weight_shape: tuple[int, ...]  # (K, C)
    weights: int
    biases: int
    macs: int
    input_bytes: int
    output_bytes: int
    weight_bytes: int

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def memory_ratio(self) -> float:
        """Output activation bytes over input activation bytes (``K / C``)."""
        return self.output_bytes / self.input_bytes


def reduction_case(
    title: str, in_channels: int, out_channels: int, size: int | tuple[int, int]
) -> ReductionCase:
    """Build ``Conv1x1(in_channels, out_channels)``, run it on one ``size`` input, measure it.

    Shape:
        ``(1, C, H, W) -> (1, K, H, W)``.

    Example:
        >>> reduction_case("64 -> 32", 64, 32, 28).macs
        1605632
    """
    c = _checks.positive_int("in_channels", in_channels)
    k = _checks.positive_int("out_channels", out_channels)
    h, w = _checks.pair("size", size)
    layer = Conv1x1(c, k)
    x = torch.zeros(1, c, h, w)
    layers, y = count_layers(layer, x)
    (count,) = layers
    biases = 0 if layer.bias is None else layer.bias.numel()
    return ReductionCase(
        title=title,
        input_shape=tuple(x.shape),
        output_shape=tuple(y.shape),
        weight_shape=tuple(layer.weight.shape),
        weights=count.params - biases,
        biases=biases,
        macs=count.macs,
        input_bytes=x.numel() * x.element_size(),
        output_bytes=count.output_bytes,
        weight_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
    )


def reduction_examples() -> list[ReductionCase]:
    """The seeds' two reductions: 50 maps of 600x600 -> 20 (seed 000), 64 -> 32 at 28x28
    (seed 001's Keras example 1)."""
    return [
        reduction_case("50 maps of 600x600 -> 20 (seed 000)", 50, 20, 600),
        reduction_case("64 maps of 28x28 -> 32 (seed 001)", 64, 32, 28),
    ]


@dataclass(frozen=True)
class BottleneckComparison:
    """A bottleneck and a plain 3x3 of the same width, each layer measured on a real run."""

    input_shape: tuple[int, ...]
    bottleneck: list[LayerCount]
    plain: list[LayerCount]
    bottleneck_output: tuple[int, ...]
    plain_output: tuple[int, ...]

    @staticmethod
    def _total(layers: Sequence[LayerCount], field: str) -> int:
        return sum(int(getattr(layer, field)) for layer in layers)

    @property
    def params(self) -> tuple[int, int]:
        """(bottleneck, plain) parameters."""
        return self._total(self.bottleneck, "params"), self._total(self.plain, "params")

    @property
    def macs(self) -> tuple[int, int]:
        """(bottleneck, plain) multiply-accumulates."""
        return self._total(self.bottleneck, "macs"), self._total(self.plain, "macs")


def bottleneck_comparison(
    channels: int = 64, reduced: int = 32, size: int | tuple[int, int] = 28
) -> BottleneckComparison:
    """Seed 001's bottleneck (1x1 reduce -> 3x3 -> 1x1 expand) against a plain 3x3.

    Both map ``channels`` maps to ``channels`` maps at the same resolution, with
    ReLU after every convolution and ``padding=1`` on the 3x3 (Keras ``"same"``).

    Args:
        channels: input and output width (seed 001: 64).
        reduced: width inside the bottleneck (seed 001: 32).
        size: ``H`` and ``W`` (seed 001: 28).

    Shape:
        ``(1, channels, H, W) -> (1, channels, H, W)`` for both designs.

    Example:
        >>> cmp = bottleneck_comparison()
        >>> cmp.params
        (13440, 36928)
    """
    c = _checks.positive_int("channels", channels)
    r = _checks.positive_int("reduced", reduced)
    h, w = _checks.pair("size", size)
    bottleneck = nn.Sequential()
    bottleneck.add_module("reduce_1x1", Conv1x1(c, r, activation="relu"))
    bottleneck.add_module("conv_3x3", nn.Conv2d(r, r, 3, padding=1))
    bottleneck.add_module("relu", nn.ReLU())
    bottleneck.add_module("expand_1x1", Conv1x1(r, c, activation="relu"))
    plain = nn.Sequential()
    plain.add_module("conv_3x3", nn.Conv2d(c, c, 3, padding=1))
    plain.add_module("relu", nn.ReLU())
    x = torch.zeros(1, c, h, w)
    b_layers, yb = count_layers(bottleneck, x)
    p_layers, yp = count_layers(plain, x)
    return BottleneckComparison(
        input_shape=tuple(x.shape),
        bottleneck=b_layers,
        plain=p_layers,
        bottleneck_output=tuple(yb.shape),
        plain_output=tuple(yp.shape),
    )
