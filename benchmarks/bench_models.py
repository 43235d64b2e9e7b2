"""Whole models on the CPU: ``onebyone.optimize`` against the compilers, side by side.

For ResNet-50, MobileNetV2 and GoogLeNet at batch 1 and 8 (224x224, float32),
every provider runs the same model on the same input, interleaved call by
call so that the ratios hold on a shared machine:

- ``eager``: the model as built (NCHW);
- ``eager channels-last``: weights and input converted to channels-last;
- ``optimize_for_inference``: ``torch.jit.optimize_for_inference(torch.jit.trace(...))``;
- ``compile+freezing``: ``torch.compile`` with ``torch._inductor.config.freezing = True``;
- ``onnxruntime``: ``torch.onnx.export`` then ONNX Runtime (CPU EP, all graph optimisations);
- ``onebyone.optimize``: fold -> merge -> fuse -> layout, verified, engine chosen by measurement;
- ``onebyone torch engine``: the same with ``engine="torch"`` (onebyone's fused oneDNN
  graph, no ONNX Runtime), for reference; the targets concern ``onebyone.optimize``.

Reported per provider: median latency, images/s, GFLOP/s (MACs from
``onebyone.profile``), the fraction of the machine's peak measured in the same
run, the preparation time (trace / compile / export / optimize) and the largest
error against eager (relative to the output's scale). Batch norms get random
statistics so folding them is never the identity. The built-in models' ``Conv1x1``
layers are converted to ``nn.Conv2d`` first (``plain_pytorch``), so every
provider, ``onebyone.optimize`` included, starts from the model a torchvision
user has.

Run: ``python benchmarks/bench_models.py`` (``--quick``: ResNet-50 and MobileNetV2
at batch 1, fewer rounds, compile included; ``--no-compile`` to leave it out).
"""

from __future__ import annotations

import argparse
import copy
import io
import random
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
from common import RESULTS, environment, write_json
from onebyone.nn import Conv1x1
from onebyone.transforms import to_onnx
from onebyone.transforms.fold import fold_owned
from onebyone.transforms.merge import merge_owned
from onebyone.transforms.verify import compare

MODELS = ("resnet50", "mobilenet_v2", "googlenet")
TARGETS = {  # onebyone.optimize must be at least this much faster than each peer
    "eager": 1.5,
    "optimize_for_inference": 1.2,
    "compile+freezing": 1.0,
    "onnxruntime": 1.0,
}


