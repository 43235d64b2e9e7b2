"""Whole models on the CPU: ``onebyone.optimize`` against the engines users pick, side by side.

Models: the built-in ResNet-50, MobileNetV2 and GoogLeNet (their ``Conv1x1`` layers
turned into ``nn.Conv2d``, so every provider starts from the model a torchvision
user has) and timm architectures (``pretrained=False``), all with norm statistics
measured on photo crops (``common.calibrate_norms``), in eval mode, at 224x224,
batch 1 and 8, ``torch.set_num_threads(2)``; the input ``x`` is other photo crops
(``example``).

Providers, each prepared the way its users prepare it and timed on its own in a
long block (``--block-s`` seconds after ``--warmup-s`` of untimed calls, a shuffled
order each run; no other engine's threads are spinning while one is timed):

- ``eager``: the model as built;
- ``onnxruntime``: ``torch.onnx.export(model, (x,), dynamo=True)`` and an
  ``InferenceSession`` with every graph optimisation, ``intra_op_num_threads=2``;
- ``openvino f32``: ``openvino.convert_model(model, example_input=x)``, compiled for
  the CPU with ``INFERENCE_PRECISION_HINT=f32``;
- ``openvino default``: the same compiled with OpenVINO's defaults (bfloat16 on CPUs
  with native bfloat16; the precision it chose is reported);
- ``compile+freezing``: ``torch.compile`` with ``torch._inductor.config.freezing``
  (``--compile``: slow to prepare, so on a subset);
- ``onebyone float32``: ``onebyone.optimize(model, x)`` (every engine, verified, the
  fastest);
- ``onebyone bfloat16``: ``onebyone.optimize(model, x, precision="bfloat16",
  tolerance=BF16_TOLERANCE)``, where
  this CPU has native bfloat16.

Reported per provider: median latency over ``--repeat`` measurement runs, each
run's median, p10, p90 and number of calls, preparation time, the largest error
against eager (relative to the output's scale), top-1 agreement with eager, and the
growth of the process's resident memory while preparing. Per case also: each
candidate's latency and spread as ``optimize``'s report gives them; the kept module
re-timed in a fresh process (``optimize`` run there, its returned module timed
plainly in a long block, ``ratio`` = plain / reported); and ``optimize`` again with
every core kept busy by ``os.cpu_count()`` busy-loop processes, whose speed-up must
stay within 25% of the quiet one or come with the busy-machine / wide-spread
warning (``outcome`` records which). A separate section measures ``optimize``'s
preparation time with one explicit engine and its peak memory on ResNet-50, each
in a fresh process. The load average before and after is stored.

Run: ``python benchmarks/bench_models.py --full`` (the three built-in and six timm
models, batch 1 and 8, three runs; results in ``benchmarks/results/models.json``)
or ``--quick`` (MobileNetV2 and timm's MobileNetV3, batch 1, one run:
``benchmarks/results/models_quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
from common import calibrate_norms, environment, photo_crops, write_json
from onebyone.deploy.engines import openvino as ov_engine
from onebyone.deploy.engines import torch as torch_engine
from onebyone.deploy.timing import Timing, machine_load, time_alone
from onebyone.models.external import load_external
from onebyone.nn import Conv1x1
from onebyone.transforms.verify import compare

BUILT_IN = ("resnet50", "mobilenet_v2", "googlenet")
TIMM = (
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "regnety_016",
    "convnext_tiny",
    "densenet121",
    "ghostnet_100",
)
COMPILE_SUBSET = ("resnet50", "mobilenet_v2", "efficientnet_b0")
FLOAT32_PEERS = ("onnxruntime", "openvino f32", "compile+freezing")
THREADS = 2
BLOCK_S = 3.0
"""Seconds of each provider's timed block (after ``--warmup-s`` of untimed calls)."""
BF16_TOLERANCE = 0.25
"""The relative error ``onebyone bfloat16`` is held to here. With random weights a
model's logits are small beside its activations, and bfloat16's rounding is 9% of
the output scale on ResNet-50 (OpenVINO's own default as much), beyond ``optimize``'s
default of 6%, which would refuse every bfloat16 candidate and time float32 instead;
the speed comparison with OpenVINO's default needs the same precision on both sides."""


