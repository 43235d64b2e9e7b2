"""Latency that holds on a shared machine: each model timed on its own, in long blocks.

Engines in one process disturb each other: ONNX Runtime's and OpenVINO's worker
threads (and OpenMP's) keep spinning for a while after a call and take the cores
from whatever runs next. So each model is timed alone, as OpenVINO's
``benchmark_app`` times one model at a time: untimed calls for ``WARMUP_S`` first
(the previous engine's threads settle, caches and lazily compiled kernels fill),
then calls timed one by one for ``BLOCK_S`` (at least ``MIN_RUNS``). The result is
the median with the 10th and 90th percentiles and the number of runs, and the
machine's load before timing, so that a busy machine or a wide spread is reported
rather than a speed-up that follows the load.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "BLOCK_S", "BUSY_CORES", "LOAD_WINDOW_S", "MIN_RUNS", "WARMUP_S", "Load", "Timing",
    "machine_load", "time_alone",
]  # fmt: skip

WARMUP_S = 0.3
"""Untimed calls before each model's block (measured: 0.3 s lets another engine's
threads go quiet; one discarded call left them 6-13% slow)."""
BLOCK_S = 1.0
"""How long each model's timed block runs."""
MIN_RUNS = 5
"""Timed calls at least, however slow the model."""
MAX_RUNS = 500
"""Timed calls at most."""
WIDE = 0.25
"""A spread ``(p90 - p10) / median`` above this is reported as wide."""


@dataclass(frozen=True)
class Timing:
    """Latency of one model on one input, in milliseconds.

    Attributes:
        median_ms, p10_ms, p90_ms: the median and the 10th / 90th percentiles.
        runs: how many timed calls.
        batch: the batch size of the input (for throughput).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch: int = 1

    @property
    def spread(self) -> float:
        """``(p90 - p10) / median``."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    @property
    def wide(self) -> bool:
        """Whether the spread is above ``WIDE``."""
        return self.spread > WIDE

    @property
    def throughput(self) -> float:
        """Inputs per second at the median latency (``batch / median``)."""
        return self.batch / (self.median_ms / 1e3) if self.median_ms else 0.0

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}, "
            f"{self.runs} runs)"
        )


LOAD_WINDOW_S = 0.25
"""How long ``machine_load`` watches the cores while this process waits."""
BUSY_CORES = 0.5
"""Other work using at least this many cores makes the machine busy: every engine runs
as many threads as there are cores, so half a core taken by another process already
slows the calls timed."""


@dataclass(frozen=True)
class Load:
    """What else was using the machine before timing.

    Attributes:
        average: the 1-minute load average. It counts this process too (its capture and
            conversions of the last minute), so it is context, not the verdict.
        cores: the number of cores.
        others: the cores other work used (the steal time of a virtual machine included)
            over ``LOAD_WINDOW_S`` while this process waited, from ``/proc/stat`` less
            this process's own CPU time; ``None`` where ``/proc/stat`` is missing (the
            load average decides then).
    """

    average: float
    cores: int
    others: float | None = None

    @property
    def busy(self) -> bool:
        """Whether other work was using the cores: ``others`` at least ``BUSY_CORES``, or,
        without it, a load average of at least half the cores."""
        if self.others is not None:
            return self.others >= BUSY_CORES
        return self.average >= max(1.0, 0.5 * self.cores)

    def __str__(self) -> str:
        text = f"load average {self.average:.1f} on {self.cores} cores"
        if self.others is None:
            return text
        return f"{text}, other work using {self.others:.1f} of them"


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all cores have spent on anything but idling since boot (``/proc/stat``:
    user, nice, system, irq, softirq and steal), ``None`` where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        values = [int(v) for v in fields[1:9]]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if fields[:1] != ["cpu"] or len(values) < 8:
        return None
    idle, iowait = values[3], values[4]
    return (sum(values) - idle - iowait) / ticks


def machine_load() -> Load | None:
    """The load average, the cores and the cores other work used over ``LOAD_WINDOW_S``
    (``None`` where no load average is known)."""
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    busy_before, own_before, start = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
    time.sleep(LOAD_WINDOW_S)
    busy_after, own_after, end = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
    if busy_before is None or busy_after is None or end <= start:
        return Load(average, cores)
    used = (busy_after - busy_before) - (own_after - own_before)
    return Load(average, cores, others=min(float(cores), max(0.0, used / (end - start))))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_alone(
    call: Callable[[], object],
    *,
    batch: int = 1,
    warmup_s: float | None = None,
    block_s: float | None = None,
    min_runs: int | None = None,
) -> Timing:
    """Time ``call()`` on its own: untimed calls for ``warmup_s`` (default ``WARMUP_S``),
    then a timed block of ``block_s`` (``BLOCK_S``; at least ``min_runs`` calls,
    ``MIN_RUNS``, and at most ``MAX_RUNS``)."""
    warmup_s = WARMUP_S if warmup_s is None else warmup_s
    block_s = BLOCK_S if block_s is None else block_s
    min_runs = MIN_RUNS if min_runs is None else min_runs
    with torch.inference_mode():
        start = time.perf_counter()
        call()
        while time.perf_counter() - start < warmup_s:
            call()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_runs or (
            time.perf_counter() - start < block_s and len(times) < MAX_RUNS
        ):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    ms = [t * 1e3 for t in times]
    return Timing(
        median_ms=statistics.median(ms),
        p10_ms=_percentile(ms, 0.1),
        p90_ms=_percentile(ms, 0.9),
        runs=len(ms),
        batch=batch,
    )