def random_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
                k = m.num_features
                m.running_mean.copy_(torch.randn(k, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(k, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(k, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(k, generator=g) * 0.1)
    return model.eval()


def plain_pytorch(model: nn.Module) -> nn.Module:
    """The same model built from PyTorch's own layers: every ``Conv1x1`` becomes the
    equivalent ``nn.Conv2d(kernel_size=1)`` (weights copied), as a torchvision model is.
    Every provider, ``onebyone.optimize`` included, starts from this model."""
    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        if isinstance(module, Conv1x1):
            parent, _, child = name.rpartition(".")
            setattr(result.get_submodule(parent) if parent else result, child, module.to_conv2d())
    return result.eval()


def peak_gflops() -> tuple[float, str]:
    """The best fp32 GFLOP/s of oneDNN's channels-last 1x1 convolution (2048 -> 2048 maps at
    32x32, a 2048 x 2048 x 1024 product) and ``torch.matmul`` (2048^3), best of 5 runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2048, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(2048, 2048, 1, 1, generator=g)
    a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    engines = {
        "oneDNN 1x1 conv (channels-last)": (lambda: F.conv2d(x, w), 2 * 2048 * 2048 * 1024),
        "torch.matmul": (lambda: a @ b, 2 * 2048**3),
    }
    best: dict[str, float] = {}
    with torch.inference_mode():
        for name, (fn, flops) in engines.items():
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = flops / min(times) / 1e9
    engine = max(best, key=best.__getitem__)
    return best[engine], engine


class Provider:
    """A way to run the model: ``run(x)`` plus how long it took to prepare."""

    def __init__(self, name: str, run: Callable[[], Any], prepare_s: float, note: str = "") -> None:
        self.name, self.run, self.prepare_s, self.note = name, run, prepare_s, note


def build_providers(
    model: nn.Module, x: torch.Tensor, *, with_compile: bool
) -> tuple[list[Provider], dict[str, Any]]:
    providers = [Provider("eager", lambda: model(x), 0.0)]
    extra: dict[str, Any] = {}

    t = time.perf_counter()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    providers.append(
        Provider("eager channels-last", lambda: model_cl(x_cl), time.perf_counter() - t)
    )

    t = time.perf_counter()
    with torch.no_grad():
        scripted = torch.jit.optimize_for_inference(torch.jit.trace(model, x))
    providers.append(
        Provider("optimize_for_inference", lambda: scripted(x), time.perf_counter() - t)
    )

    if with_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(model)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(x)  # the compile happens here
        providers.append(Provider("compile+freezing", lambda: compiled(x), time.perf_counter() - t))

    import onnxruntime as ort

    t = time.perf_counter()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x_np = x.numpy()
    providers.append(
        Provider(
            "onnxruntime",
            lambda: torch.from_numpy(session.run(None, {name: x_np})[0]),
            time.perf_counter() - t,
        )
    )

    t = time.perf_counter()
    own, _ = obo.optimize(model, x, engine="torch", measure=False)
    providers.append(
        Provider("onebyone torch engine", lambda: own(x), time.perf_counter() - t, note="torch")
    )

    t = time.perf_counter()
    fast, report = obo.optimize(model, x, measure=False)
    prep = time.perf_counter() - t
    providers.append(Provider("onebyone.optimize", lambda: fast(x), prep, note=report.engine))
    extra["onebyone_report"] = {
        "engine": report.engine,
        "engine_ms": report.engine_ms,
        "passes": report.pass_counts(),
        "layers_before": str(report.layers_before),
        "layers_after": str(report.layers_after),
        "max_rel_error": report.max_rel_error,
        "notes": report.notes,
    }
    return providers, extra


def measure(
    providers: list[Provider], rounds: int, warmup: int, gap_s: float
) -> dict[str, list[float]]:
    """Interleaved timing: each round calls every provider once, in a shuffled order.

    A pause of ``gap_s`` before each call lets the previous provider's worker
    threads (ONNX Runtime's and OpenMP's spin-wait after a run) go idle, so no
    provider is timed while another one's threads still hold the cores; the
    order changes every round so that no provider always follows the same one.
    """
    times: dict[str, list[float]] = {p.name: [] for p in providers}
    order = list(providers)
    rng = random.Random(0)
    with torch.inference_mode():
        for p in providers:
            for _ in range(warmup):
                p.run()
        for _ in range(rounds):
            rng.shuffle(order)
            for p in order:
                time.sleep(gap_s)
                t = time.perf_counter()
                p.run()
                times[p.name].append(time.perf_counter() - t)
    return times


def run_case(
    name: str,
    batch: int,
    *,
    rounds: int,
    warmup: int,
    gap_s: float,
    with_compile: bool,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = plain_pytorch(random_norms(obo.create_model(name)))
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    macs = obo.profile(model, x).total.macs
    providers, extra = build_providers(model, x, with_compile=with_compile)
    with torch.inference_mode():
        reference = model(x)
        errors = {p.name: compare(reference, p.run(), rtol=0, atol=0).max_rel for p in providers}
    times = measure(providers, rounds, warmup, gap_s)
    rows = []
    for p in providers:
        median = statistics.median(times[p.name])
        gflops = 2 * macs / median / 1e9
        rows.append(
            {
                "provider": p.name,
                "median_ms": median * 1e3,
                "images_per_s": batch / median,
                "gflops": gflops,
                "prepare_s": p.prepare_s,
                "max_rel_error": errors[p.name],
                "note": p.note,
            }
        )
    ours = next(r for r in rows if r["provider"] == "onebyone.optimize")
    ratios = {
        r["provider"]: r["median_ms"] / ours["median_ms"]
        for r in rows
        if r["provider"] != "onebyone.optimize"
    }
    return {
        "model": name,
        "batch": batch,
        "macs": macs,
        "rows": rows,
        "speedup_vs": ratios,
        **extra,
    }


def layer_breakdown(
    model: nn.Module, x: torch.Tensor, peak: float, runs: int = 10
) -> list[dict[str, Any]]:
    """Where the time goes: ONNX Runtime's kernel time per node of the graph onebyone gives it,
    summed by layer category, against each category's roofline time (``onebyone.profile``
    with this run's peak and the measured memory bandwidth). Nodes are named after their
    layers by ``to_onnx``, so a fused node counts for the convolution it started from."""
    import json

    import onnxruntime as ort

    folded, _ = fold_owned(model, x, owned=False)
    merged, _ = merge_owned(folded, True, owned=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(RESULTS / "ort_profile")
    proto = to_onnx(merged, x)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    # ONNX Runtime names a fused node after the last node it absorbed (conv -> add -> relu is
    # named after the relu): follow each epilogue node back to the convolution it extends
    origin: dict[str, str] = {}
    produced = {out: i for i, node in enumerate(proto.graph.node) for out in node.output}
    for node in proto.graph.node:
        layer = node.name.split("__")[0]
        sources = [origin[i] for i in node.input if i in origin]
        if (
            node.op_type in ("Relu", "Clip", "Add", "Sigmoid", "Mul", "LeakyRelu", "HardSwish")
            and sources
        ):
            latest = max((i for i in node.input if i in origin), key=produced.__getitem__)
            layer = origin[latest]
        if node.op_type == "Conv" or layer != node.name.split("__")[0]:
            origin[node.name] = layer
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3 + runs):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    events = json.loads(trace_path.read_text())
    trace_path.unlink()
    kernel: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    node_ms = {name: sorted(v)[len(v) // 2] for name, v in kernel.items()}  # median per node
    gbps = obo.machine_peak().gbps
    prof = obo.profile(model, x, peak=obo.MachinePeak(gflops=peak, gbps=gbps))
    category = {layer.name: layer.category for layer in prof.layers}
    rows: dict[str, dict[str, Any]] = {}
    for layer in prof.layers:
        row = rows.setdefault(
            layer.category,
            {
                "category": layer.category,
                "layers": 0,
                "gflop": 0.0,
                "roofline_ms": 0.0,
                "measured_ms": 0.0,
            },
        )
        row["layers"] += 1
        row["gflop"] += layer.cost.flops / 1e9
        row["roofline_ms"] += layer.time_s * 1e3
    other = {
        "category": "not a model layer (layout reorders)",
        "layers": 0,
        "gflop": 0.0,
        "roofline_ms": 0.0,
        "measured_ms": 0.0,
    }
    for name, ms in node_ms.items():
        base = re.match(r"^(.*?__\d+)", name)
        key = base.group(1) if base else name
        layer = origin.get(key, key.split("__")[0])
        target = rows.get(category.get(layer, ""), other)
        target["measured_ms"] += ms
    out = [*rows.values(), other]
    for row in out:
        row["roofline_fraction"] = (
            row["roofline_ms"] / row["measured_ms"] if row["measured_ms"] else None
        )
    return out


def print_breakdown(console: Console, name: str, batch: int, rows: list[dict[str, Any]]) -> None:
    table = Table(
        title=f"{name} batch {batch}: ONNX Runtime kernel time by layer category",
        title_justify="left",
    )
    for column in (
        "category",
        "layers",
        "GFLOP",
        "roofline ms",
        "measured ms",
        "roofline / measured",
    ):
        table.add_column(column, justify="left" if column == "category" else "right")
    for r in rows:
        fraction = r["roofline_fraction"]
        table.add_row(
            r["category"],
            str(r["layers"]),
            f"{r['gflop']:.3f}",
            f"{r['roofline_ms']:.2f}",
            f"{r['measured_ms']:.2f}",
            "-" if fraction is None else f"{100 * fraction:.0f}%",
        )
    console.print(table)


def print_case(console: Console, case: dict[str, Any]) -> None:
    table = Table(
        title=f"{case['model']} batch {case['batch']} ({case['macs'] / 1e9:.3f} GMAC)",
        title_justify="left",
    )
    for column in (
        "provider",
        "median ms",
        "images/s",
        "GFLOP/s",
        "% peak",
        "prep s",
        "max rel err",
        "onebyone speed-up",
    ):
        table.add_column(column, justify="left" if column == "provider" else "right")
    for r in case["rows"]:
        ratio = case["speedup_vs"].get(r["provider"])
        label = r["provider"] + (f" ({r['note']})" if r["note"] else "")
        table.add_row(
            label,
            f"{r['median_ms']:.2f}",
            f"{r['images_per_s']:.1f}",
            f"{r['gflops']:.0f}",
            f"{100 * r['peak_fraction']:.0f}%",
            f"{r['prepare_s']:.2f}",
            f"{r['max_rel_error']:.1e}",
            "" if ratio is None else f"{ratio:.2f}x",
        )
    console.print(table)


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (case, peer) target with the measured ratio and whether it holds."""
    out = []
    for case in cases:
        ours = next(r for r in case["rows"] if r["provider"] == "onebyone.optimize")
        for peer, target in TARGETS.items():
            ratio = case["speedup_vs"].get(peer)
            if ratio is None:
                continue
            out.append(
                {
                    "model": case["model"],
                    "batch": case["batch"],
                    "peer": peer,
                    "target": target,
                    "ratio": ratio,
                    "met": ratio >= target,
                }
            )
        out.append(
            {
                "model": case["model"],
                "batch": case["batch"],
                "peer": "prepare (s)",
                "target": 2.0,
                "ratio": ours["prepare_s"],
                "met": ours["prepare_s"] < 2.0,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet50 and mobilenet_v2 at batch 1")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="also show where ONNX Runtime's time goes, by layer category",
    )
    parser.add_argument(
        "--gap-ms", type=float, default=20.0, help="pause before each timed call (default 20 ms)"
    )
    args = parser.parse_args(argv)
    models = ["resnet50", "mobilenet_v2"] if args.quick else args.models.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batch.split(",")]
    rounds = args.rounds or (8 if args.quick else 20)
    console = Console(width=132)
    torch.set_grad_enabled(False)
    start_peak, engine = peak_gflops()
    console.print(
        f"{torch.get_num_threads()} threads; {rounds} interleaved rounds per case; "
        f"MACs from onebyone.profile"
    )
    cases = []
    for name in models:
        for batch in batches:
            console.print(f"running {name} batch {batch} ...")
            case = run_case(
                name,
                batch,
                rounds=rounds,
                warmup=3,
                gap_s=args.gap_ms / 1e3,
                with_compile=not args.no_compile,
            )
            cases.append(case)
    end_peak, end_engine = peak_gflops()
    peak = max(start_peak, end_peak)  # the machine's peak: the better of two measurements
    engine = engine if start_peak >= end_peak else end_engine
    console.print(
        f"peak {peak:.0f} GFLOP/s ({engine}; measured {start_peak:.0f} before the cases and "
        f"{end_peak:.0f} after)"
    )
    for case in cases:
        for row in case["rows"]:
            row["peak_fraction"] = row["gflops"] / peak
        print_case(console, case)
        if args.layers:
            model = plain_pytorch(random_norms(obo.create_model(case["model"])))
            x = torch.randn(case["batch"], 3, 224, 224)
            case["layers"] = layer_breakdown(model, x, peak)
            print_breakdown(console, case["model"], case["batch"], case["layers"])
    checks = targets(cases)
    table = Table(title="targets: onebyone.optimize speed-up over each peer", title_justify="left")
    for column in ("model", "batch", "peer", "target", "measured", "met"):
        table.add_column(column, justify="left" if column in ("model", "peer") else "right")
    for c in checks:
        unit = " s" if c["peer"] == "prepare (s)" else "x"
        bound = "<" if c["peer"] == "prepare (s)" else ">="
        table.add_row(
            c["model"],
            str(c["batch"]),
            c["peer"],
            f"{bound} {c['target']}{unit}",
            f"{c['ratio']:.2f}{unit}",
            "yes" if c["met"] else "NO",
        )
    console.print(table)
    payload = {
        "environment": environment(),
        "peak": {"gflops": peak, "engine": engine, "before": start_peak, "after": end_peak},
        "rounds": rounds,
        "gap_ms": args.gap_ms,
        "quick": args.quick,
        "cases": cases,
        "targets": checks,
        "all_targets_met": all(c["met"] for c in checks),
        "onnxruntime": __import__("onnxruntime").__version__,
        "numpy": np.__version__,
    }
    path = write_json("models_quick" if args.quick else "models", payload)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
