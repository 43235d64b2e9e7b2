"""Shared benchmark plumbing: timing, the machine's measured peak, the layer suite, output.

Benchmarks are scripts, not tests: each compares providers side by side in one
run (ratios hold on a noisy machine; absolute times do not), reports the median
of repeated runs after warm-up, and writes JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onebyone.geometry import pointwise_output_size

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(
    fn: Callable[[], object], *, warmup: int = 2, min_runs: int = 5, budget_s: float = 0.25
) -> float:
    """Median wall time of ``fn()`` over at least ``min_runs`` runs within about ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(
    providers: dict[str, Callable[[], object]],
    *,
    warmup: int = 2,
    min_rounds: int = 7,
    budget_s: float = 0.5,
) -> dict[str, float]:
    """Median seconds per provider, timed in interleaved rounds (one call of each per round),
    so a busy moment on the machine hits every provider alike.

    The order changes every round so that each provider follows each other one
    equally often: a provider that always ran right after another would always find
    the caches as that one left them (warm with the shared inputs, or flushed by its
    temporaries). Rotating one fixed order does not do this, since rotation keeps who
    follows whom; so the rounds go through every permutation (up to four providers)
    or through seeded random shuffles.
    """
    for fn in providers.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in providers}
    items = list(providers.items())
    orders = list(itertools.permutations(items)) if len(items) <= 4 else None
    shuffler = random.Random(0)
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < 200):
        if orders is not None:
            order = list(orders[rounds % len(orders)])
        else:
            order = items[:]
            shuffler.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


@dataclass(frozen=True)
class Peak:
    """This machine's fp32 peak as measured now by several engines; ``gflops`` is the best."""

    gflops: float
    engine: str
    by_engine: dict[str, float]
    bandwidth_gbs: float