def plain_pytorch(model: nn.Module) -> nn.Module:
    """Every ``Conv1x1`` becomes the equivalent ``nn.Conv2d(kernel_size=1)``."""
    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        if isinstance(module, Conv1x1):
            parent, _, child = name.rpartition(".")
            setattr(result.get_submodule(parent) if parent else result, child, module.to_conv2d())
    return result.eval()


def example(batch: int) -> torch.Tensor:
    """The input every provider runs: ``batch`` photo crops, none of those the norms
    were measured on."""
    return photo_crops(batch, seed=1)


def build_model(name: str) -> nn.Module:
    """The model with random weights and norm statistics measured on 16 photo crops
    (``common.calibrate_norms``)."""
    crops = photo_crops(16, seed=100)
    if name in BUILT_IN:
        return plain_pytorch(calibrate_norms(obo.create_model(name), crops))
    return calibrate_norms(load_external(f"timm:{name}"), crops)


@dataclass
class Provider:
    """A way to run the model: ``run()`` plus what preparing it cost."""

    name: str
    run: Callable[[], Any]
    prepare_s: float
    memory_mb: float
    note: str = ""
    times: list[Timing] = field(default_factory=list)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _prepared(name: str, build: Callable[[], tuple[Callable[[], Any], str]]) -> Provider | str:
    """Build one provider, timing it; a failure becomes its reason."""
    rss = _rss_mb()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            run, note = build()
    except Exception as exc:  # a peer that cannot take this model is reported, not fatal
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    return Provider(name, run, time.perf_counter() - start, _rss_mb() - rss, note)


def providers_for(
    name: str, model: nn.Module, x: torch.Tensor, *, with_compile: bool
) -> tuple[list[Provider], dict[str, str], dict[str, Any]]:
    built: list[Provider] = [Provider("eager", lambda: model(x), 0.0, 0.0)]
    failed: dict[str, str] = {}
    reports: dict[str, Any] = {}

    def ort() -> tuple[Callable[[], Any], str]:
        import onnxruntime as rt

        onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        options = rt.SessionOptions()
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = THREADS
        session = rt.InferenceSession(
            onnx_program.model_proto.SerializeToString(), options,
            providers=["CPUExecutionProvider"],
        )  # fmt: skip
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)[0], ""

    def openvino(config: dict[str, Any]) -> Callable[[], tuple[Callable[[], Any], str]]:
        def build() -> tuple[Callable[[], Any], str]:
            import openvino as ov

            compiled = ov.Core().compile_model(
                ov.convert_model(model, example_input=x), "CPU", config
            )
            precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
            array = x.numpy()  # the compiled model's call: OpenVINO's plain use
            return lambda: compiled(array)[0], f"precision {precision}"

        return build

    def compiled() -> tuple[Callable[[], Any], str]:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fn = torch.compile(model)
        with torch.inference_mode():
            fn(x)  # the compilation happens here
        return lambda: fn(x), ""

    def onebyone(precision: str) -> Callable[[], tuple[Callable[[], Any], str]]:
        def build() -> tuple[Callable[[], Any], str]:
            tolerance = BF16_TOLERANCE if precision == "bfloat16" else None
            fast, report = obo.optimize(model, x, precision=precision, tolerance=tolerance)
            reports[precision] = report
            return lambda: fast(x), f"{report.engine}/{report.precision}"

        return build

    steps: list[tuple[str, Callable[[], tuple[Callable[[], Any], str]]]] = [
        ("onnxruntime", ort),
        ("openvino f32", openvino({"INFERENCE_PRECISION_HINT": "f32"})),
        ("openvino default", openvino({})),
    ]
    if with_compile and name in COMPILE_SUBSET:
        steps.append(("compile+freezing", compiled))
    steps.append(("onebyone float32", onebyone("float32")))
    native_bf16 = "bfloat16" in torch_engine.precisions() or "bfloat16" in ov_engine.precisions()
    if native_bf16:
        steps.append(("onebyone bfloat16", onebyone("bfloat16")))
    else:
        failed["onebyone bfloat16"] = "this CPU has no native bfloat16 (optimize refuses it)"
    for label, build in steps:
        result = _prepared(label, build)
        if isinstance(result, str):
            failed[label] = result
        else:
            built.append(result)
    return built, failed, reports


