"""THE kernel choice: which fast path runs one convolution call.

``choose`` decides from the backend asked for, the tensor's device, dtype and
layout, whether autograd records, and (for a 1x1 convolution) its geometry.
``conv1x1`` calls it once per call signature; the fused modules call it for
every call they make. ``packing_pays`` decides where a frozen model keeps a
weight packed in oneDNN's blocked layout.

The thresholds are measured, not derived: ``THRESHOLDS`` holds them as named
data, set by the layer suite of ``benchmarks/bench_op.py`` (its results in
``benchmarks/results/bench_op.json``); documentation refers to these names.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from onebyone.geometry import ConvGeometry
from onebyone.kernels import gemm, onednn

__all__ = [
    "BACKENDS",
    "THRESHOLDS",
    "BackendUnavailableError",
    "Thresholds",
    "choose",
    "kernel",
    "packing_pays",
    "thin_nchw",
]

BACKENDS: tuple[str, ...] = ("auto", "gemm", "onednn", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message says why."""


@dataclass(frozen=True)
class Thresholds:
    """Measured kernel-choice thresholds (``benchmarks/bench_op.py``'s layer suite).

    Thin NCHW float32 inference runs as a GEMM on the ``(C/g, H*W)`` planes where
    they lie (oneDNN would reorder them to its blocked layout first); a product is
    thin when any of these holds: grouped; at most ``thin_filters`` filters per
    group; at most ``small_filters`` filters on at most ``small_filters_pixels``
    output pixels; at most ``thin_channels`` input channels per group on at most
    ``thin_channels_pixels`` pixels; or a weight of at most ``small_weight`` values
    per group. Over the suite the GEMM was never more than 3% slower there and up to
    2.5x faster.

    A frozen model keeps a weight packed where it outweighs the output pixels
    (more filters per group than ``N*H'*W'``) in a product of at least
    ``packing_min_macs`` multiply-adds: below that the packed call's setup costs
    more than the reorder it saves.
    """

    thin_filters: int = 24
    small_filters: int = 64
    small_filters_pixels: int = 196
    thin_channels: int = 48
    thin_channels_pixels: int = 3136
    small_weight: int = 1024
    packing_min_macs: int = 1 << 21


THRESHOLDS = Thresholds()

_KERNELS: dict[str, ModuleType] = {"gemm": gemm, "onednn": onednn}  # "triton": on first use
_warned: set[str] = set()


def kernel(backend: str) -> ModuleType | str:
    """The kernel module of ``backend``, or why it cannot be loaded (Triton is optional)."""
    if backend in _KERNELS:
        return _KERNELS[backend]
    try:  # imported lazily: `import onebyone` works without Triton
        from onebyone.kernels import triton as triton_kernels
    except (ImportError, RuntimeError) as error:
        return f"Triton cannot be imported ({error}); pip install 'onebyone[triton]'"
    _KERNELS[backend] = triton_kernels
    return triton_kernels


def thin_nchw(x: torch.Tensor, geo: ConvGeometry, limits: Thresholds | None = None) -> bool:
    """Whether a float32 NCHW 1x1 inference on the CPU runs faster as a GEMM (see
    ``Thresholds``; ``limits`` defaults to ``THRESHOLDS``)."""
    limits = THRESHOLDS if limits is None else limits
    if x.dtype != torch.float32 or not x.is_contiguous():
        return False
    kg, cg = geo.out_channels // geo.groups, geo.in_channels // geo.groups
    pixels = geo.output_pixels
    return (
        geo.groups > 1
        or kg <= limits.thin_filters
        or (kg <= limits.small_filters and pixels <= limits.small_filters_pixels)
        or (cg <= limits.thin_channels and pixels <= limits.thin_channels_pixels)
        or cg * kg <= limits.small_weight
    )


def packing_pays(
    filters_per_group: int,
    reduction: int,
    output_pixels: int,
    limits: Thresholds | None = None,
) -> bool:
    """Whether a frozen channels-last inference should keep this weight packed.

    ``reduction`` is the length of each output's dot product (``C/g`` times the
    kernel's area) and ``output_pixels`` is ``N*H'*W'`` (see ``Thresholds``; ``limits``
    defaults to ``THRESHOLDS``).
    """
    limits = THRESHOLDS if limits is None else limits
    if filters_per_group <= output_pixels:
        return False
    return filters_per_group * reduction * output_pixels >= limits.packing_min_macs


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def choose(backend: str, x: torch.Tensor, needs_grad: bool, geo: ConvGeometry | None) -> ModuleType:
    """The kernel module for one call.

    Args:
        backend: ``"auto"`` or an explicit backend of ``BACKENDS``.
        x: the batched input (its device, dtype, layout and size decide).
        needs_grad: whether autograd records the call.
        geo: the 1x1 geometry; ``None`` for other kernel sizes (then only the oneDNN
            route or plain PyTorch ops are candidates, and ``gemm`` stands for the latter).

    Raises:
        BackendUnavailableError: an explicit backend cannot run these inputs.
    """
    if backend != "auto":
        found = kernel(backend)
        reason = found if isinstance(found, str) else found.unsupported(x, needs_grad)
        if reason is not None or isinstance(found, str):
            raise BackendUnavailableError(f"backend={backend!r} cannot run here: {reason}.")
        return found
    device = x.device.type
    if device == "cuda" and geo is not None:
        found = kernel("triton")
        if isinstance(found, ModuleType) and found.unsupported(x, needs_grad) is None:
            return found
        if isinstance(found, str):
            _warn_once("triton", f"onebyone: {found}. CUDA uses the GEMM path.")
    if device == "cpu":
        if onednn.unsupported(x, needs_grad) is None:
            if geo is not None and not needs_grad and thin_nchw(x, geo):
                return gemm
            return onednn
        if not onednn.is_available():
            _warn_once(
                "onednn",
                "onebyone: this PyTorch build lacks oneDNN's fused convolution; "
                "the CPU uses the GEMM path.",
            )
    return gemm
