"""The roof of the roofline: a machine's fp32 GEMM GFLOP/s and memory GB/s.

A peak comes from one of four places, which ``MachinePeak.origin`` names:

- ``"given"``: built by the caller, ``MachinePeak(gflops, gbps)``;
- ``"environment"``: ``ONEBYONE_PEAK_GFLOPS`` and ``ONEBYONE_PEAK_GBPS``, both set;
- ``"measured"``: measured now by ``machine_peak`` (warm-up, then the best of
  several timed runs of the fastest engine available) and written to the cache;
- ``"cached"``: read back from the cache, ``peak.json`` in
  ``$XDG_CACHE_HOME/onebyone/`` (else ``~/.cache/onebyone/``), one entry per
  machine: its CPU (or GPU) model, core and thread counts and torch version,
  with the date it was measured.

``cached_peak`` never measures; ``machine_peak`` measures only when nothing is
set or cached (or when asked to with ``refresh=True``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from onebyone import _checks, _files
from onebyone.cost import Cost

__all__ = [
    "ENV_GBPS",
    "ENV_GFLOPS",
    "ORIGINS",
    "MachinePeak",
    "cached_peak",
    "describe_peak",
    "machine_key",
    "machine_peak",
    "peak_cache_path",
]

ENV_GFLOPS = "ONEBYONE_PEAK_GFLOPS"
ENV_GBPS = "ONEBYONE_PEAK_GBPS"
ORIGINS: tuple[str, ...] = ("given", "environment", "measured", "cached")

_CACHE_VERSION = 1


@dataclass(frozen=True)
class MachinePeak:
    """A machine's peaks: the roof of the roofline.

    Args:
        gflops: fp32 matrix-product throughput, GFLOP/s.
        gbps: memory bandwidth, GB/s (10^9 bytes per second).
        engine: the engine that reached ``gflops`` (``""`` when not measured).
        device: where it holds (``"cpu"``, ``"cuda:0"``).
        origin: where the numbers come from, one of ``ORIGINS``.
        date: the day it was measured, ISO ``YYYY-MM-DD`` (``""`` when not measured).

    A layer with ``F`` FLOPs moving ``B`` bytes is predicted to take
    ``max(F / gflops, B / gbps)`` (in 10^-9 s) and is compute-bound when the
    first term is the larger.

    Example:
        >>> import onebyone as obo
        >>> peak = obo.MachinePeak(gflops=400.0, gbps=20.0)
        >>> peak.bound(obo.conv_cost(256, 64, input_size=56))
        'compute'
        >>> peak.bound(obo.conv_cost(32, 32, input_size=56))
        'memory'
    """

    gflops: float
    gbps: float
    engine: str = ""
    device: str = "cpu"
    origin: str = "given"
    date: str = ""

    def __post_init__(self) -> None:
        for name in ("gflops", "gbps"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise _checks.invalid(name, "a positive number", value, kind=TypeError)
            if not (math.isfinite(value) and value > 0):
                raise _checks.invalid(name, "a positive finite number", value)
        for name in ("engine", "device", "date"):
            if not isinstance(getattr(self, name), str):
                raise _checks.invalid(name, "a str", getattr(self, name), kind=TypeError)
        _checks.choice("origin", self.origin, ORIGINS)

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
                "device": self.device, "origin": self.origin, "date": self.date}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachinePeak:
        return cls(data["gflops"], data["gbps"], data["engine"], data["device"],
                   data["origin"], data["date"])  # fmt: skip


# ---------------------------------------------------------------- which machine, which file


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise _checks.invalid(
            "device", "a torch.device or a device string", device, kind=kind
        ) from exc
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key(device: str | torch.device = "cpu") -> str:
    """What identifies a machine in the cache: its processor, its cores and torch's version.

    Example:
        >>> from onebyone.profiling import machine_key
        >>> machine_key().startswith("cpu | ")
        True
    """
    dev = _device(device)
    if dev.type == "cuda":
        return (
            f"{dev} | {torch.cuda.get_device_name(dev)} | torch {torch.__version__} "
            f"| CUDA {torch.version.cuda}"
        )
    return (
        f"cpu | {_cpu_model()} | {os.cpu_count()} cores, {torch.get_num_threads()} threads "
        f"| torch {torch.__version__}"
    )


def peak_cache_path() -> Path:
    """The cache file: ``$XDG_CACHE_HOME/onebyone/peak.json``, else ``~/.cache/onebyone/peak.json``.

    Example:
        >>> from onebyone.profiling import peak_cache_path
        >>> peak_cache_path().name
        'peak.json'
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "onebyone" / "peak.json"


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        peaks = data["peaks"] if data.get("version") == _CACHE_VERSION else {}
        if not isinstance(peaks, dict):
            raise TypeError(f"'peaks' is a {type(peaks).__name__}")
        return peaks
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(
            f"ignoring the unreadable peak cache {path} ({exc}); it is rewritten when "
            "a peak is next measured",
            stacklevel=3,
        )
        return {}


