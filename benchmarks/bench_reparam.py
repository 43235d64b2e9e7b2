"""Re-parameterisable models: ``optimize`` (which sums parallel branches into one
convolution on the ATen graph) against timm's own per-block re-parameterisation followed
by the fastest engine used plainly, and against the engines on the model as built.

Models: timm architectures with multi-branch training-time blocks (``pretrained=False``,
norm statistics measured on a random batch then perturbed, eval mode), 224x224, batch 1
and 8, ``torch.set_num_threads(2)``.

Providers, each prepared the way its users prepare it:

- ``onebyone``: ``onebyone.optimize(model, x)`` (every engine, verified, the fastest);
- ``timm+onnxruntime`` / ``timm+openvino f32``: ``timm.utils.reparameterize_model(model)``,
  then ``torch.onnx.export(..., dynamo=True)`` and an ``InferenceSession`` (every graph
  optimisation, two threads) / ``openvino.convert_model`` compiled with
  ``INFERENCE_PRECISION_HINT=f32``;
- ``onnxruntime`` / ``openvino f32``: the same engines on the model as built (branches
  apart).

Eager PyTorch is the reference for the errors, not timed (the engines are what users
deploy; here it is also an order of magnitude slower than any of them).

Timing: ``--repeat`` measurement runs; in each, every provider in a shuffled order runs
a warm-up of at least ``--warmup-s`` seconds (not timed: it also absorbs the threads the
previous engine leaves spinning), then a block of calls for about ``--block-s`` seconds,
each call timed. Per run and provider: median, p10 and p90 of the block. The ratios
that count are those within one run (the machine is shared); the load average is
recorded before and after each case.

Run: ``nice -n 5 python benchmarks/bench_reparam.py`` (``--quick``: one model, batch 1,
one short run). Results: ``benchmarks/results/reparam.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
from common import environment, write_json
from onebyone.models.external import import_timm

MODELS = ("repvgg_a0", "mobileone_s0", "repvit_m0_9", "fastvit_t8", "repghostnet_050")
THREADS = 2
PEERS_REPARAM = ("timm+onnxruntime", "timm+openvino f32")
PEERS_PLAIN = ("onnxruntime", "openvino f32")


def calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm statistics of a random batch, perturbed: every norm does something."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.6 + 0.7)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        model.train()
        model(torch.randn(4, 3, 224, 224, generator=g))
        for m in norms:
            k = m.num_features
            m.running_mean.add_(torch.randn(k, generator=g) * 0.05)
            m.running_var.mul_(torch.rand(k, generator=g) * 0.4 + 0.8)
    return model.eval()


@dataclass
class Provider:
    name: str
    run: Callable[[], Any]
    prepare_s: float
    note: str = ""
    runs: list[list[float]] = field(default_factory=list)


def onnxruntime_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    import onnxruntime as rt

    onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS
    session = rt.InferenceSession(
        onnx_program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)[0]


def openvino_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": THREADS}
    compiled = ov.Core().compile_model(ov.convert_model(model, example_input=x), "CPU", config)
    array = x.numpy()
    return lambda: compiled(array)[0]  # the compiled model's call: OpenVINO's plain use


def prepared(name: str, build: Callable[[], tuple[Callable[[], Any], str]]) -> Provider | str:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            run, note = build()
    except Exception as exc:  # a provider that cannot take this model is reported, not fatal
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    return Provider(name, run, time.perf_counter() - start, note)


def providers_for(model: nn.Module, x: torch.Tensor) -> tuple[list[Provider], dict, dict]:
    timm = import_timm()
    failed: dict[str, str] = {}
    info: dict[str, Any] = {}

    def ours() -> tuple[Callable[[], Any], str]:
        fast, report = obo.optimize(model, x, measure=False)
        info["report"] = report
        return (lambda: fast(x)), f"{report.engine}/{report.precision}"

    def reparam(runner: Callable[[nn.Module, torch.Tensor], Callable[[], Any]]) -> Callable:
        def build() -> tuple[Callable[[], Any], str]:
            merged = timm.utils.reparameterize_model(copy.deepcopy(model))
            return runner(merged, x), ""

        return build

    steps: list[tuple[str, Callable[[], tuple[Callable[[], Any], str]]]] = [
        ("onebyone", ours),
        ("timm+onnxruntime", reparam(onnxruntime_runner)),
        ("timm+openvino f32", reparam(openvino_runner)),
        ("onnxruntime", lambda: (onnxruntime_runner(model, x), "")),
        ("openvino f32", lambda: (openvino_runner(model, x), "")),
    ]
    built = []
    for label, build in steps:
        result = prepared(label, build)
        if isinstance(result, str):
            failed[label] = result
        else:
            built.append(result)
    return built, failed, info


def measure(providers: list[Provider], warmup_s: float, block_s: float, seed: int) -> None:
    """One measurement run: each provider (shuffled order) warms up, then one timed block."""
    order = list(providers)
    random.Random(seed).shuffle(order)
    with torch.inference_mode():
        for p in order:
            start = time.perf_counter()
            while time.perf_counter() - start < warmup_s:
                p.run()
            times: list[float] = []
            start = time.perf_counter()
            while time.perf_counter() - start < block_s or len(times) < 5:
                t = time.perf_counter()
                p.run()
                times.append(time.perf_counter() - t)
            p.runs.append(times)


def output(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, np.ndarray) and hasattr(value, "data"):  # an OpenVINO tensor
        value = value.data
    return torch.from_numpy(np.array(value))


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"median_ms": statistics.median(times) * 1e3, "p10_ms": quantile(0.1),
            "p90_ms": quantile(0.9), "calls": len(times)}  # fmt: skip


def run_case(name: str, batch: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    timm = import_timm()
    torch.manual_seed(0)
    model = calibrated(timm.create_model(name, pretrained=False))
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    load_before = os.getloadavg()
    console.print(f"[bold]{name}[/], batch {batch}: preparing (load {load_before[0]:.1f})")
    providers, failed, info = providers_for(model, x)
    with torch.inference_mode():
        reference = model(x)
        errors = {
            p.name: float((output(p.run()).reshape(reference.shape) - reference).abs().max()
                          / reference.abs().max())
            for p in providers
        }  # fmt: skip
    for run in range(args.repeat):
        console.print(f"  measurement run {run + 1}/{args.repeat}")
        measure(providers, args.warmup_s, args.block_s, seed=run)
    rows = []
    for p in providers:
        rows.append({
            "provider": p.name,
            "runs": [summary(ts) for ts in p.runs],
            "prepare_s": p.prepare_s,
            "max_rel_error": errors[p.name],
            "note": p.note,
        })  # fmt: skip
    by = {r["provider"]: r for r in rows}
    result: dict[str, Any] = {
        "model": name, "batch": batch, "rows": rows, "failed": failed,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }  # fmt: skip
    if "onebyone" in by:
        ours = [r["median_ms"] for r in by["onebyone"]["runs"]]
        for key, peers in (("vs_timm_reparam", PEERS_REPARAM), ("vs_plain_engine", PEERS_PLAIN)):
            present = [n for n in peers if n in by]
            if not present:
                continue
            per_run = [
                min(by[n]["runs"][i]["median_ms"] for n in present) / ours[i]
                for i in range(len(ours))
            ]
            fastest = [
                min(present, key=lambda n, i=i: by[n]["runs"][i]["median_ms"])
                for i in range(len(ours))
            ]
            result[key] = {"per_run": per_run, "median": statistics.median(per_run),
                           "fastest_peer_per_run": fastest}  # fmt: skip
    report = info.get("report")
    if report is not None:
        result["onebyone_report"] = {
            "engine": report.engine,
            "passes": report.pass_counts(),
            "candidates": {c.name: c.latency_ms for c in report.candidates},
            "prepare_s": report.prepare_s,
        }
    return result


def table(cases: list[dict[str, Any]]) -> Table:
    names = ["onnxruntime", "openvino f32", "timm+onnxruntime", "timm+openvino f32",
             "onebyone"]  # fmt: skip
    t = Table(title="median ms per run (median of runs); ratios per run")
    t.add_column("model")
    t.add_column("batch", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("vs timm reparam", justify="right")
    t.add_column("vs plain engine", justify="right")
    for case in cases:
        by = {r["provider"]: r for r in case["rows"]}
        cells = []
        for n in names:
            if n not in by:
                cells.append("-")
                continue
            cells.append(f"{statistics.median(r['median_ms'] for r in by[n]['runs']):.2f}")
        ratios = [
            " ".join(f"{v:.2f}" for v in case[k]["per_run"]) if k in case else "-"
            for k in ("vs_timm_reparam", "vs_plain_engine")
        ]
        t.add_row(case["model"], str(case["batch"]), *cells, *ratios)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=0.3)
    parser.add_argument("--block-s", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="reparam")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.repeat, args.block_s = args.models[:1], [1], 1, 0.3
    torch.set_num_threads(THREADS)
    console = Console()
    cases: list[dict[str, Any]] = []
    for m in args.models:
        for b in args.batches:
            cases.append(run_case(m, b, args, console))
            payload = {"environment": environment(), "settings": vars(args), "cases": cases}
            path = write_json(args.output, payload)  # after each case: a partial run counts
    console.print(table(cases))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