def measure(providers: list[Provider], block_s: float, warmup_s: float) -> None:
    """One measurement run, appended to each provider's ``times``.

    Each provider is timed on its own, in a shuffled order, as ``benchmark_app`` runs
    one model at a time: untimed calls for ``warmup_s`` (the previous engine's
    spinning threads settle, this one's caches warm), then a timed block of
    ``block_s`` (``onebyone.deploy.timing.time_alone``: median, p10, p90, runs).
    """
    order = list(providers)
    random.Random(len(providers[0].times)).shuffle(order)
    for p in order:
        p.times.append(time_alone(p.run, warmup_s=warmup_s, block_s=block_s))


def _output(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "to_tuple"):  # an OpenVINO result
        value = value.to_tuple()[0]
    if isinstance(value, (list, tuple)):
        value = value[0]
    if not isinstance(value, np.ndarray) and hasattr(value, "data"):  # an OpenVINO tensor
        value = value.data
    return torch.from_numpy(np.array(value))


def run_case(name: str, batch: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(name)
    x = example(batch)
    console.print(f"[bold]{name}[/], batch {batch}: preparing")
    providers, failed, reports = providers_for(name, model, x, with_compile=args.compile)
    with torch.inference_mode():
        reference = model(x)
        errors, top1 = {}, {}
        for p in providers:
            out = _output(p.run()).reshape(reference.shape).to(reference.dtype)
            errors[p.name] = compare(reference, out, rtol=0, atol=0).max_rel
            top1[p.name] = float((out.argmax(1) == reference.argmax(1)).float().mean())
    for run in range(args.repeat):
        console.print(f"  measurement run {run + 1}/{args.repeat}")
        measure(providers, args.block_s, args.warmup_s)
    rows = []
    for p in providers:
        medians = [t.median_ms for t in p.times]
        rows.append({
            "provider": p.name,
            "median_ms": statistics.median(medians),
            "run_medians_ms": medians,
            "runs": [{"median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms,
                      "calls": t.runs} for t in p.times],
            "prepare_s": p.prepare_s,
            "prepare_rss_mb": p.memory_mb,
            "max_rel_error": errors[p.name],
            "top1_agreement": top1[p.name],
            "note": p.note,
        })  # fmt: skip
    by = {r["provider"]: r for r in rows}
    result: dict[str, Any] = {"model": name, "batch": batch, "rows": rows, "failed": failed}
    ours = by.get("onebyone float32")
    if ours is not None:
        peers = [by[n] for n in FLOAT32_PEERS if n in by]
        fastest = min(peers, key=lambda r: r["median_ms"]) if peers else None
        per_run = [
            min(by[n]["run_medians_ms"][i] for n in FLOAT32_PEERS if n in by) / m
            for i, m in enumerate(ours["run_medians_ms"])
        ] if peers else []  # fmt: skip
        result["float32"] = {
            "vs_fastest_peer": fastest["median_ms"] / ours["median_ms"] if fastest else None,
            "fastest_peer": fastest["provider"] if fastest else None,
            "vs_fastest_peer_per_run": per_run,
            "vs_eager": by["eager"]["median_ms"] / ours["median_ms"],
        }
    if "onebyone bfloat16" in by and "openvino default" in by:
        result["bfloat16"] = {
            "vs_openvino_default": by["openvino default"]["median_ms"]
            / by["onebyone bfloat16"]["median_ms"],
            "error": by["onebyone bfloat16"]["max_rel_error"],
        }
    for precision, r in reports.items():
        result[f"onebyone_report_{precision}"] = _report_summary(r)
    if "float32" in reports:
        result["fresh_process"] = fresh_process(name, batch, reports["float32"], console)
        result["busy"] = busy_run(name, batch, reports["float32"], console)
    return result


def _report_summary(r: Any) -> dict[str, Any]:
    """What ``optimize``'s report says: each candidate's latency with its spread."""
    return {
        "engine": r.engine,
        "precision": r.precision,
        "capture": r.capture,
        "passes": r.pass_counts(),
        "candidates": {
            c.name: None if c.latency is None else {
                "median_ms": c.latency.median_ms, "p10_ms": c.latency.p10_ms,
                "p90_ms": c.latency.p90_ms, "runs": c.latency.runs,
            }
            for c in r.candidates
        },
        "speedup": r.speedup,
        "speedup_range": r.speedup_range,
        "load": None if r.load is None else str(r.load),
        "notes": list(r.notes),
        "prepare_s": r.prepare_s,
    }  # fmt: skip


_FRESH_SCRIPT = """
import json, sys, time, torch, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
from bench_models import build_model, example
import onebyone as obo
from onebyone.deploy.timing import time_alone
torch.manual_seed(0)
model = build_model({name!r})
x = example({batch})
fast, report = obo.optimize(model, x)
# the returned module used plainly, as a user would right after optimize returns
plain = time_alone(lambda: fast(x), warmup_s=1.0, block_s={block_s})
print(json.dumps({{"kept": report.engine + "/" + report.precision,
                   "report_ms": report.latency_after_ms,
                   "plain_ms": plain.median_ms, "plain_p10_ms": plain.p10_ms,
                   "plain_p90_ms": plain.p90_ms, "plain_runs": plain.runs}}))
"""


def _child(script: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def fresh_process(name: str, batch: int, report: Any, console: Console) -> dict[str, Any]:
    """``optimize`` in a fresh process, its returned module timed plainly in a long
    block against the latency its report gave (``ratio`` > 1: slower than reported)."""
    script = _FRESH_SCRIPT.format(bench=str(Path(__file__).resolve().parent), threads=THREADS,
                                  name=name, batch=batch, block_s=BLOCK_S)  # fmt: skip
    row = _child(script)
    if "plain_ms" in row:
        row["ratio"] = row["plain_ms"] / row["report_ms"]
        console.print(f"  fresh process: {row['kept']} reported {row['report_ms']:.2f} ms, "
                      f"used plainly {row['plain_ms']:.2f} ms ({row['ratio']:.2f}x)")  # fmt: skip
    return row


def _busy_loop() -> None:  # pragma: no cover - runs in the busy processes
    while True:
        pass


def busy_run(name: str, batch: int, quiet: Any, console: Console) -> dict[str, Any]:
    """``optimize`` again with every core kept busy by another process: the speed-up it
    reports must stay within 25% of the quiet run's, or come with the busy machine or
    wide spread warning."""
    torch.manual_seed(0)
    model = build_model(name)
    x = example(batch)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_busy_loop, daemon=True) for _ in range(os.cpu_count() or 1)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            _, busy = obo.optimize(model, x)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join()
    ratio = (busy.speedup / quiet.speedup) if busy.speedup and quiet.speedup else None
    warned = any("busy" in n or "spread" in n for n in busy.notes)
    within = ratio is not None and 0.75 <= ratio <= 1.25
    outcome = "within 25%" if within else ("warned" if warned else "FAILED: no warning")
    console.print(f"  busy ({len(workers)} busy processes): speed-up {busy.speedup} vs quiet "
                  f"{quiet.speedup}: {outcome}")  # fmt: skip
    return {"processes": len(workers), "quiet_speedup": quiet.speedup,
            "busy_speedup": busy.speedup, "ratio": ratio, "warned": warned, "outcome": outcome,
            "report": _report_summary(busy)}  # fmt: skip


_PREP_SCRIPT = """
import json, sys, time, torch, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
from bench_models import build_model
import onebyone as obo
model = build_model("resnet50")
x = torch.randn(1, 3, 224, 224)
start = time.perf_counter()
fast, report = obo.optimize(model, x, engine={engine!r}, measure=False)
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would report the parent's size at the fork)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(json.dumps({{"engine": {engine!r}, "prepare_s": seconds, "peak_rss_mb": peak_kb / 1024}}))
"""


def preparation(console: Console) -> list[dict[str, Any]]:
    """``optimize`` on ResNet-50 at batch 1, one engine (and auto) per fresh process."""
    rows = []
    for engine in ("torch", "onnxruntime", "openvino", "auto"):
        script = _PREP_SCRIPT.format(
            bench=str(Path(__file__).resolve().parent), threads=THREADS, engine=engine
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            rows.append({"engine": engine, "error": done.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        console.print(f"  resnet50 engine={engine}: {rows[-1]}")
    return rows


def _table(cases: list[dict[str, Any]]) -> Table:
    table = Table(title="median ms (spread over runs), x = onebyone float32's speed-up")
    names = ["eager", "onnxruntime", "openvino f32", "openvino default", "compile+freezing",
             "onebyone float32", "onebyone bfloat16"]  # fmt: skip
    table.add_column("model, batch")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("vs fastest f32 peer", justify="right")
    table.add_column("vs eager", justify="right")
    for case in cases:
        by = {r["provider"]: r for r in case["rows"]}
        cells = []
        for n in names:
            r = by.get(n)
            if r is None:
                cells.append("-")
                continue
            lo, hi = min(r["run_medians_ms"]), max(r["run_medians_ms"])
            cells.append(f"{r['median_ms']:.1f} ({lo:.1f}-{hi:.1f})")
        f32 = case.get("float32", {})
        per_run = f32.get("vs_fastest_peer_per_run") or []
        spread = f" ({min(per_run):.2f}-{max(per_run):.2f})" if per_run else ""
        vs_peer = f32.get("vs_fastest_peer")
        table.add_row(
            f"{case['model']}, {case['batch']}",
            *cells,
            "-" if vs_peer is None else f"{vs_peer:.2f}x{spread}",
            "-" if "vs_eager" not in f32 else f"{f32['vs_eager']:.2f}x",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[*BUILT_IN, *TIMM])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=3, help="measurement runs (default 3)")
    parser.add_argument(
        "--block-s", type=float, default=BLOCK_S, help="seconds each provider is timed in one block"
    )
    parser.add_argument("--warmup-s", type=float, default=1.0,
                        help="seconds of untimed calls before each block")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="add torch.compile+freezing")
    parser.add_argument("--no-prep", action="store_true", help="skip the preparation section")
    parser.add_argument("--out", default=None, help="results name (default models)")
    parser.add_argument("--prep-only", action="store_true",
                        help="only the preparation section (writes preparation.json)")  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="one built-in and one timm model, batch 1, one run"
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="the three built-in and six timm models, batch 1 and 8, three runs",
    )
    args = parser.parse_args()  # fmt: skip
    if args.quick:
        args.models, args.batches, args.repeat = ["mobilenet_v2", "mobilenetv3_large_100"], [1], 1
    if args.full:
        args.models, args.batches, args.repeat = [*BUILT_IN, *TIMM], [1, 8], 3
    torch.set_num_threads(THREADS)
    console = Console()
    before = machine_load()
    load_before = None if before is None else str(before)
    console.print(f"load before: {load_before}")
    if args.prep_only:
        path = write_json("preparation", {"environment": environment(),
                                          "preparation": preparation(console)})  # fmt: skip
        console.print(f"wrote {path}")
        return
    cases: list[dict[str, Any]] = []
    prep: list[dict[str, Any]] = []
    out = args.out or ("models_quick" if args.quick else "models")

    def save() -> Path:  # after every case: a long run interrupted keeps what it measured
        load = machine_load()
        return write_json(out, {"environment": environment(), "args": vars(args),
                                "cases": cases, "preparation": prep,
                                "load_after": None if load is None else str(load),
                                "load_before": load_before})  # fmt: skip

    for name in args.models:
        for batch in args.batches:
            cases.append(run_case(name, batch, args, console))
            console.print(_table(cases[-1:]))
            save()
    console.print(_table(cases))
    prep = [] if args.no_prep else preparation(console)
    path = save()
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