def _write_cache(path: Path, key: str, peak: MachinePeak) -> bool:
    peaks = _read_cache(path)
    entry = peak.to_dict()
    del entry["origin"]
    peaks[key] = entry
    text = json.dumps({"version": _CACHE_VERSION, "peaks": peaks}, indent=2)
    try:  # readers see the old file or the new one, never half
        _files.write_bytes(path, text.encode("utf-8"))
    except (OSError, ValueError) as exc:
        warnings.warn(f"could not cache the measured peak in {path} ({exc})", stacklevel=3)
        return False
    return True


def _from_environment(device: torch.device) -> MachinePeak | None:
    raw = {name: os.environ.get(name, "").strip() for name in (ENV_GFLOPS, ENV_GBPS)}
    if not any(raw.values()):
        return None
    values = []
    for name, text in raw.items():
        other = ENV_GBPS if name == ENV_GFLOPS else ENV_GFLOPS
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise _checks.invalid(name, f"a positive number (set with {other})", text)
        values.append(value)
    return MachinePeak(values[0], values[1], device=str(device), origin="environment")


# ---------------------------------------------------------------- measuring


def _best_seconds(fn: Callable[[], object], device: torch.device, runs: int = 5) -> float:
    """Seconds per call of ``fn``: the best of ``runs`` timed runs after a warm-up.

    The warm-up (at least 0.2 s) lets the clock rise and the engine pick and
    prepare its kernel; each timed run repeats ``fn`` for about 20 ms, so
    timer resolution and one-off stalls do not count; the best run is the
    one least disturbed by other work on the machine.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < 0.2:
        fn()
        sync()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    repeat = max(1, round(0.02 / per_call))
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def _engines(device: torch.device) -> dict[str, tuple[Callable[[], object], int]]:
    """The candidate engines: ``name -> (call, FLOPs per call)``."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    engines: dict[str, tuple[Callable[[], object], int]] = {
        f"torch.matmul {n}x{n}": (lambda: torch.matmul(a, b, out=c), 2 * n**3)
    }
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        # oneDNN's channels-last 1x1 convolution beats the BLAS behind matmul on many CPUs
        channels, side = 512, 56
        x = torch.randn(1, channels, side, side).to(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 1, 1)
        flops = 2 * channels * channels * side * side
        engines[f"oneDNN 1x1 conv {channels}->{channels} at {side}x{side}, channels-last"] = (
            lambda: F.conv2d(x, w),
            flops,
        )
    return engines


def _measure(device: torch.device) -> MachinePeak:
    with torch.no_grad():
        rates = {
            name: flops / _best_seconds(fn, device)
            for name, (fn, flops) in _engines(device).items()
        }
        # bandwidth: copy 64 MiB into 64 MiB, beyond the last-level caches (read + write)
        src = torch.ones(16 * 2**20, device=device)
        dst = torch.zeros_like(src)
        moved = 2 * src.numel() * src.element_size()
        gbps = moved / _best_seconds(lambda: dst.copy_(src), device) / 1e9
    engine = max(rates, key=lambda k: rates[k])
    return MachinePeak(
        rates[engine] / 1e9,
        gbps,
        engine,
        str(device),
        origin="measured",
        date=datetime.date.today().isoformat(),
    )


# ---------------------------------------------------------------- the public ways in

_UNSAVED: dict[str, MachinePeak] = {}  # measured this process where the cache was not writable