def measure_peak(size: int = 2048) -> Peak:  # size: a multiple of 32
    """fp32 GFLOP/s of the fastest engine at hand and copy bandwidth in GB/s.

    Engines: ``torch.matmul`` (MKL here), ``np.matmul`` (OpenBLAS), and oneDNN's
    1x1 convolution in channels-last on the same ``size^3`` product (the fastest
    on these machines).
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    an, bn = a.numpy(), b.numpy()
    flops = 2.0 * size**3
    # the same size^3 product as a 1x1 convolution: size pixels (32 x size/32), size channels
    x_cl = a.reshape(1, 32, size // 32, size).permute(0, 3, 1, 2)  # (1, C, H, W) channels-last
    w4 = b.reshape(size, size, 1, 1)
    engines: dict[str, Callable[[], object]] = {
        "torch.matmul": lambda: torch.matmul(a, b),
        "numpy.matmul": lambda: np.matmul(an, bn),
        "onednn conv1x1 (channels-last)": lambda: F.conv2d(x_cl, w4),
    }
    by_engine = {
        name: flops / median_seconds(fn, min_runs=5, budget_s=0.5) / 1e9
        for name, fn in engines.items()
    }
    best = max(by_engine, key=by_engine.__getitem__)
    big = torch.empty(64 * 1024 * 1024 // 4)  # 64 MiB, far beyond the caches
    dst = torch.empty_like(big)
    copy_s = median_seconds(lambda: dst.copy_(big), min_runs=5, budget_s=0.3)
    bandwidth = 2 * big.numel() * 4 / copy_s / 1e9  # read + write
    return Peak(by_engine[best], best, by_engine, bandwidth)


@dataclass(frozen=True)
class Layer:
    """One 1x1 layer of the suite (input ``(batch, c, h, w)``, ``k`` filters)."""

    c: int
    k: int
    h: int
    w: int
    stride: int = 1
    groups: int = 1
    batch: int = 1
    source: str = ""

    @property
    def out_hw(self) -> tuple[int, int]:
        return pointwise_output_size(self.h, self.stride), pointwise_output_size(
            self.w, self.stride
        )

    @property
    def macs(self) -> int:
        ho, wo = self.out_hw
        return self.batch * self.k * (self.c // self.groups) * ho * wo

    def bytes_moved(self, itemsize: int = 4, *, residual: bool = False) -> int:
        ho, wo = self.out_hw
        outputs = self.batch * self.k * ho * wo
        reads = self.batch * self.c * self.h * self.w + self.k * self.c // self.groups + self.k
        return itemsize * (reads + outputs * (2 if residual else 1))

    @property
    def name(self) -> str:
        extra = (f" s{self.stride}" if self.stride > 1 else "") + (
            f" g{self.groups}" if self.groups > 1 else ""
        )
        return f"{self.c}->{self.k} @{self.h}x{self.w}{extra} n{self.batch}"


ODD_LAYERS = [Layer(72, 80, 56, 56, stride=2, groups=2, source="odd")]


def layer_suite(
    batches: Iterable[int] = (1, 8), *, models: Iterable[str] | None = None
) -> list[Layer]:
    """Every distinct 1x1 layer shape of the built-in ResNet-50, MobileNetV2 and GoogLeNet
    at 224x224, at each batch size, plus the odd shapes."""
    from onebyone import create_model
    from onebyone.nn import Conv1x1

    names = list(models or ("resnet50", "mobilenet_v2", "googlenet"))
    shapes: dict[tuple[int, int, int, int, int, int], str] = {}
    for name in names:
        model = create_model(name).eval()

        def hook(
            module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any, src: str = name
        ) -> None:
            _, c, h, w = inputs[0].shape
            key = (c, module.out_channels, h, w, module.stride[0], module.groups)
            shapes.setdefault(key, src)

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Conv1x1)]
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        for h in handles:
            h.remove()
    base = [Layer(c, k, h, w, s, g, source=src) for (c, k, h, w, s, g), src in shapes.items()]
    base += ODD_LAYERS
    return [Layer(**{**asdict(layer), "batch": b}) for b in batches for layer in base]


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu": _cpu(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def _cpu() -> dict[str, Any]:
    """The CPU's model name and the vector extensions that decide the kernels (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in text.splitlines()) if v
    )
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
    return {"model": fields.get("model name", ""), "extensions": [f for f in wanted if f in flags]}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def photo_crops(count: int, seed: int = 0, side: int = 224) -> torch.Tensor:
    """``count`` random ``side`` x ``side`` crops of scikit-learn's two sample photographs,
    normalised with ImageNet's mean and spread: ``(count, 3, side, side)``."""
    from sklearn.datasets import load_sample_images

    images = [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in
              load_sample_images().images]  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        top = int(torch.randint(0, image.shape[1] - side + 1, (1,), generator=g))
        left = int(torch.randint(0, image.shape[2] - side + 1, (1,), generator=g))
        crops.append(image[:, top : top + side, left : left + side])
    return (torch.stack(crops) - IMAGENET_MEAN) / IMAGENET_STD


def calibrate_norms(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """Random affine terms, then every batch norm's statistics measured on ``x``; returns
    ``model.eval()``.

    A random-weight model whose statistics are drawn independently of its activations
    lets them grow layer after layer (RegNetY-016's outputs reach 1e5, and two float32
    engines then differ by 1e-4 of the output's scale): no fair ground for engines or
    for int8. Measured on real images, every norm sees activations of order one, as in
    a trained model. A norm initialised with zero scale (the last of a residual branch)
    gets a small one, never zero.
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None]  # fmt: skip
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            if m.weight is not None and m.bias is not None:
                k = m.num_features
                small = 0.1 if bool((m.weight == 0).all()) else 1.0
                m.weight.copy_((torch.rand(k, generator=g) * 0.6 + 0.7) * small)
                m.bias.copy_(torch.randn(k, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of x itself
        model.train()
        model(x)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return model.eval()
