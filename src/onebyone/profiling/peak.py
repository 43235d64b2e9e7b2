"""The roof of the roofline: a machine's fp32 GEMM GFLOP/s and memory GB/s."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from onebyone import _checks
from onebyone.cost import Cost

__all__ = ["MachinePeak", "machine_peak"]


@dataclass(frozen=True)
class MachinePeak:
    """A machine's measured peaks: the roof of the roofline.

    Args:
        gflops: fp32 matrix-product throughput, GFLOP/s.
        gbps: memory bandwidth, GB/s (10^9 bytes per second).
        engine: the engine that reached ``gflops``.
        device: where it was measured.

    A layer with ``F`` FLOPs moving ``B`` bytes is predicted to take
    ``max(F / gflops, B / gbps)`` (in 10^-9 s) and is compute-bound when the
    first term is the larger.

    Example:
        >>> import onebyone as obo
        >>> peak = obo.MachinePeak(gflops=400.0, gbps=20.0, engine="given")
        >>> peak.bound(obo.conv_cost(256, 64, input_size=56))
        'compute'
        >>> peak.bound(obo.conv_cost(32, 32, input_size=56))
        'memory'
    """

    gflops: float
    gbps: float
    engine: str = "given"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("gflops", "gbps"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise _checks.invalid(name, "a positive number", value, kind=TypeError)
            if not (math.isfinite(value) and value > 0):
                raise _checks.invalid(name, "a positive finite number", value)

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where a layer turns compute-bound."""
        return self.gflops / self.gbps

    def _terms(self, cost: Cost) -> tuple[float, float]:
        return cost.flops / (self.gflops * 1e9), cost.bytes_moved / (self.gbps * 1e9)

    def seconds(self, cost: Cost) -> float:
        """Roofline time of ``cost``: ``max(flops / peak, bytes / bandwidth)``."""
        return max(self._terms(cost))

    def bound(self, cost: Cost) -> str:
        """``"compute"`` or ``"memory"``: which roof limits ``cost``."""
        compute, memory = self._terms(cost)
        return "compute" if compute >= memory and compute > 0 else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "gbps": self.gbps, "engine": self.engine,
                "device": self.device}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachinePeak:
        return cls(data["gflops"], data["gbps"], data["engine"], data["device"])


_PEAKS: dict[str, MachinePeak] = {}


def _best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: allocation, kernel choice
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(device: torch.device) -> MachinePeak:
    n = 1024
    rates: dict[str, float] = {}
    with torch.no_grad():
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        c = torch.empty(n, n, device=device)
        seconds = _best_seconds(lambda: torch.matmul(a, b, out=c), 3, device)
        rates["torch.matmul"] = 2 * n**3 / seconds
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            # oneDNN's channels-last 1x1 convolution often beats the BLAS behind matmul
            x = torch.randn(1, n, 32, 32).to(memory_format=torch.channels_last)
            w = torch.randn(n, n, 1, 1)
            rates["oneDNN 1x1 conv (channels-last)"] = (
                2 * n * n * 32 * 32 / _best_seconds(lambda: F.conv2d(x, w), 3, device)
            )
        # bandwidth: copy 64 MiB into 64 MiB, beyond the last-level caches
        src = torch.ones(16 * 2**20, device=device)
        dst = torch.zeros_like(src)
        moved = 2 * src.numel() * src.element_size()
        gbps = moved / _best_seconds(lambda: dst.copy_(src), 4, device) / 1e9
    engine = max(rates, key=lambda k: rates[k])
    return MachinePeak(rates[engine] / 1e9, gbps, engine, str(device))


def machine_peak(device: str | torch.device = "cpu") -> MachinePeak:
    """Measure this machine's fp32 GEMM GFLOP/s and memory GB/s, once per process.

    The compute peak is the best of ``torch.matmul`` on 1024x1024 matrices and
    (on CPU) oneDNN's channels-last 1x1 convolution of the same size, the
    fastest engine available here; bandwidth is a 64 MiB tensor copy (bytes
    read + written). Best of a few runs after a warm-up; about 0.1-0.3 s the
    first time, then cached for the process.

    Args:
        device: where to measure (``"cpu"`` or a CUDA device).

    Example:
        >>> import onebyone as obo
        >>> peak = obo.machine_peak()
        >>> peak.gflops > 0 and peak.gbps > 0
        True
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise _checks.invalid(
            "device", "a torch.device or a device string", device, kind=kind
        ) from exc
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = str(dev)
    if key not in _PEAKS:
        _PEAKS[key] = _measure(dev)
    return _PEAKS[key]