def cached_peak(device: str | torch.device = "cpu") -> MachinePeak | None:
    """This machine's peak if it is set or cached; ``None`` otherwise. Never measures.

    ``ONEBYONE_PEAK_GFLOPS`` and ``ONEBYONE_PEAK_GBPS`` (both set) win; else
    the entry of ``peak_cache_path()`` for ``machine_key(device)``.

    Args:
        device: the device the peak is for (``"cpu"`` or a CUDA device).

    Example:
        >>> from onebyone.profiling import cached_peak
        >>> peak = cached_peak()  # None until machine_peak() has measured this machine
        >>> peak is None or peak.origin in ("environment", "cached")
        True
    """
    dev = _device(device)
    given = _from_environment(dev)
    if given is not None:
        return given
    key = machine_key(dev)
    entry = _read_cache(peak_cache_path()).get(key)
    if entry is not None:
        try:
            return MachinePeak.from_dict({**entry, "origin": "cached"})
        except (KeyError, TypeError, ValueError) as exc:
            warnings.warn(
                f"ignoring the unreadable entry for this machine in {peak_cache_path()} ({exc})",
                stacklevel=2,
            )
    return _UNSAVED.get(key)


def machine_peak(device: str | torch.device = "cpu", *, refresh: bool = False) -> MachinePeak:
    """This machine's fp32 GEMM GFLOP/s and memory GB/s: set, cached, or measured once.

    Returns ``cached_peak(device)`` when there is one; otherwise (or with
    ``refresh=True``, which ignores both the environment and the cache)
    measures it and writes it to ``peak_cache_path()`` with today's date.
    The compute peak is the fastest of the engines tried (``torch.matmul``
    on 1024x1024 matrices, 4096x4096 on a GPU, and on CPU oneDNN's
    channels-last 1x1 convolution, 512 -> 512 maps at 56x56, the fastest
    fp32 engine on many CPUs); bandwidth is a 64 MiB tensor copy (bytes read
    + written). Each is the best of 5 timed runs of about 20 ms after a
    warm-up of at least 0.2 s: about 1 s in all on an idle machine.

    Args:
        device: where to measure (``"cpu"`` or a CUDA device).
        refresh: measure now even when a peak is set or cached.

    Example:
        >>> import onebyone as obo
        >>> peak = obo.machine_peak()
        >>> peak.gflops > 0 and peak.gbps > 0, peak.origin in ("environment", "cached", "measured")
        (True, True)
    """
    if not isinstance(refresh, bool):
        raise _checks.invalid("refresh", "True or False", refresh, kind=TypeError)
    dev = _device(device)
    if not refresh:
        known = cached_peak(dev)
        if known is not None:
            return known
    peak = _measure(dev)
    key = machine_key(dev)
    if _write_cache(peak_cache_path(), key, peak):
        _UNSAVED.pop(key, None)
    else:
        _UNSAVED[key] = peak
    return peak


def describe_peak(peak: MachinePeak | None) -> str:
    """One line saying what a peak is and where it came from (or how to get one).

    Example:
        >>> from onebyone.profiling import MachinePeak, describe_peak
        >>> describe_peak(MachinePeak(480.0, 20.0))
        '480.0 GFLOP/s, 20.0 GB/s (ridge 24.0 FLOP/B), given'
    """
    if peak is None:
        return (
            "no peak is set or cached for this machine, so no times are predicted: pass "
            "peak='measure' (measures it once, 1-2 s, and caches it), "
            "peak=MachinePeak(gflops, gbps), or set "
            f"{ENV_GFLOPS} and {ENV_GBPS}"
        )
    head = f"{peak.gflops:.1f} GFLOP/s, {peak.gbps:.1f} GB/s (ridge {peak.ridge:.1f} FLOP/B)"
    engine = f" with {peak.engine}" if peak.engine else ""
    if peak.origin == "environment":
        return f"{head}, from {ENV_GFLOPS} and {ENV_GBPS}"
    if peak.origin == "measured":
        return f"{head}, measured now on this {peak.device}{engine}, cached in {peak_cache_path()}"
    if peak.origin == "cached":
        return (
            f"{head}, measured on {peak.date or 'an unknown date'} on this {peak.device}{engine}, "
            f"cached in {peak_cache_path()}"
        )
    return f"{head}, given"
