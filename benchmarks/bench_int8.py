"""int8 on whole models: the quantisers users run by hand against onebyone's int8 builders.

Models: the built-in ResNet-50, MobileNetV2 and GoogLeNet (``Conv1x1`` as
``nn.Conv2d``) and timm architectures (``pretrained=False``), norm statistics
measured on photo crops (``common.calibrate_norms``), eval mode, 224x224,
batch 1 and 8, ``torch.set_num_threads(2)``.

Calibration data, the same for every quantiser: 8 batches of 4 crops of
scikit-learn's two sample photographs (random 224x224 crops, ImageNet's mean and
spread); 16 other crops are held out for top-1 agreement with float32.

Providers, each prepared the way its users prepare it:

- ``onnxruntime f32``: ``torch.onnx.export(model, (x,), dynamo=True)``, an
  ``InferenceSession`` with every graph optimisation, 2 intra-op threads;
- ``openvino f32`` / ``openvino default``: ``openvino.convert_model(model,
  example_input=x)`` compiled with ``INFERENCE_PRECISION_HINT=f32`` / OpenVINO's
  defaults (bfloat16 on a CPU with native bfloat16);
- ``openvino int8 (nncf)``: the same conversion, ``nncf.quantize`` with its defaults on
  the 32 calibration images (one per item, as NNCF recommends), compiled with the
  defaults;
- ``openvino int8 (nncf), again``: the same quantised model compiled a second time, a
  control: the two are one graph, so their ratio is what this machine's timing can
  resolve between two providers (it is no peer of the targets);
- ``onnxruntime int8``: the same export (its batch fixed), ``quant_pre_process``,
  ``quantize_static`` (QDQ, per-channel, the 32 images in batches of the exported
  batch size as the calibration reader);
- ``onebyone openvino int8`` (float layers in float32) and ``... int8+bf16`` (float
  layers in bfloat16), ``onebyone onnxruntime int8``, ``onebyone torch int8 (pt2e)``:
  ``onebyone.deploy.quantize``'s builders on ``optimize``'s capture and passes.

Timing, as a benchmark tool does it: every provider is timed in long blocks, one
provider at a time: each block starts with at least ``--warmup-s`` seconds of untimed
calls (no other engine's threads left spinning), then ``--block`` timed calls; rounds
go over the providers in a rotating order; per measurement run the median, p10 and
p90 of the calls; ``--repeat`` runs. The load average before and after is recorded.

Run: ``nice python benchmarks/bench_int8.py`` (``--quick``: MobileNetV2 and ResNet-50
at batch 1, one run). Results: ``benchmarks/results/int8.json`` (``int8_quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
from bench_models import BUILT_IN, TIMM, build_model
from common import environment, geomean, photo_crops, write_json
from onebyone.deploy.capture import capture
from onebyone.deploy.passes import drop_whole_slices, fold_norms, merge_pointwise
from onebyone.deploy.program import Program
from onebyone.deploy.quantize import Batch, pt2e, split_data
from onebyone.deploy.quantize import onnxruntime as ort_int8
from onebyone.deploy.quantize import openvino as ov_int8
from onebyone.transforms.verify import compare

THREADS = 2
PEERS = ("onnxruntime f32", "openvino f32", "openvino default", "openvino int8 (nncf)",
         "onnxruntime int8")  # fmt: skip
CONTROL = "openvino int8 (nncf), again"
"""The peer's quantised model compiled a second time and timed as one more provider: two
runs of one graph, whose ratio shows what this machine's timing can resolve."""
OURS = ("onebyone openvino int8", "onebyone openvino int8+bf16", "onebyone onnxruntime int8",
        "onebyone torch int8 (pt2e)", "onebyone auto")  # fmt: skip
MAX_DROP = 0.01
"""The accuracy budget of ``onebyone auto`` and of the peers it is compared with."""


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _peer_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    return bytes(onnx_program.model_proto.SerializeToString())


def _session(model_bytes: bytes, x: torch.Tensor) -> Callable[[], Any]:
    import onnxruntime as rt

    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    session = rt.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda a: session.run(None, {name: a})[0]


def _compiled(ov_model: Any, config: dict[str, Any]) -> Callable[[np.ndarray], Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    return lambda a: compiled(a)[0]  # the compiled model's call: OpenVINO's plain use


def builders(
    model: nn.Module,
    x: torch.Tensor,
    calibration: list[Batch],
    held_out: torch.Tensor,
    reports: dict[str, Any],
) -> dict[str, Callable[[], Callable[[np.ndarray], Any]]]:
    """Each provider's preparation; each returns ``run(array) -> output``. ``optimize``'s
    report goes into ``reports``."""
    cache: dict[str, Any] = {}

    def peer_onnx() -> bytes:
        if "onnx" not in cache:
            cache["onnx"] = _peer_onnx(model, x)
        return cache["onnx"]

    def peer_ov() -> Any:
        import openvino as ov

        if "ov" not in cache:  # compiling and NNCF leave the converted model as it was
            cache["ov"] = ov.convert_model(model, example_input=x)
        return cache["ov"]

    def program() -> Any:
        if "program" not in cache:
            cap = capture(model, (x,))
            if cap.program is None:
                raise RuntimeError(f"no torch.export capture: {cap.attempts}")
            prog = Program(cap.program)
            for step in (fold_norms, merge_pointwise, drop_whole_slices):
                step(prog)
            prog.finish()
            spec = {
                "in_spec": cap.program.call_spec.in_spec,
                "out_spec": cap.program.call_spec.out_spec,
                "input_dtypes": [x.dtype],
            }
            cache["program"] = (cap.program, spec)  # fmt: skip
        return cache["program"]

    def ort_f32() -> Callable[[np.ndarray], Any]:
        return _session(peer_onnx(), x)

    def ov_config(config: dict[str, Any]) -> Callable[[], Callable[[np.ndarray], Any]]:
        return lambda: _compiled(peer_ov(), config)

    def nncf_model() -> Any:
        import nncf

        if "nncf" not in cache:
            rows = [row[None].numpy() for b in calibration for row in b.inputs[0]]
            cache["nncf"] = nncf.quantize(peer_ov(), nncf.Dataset(rows), subset_size=len(rows))
        return cache["nncf"]

    def ov_nncf() -> Callable[[np.ndarray], Any]:
        return _compiled(nncf_model(), {})

    def ort_int8_peer() -> Callable[[np.ndarray], Any]:
        # the same images, in batches of the exported (fixed) batch size
        rows = torch.cat([b.inputs[0] for b in calibration])
        batches = [Batch((chunk,)) for chunk in rows.split(x.shape[0]) if len(chunk) == len(x)]
        return _session(ort_int8.quantize_onnx(peer_onnx(), batches), x)

    def module_runner(module: nn.Module) -> Callable[[np.ndarray], Any]:
        def run(a: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(a))

        return run

    def ours_ov(float_precision: str) -> Callable[[], Callable[[np.ndarray], Any]]:
        def build() -> Callable[[np.ndarray], Any]:
            exported, spec = program()
            if "ov_int8" not in cache:  # quantised once; compiled for each float precision
                cache["ov_int8"] = ov_int8.openvino_int8_module(
                    exported, (x,), calibration=calibration, spec=spec)  # fmt: skip
            first = cache["ov_int8"]
            return module_runner(ov_int8.OpenVINOInt8Module(
                first.ov_model, calibration_s=first.calibration_s, precision=float_precision,
                threads=THREADS, shapes=[tuple(x.shape)], **spec))  # fmt: skip

        return build

    def ours_ort() -> Callable[[np.ndarray], Any]:
        exported, spec = program()
        traced = tuple(exported.example_inputs[0])
        return module_runner(ort_int8.onnxruntime_int8_module(
            exported, traced, calibration=calibration, spec=spec, example=(x,)))  # fmt: skip

    def ours_torch() -> Callable[[np.ndarray], Any]:
        return module_runner(pt2e.torch_int8_module(model, (x,), calibration=calibration))

    def ours_auto() -> Callable[[np.ndarray], Any]:
        # the same 32 calibration images; the 16 held-out crops in 8 batches of 2, so
        # that optimize's split (the first min(8, n // 2) batches calibrate) is the same
        data = [b.inputs[0] for b in calibration] + list(held_out.split(2))
        fast, report = obo.optimize(model, x, precision="auto", data=data,
                                    max_drop=MAX_DROP)  # fmt: skip
        reports["onebyone auto"] = json.loads(report.to_json())
        return module_runner(fast)

    return {
        "onnxruntime f32": ort_f32,
        "openvino f32": ov_config({"INFERENCE_PRECISION_HINT": "f32"}),
        "openvino default": ov_config({}),
        "openvino int8 (nncf)": ov_nncf,
        CONTROL: ov_nncf,
        "onnxruntime int8": ort_int8_peer,
        "onebyone openvino int8": ours_ov("float32"),
        "onebyone openvino int8+bf16": ours_ov("bfloat16"),
        "onebyone onnxruntime int8": ours_ort,
        "onebyone torch int8 (pt2e)": ours_torch,
        "onebyone auto": ours_auto,
    }


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.asarray(value))


def time_blocks(
    runs: dict[str, Callable[[], Any]], *, rounds: int, block: int, warmup_s: float
) -> dict[str, list[float]]:
    """Seconds per call of each provider, timed in long blocks one provider at a time."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            start = time.perf_counter()
            while time.perf_counter() - start < warmup_s:
                run()
            for _ in range(block):
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
    return times


def _quantiles(ts: list[float]) -> dict[str, float]:
    q = np.quantile(np.array(ts) * 1e3, [0.1, 0.5, 0.9])
    return {"p10_ms": float(q[0]), "median_ms": float(q[1]), "p90_ms": float(q[2])}


def run_case(name: str, batch: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(name)
    crops = photo_crops(32 + 16 + batch)
    x = crops[-batch:].clone()
    held_out = crops[32:48]
    split = split_data(list(crops[:32].split(4)), (x,), calibration_batches=8,
                       held_out_batches=0)  # fmt: skip
    with torch.inference_mode():
        reference = model(x)
        reference_held = model(held_out)
    prepared: dict[str, Callable[[np.ndarray], Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    wanted = [n for n in (*PEERS, CONTROL, *OURS) if not args.providers or n in args.providers]
    reports: dict[str, Any] = {}
    for label, build in builders(model, x, split.calibration, held_out, reports).items():
        if label not in wanted:
            continue
        console.print(f"  preparing {label}")
        start = time.perf_counter()
        try:
            with _quiet():
                run = build()
                prep = time.perf_counter() - start
                out = _tensor(run(x.numpy()))
                held = torch.cat([_tensor(run(c.numpy())) for c in held_out.split(batch)
                                  if c.shape[0] == batch])  # fmt: skip
        except Exception as exc:  # a provider that cannot take this model is reported
            failed[label] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            console.print(f"    failed: {failed[label]}")
            continue
        ref_held = reference_held[: held.shape[0]]
        rows[label] = {
            "prepare_s": prep,
            "max_rel_error": compare(
                reference, out.reshape(reference.shape), rtol=0, atol=0
            ).max_rel,
            "top1_agreement": float((held.argmax(1) == ref_held.argmax(1)).float().mean()),
            "runs": [],
        }
        array = x.numpy()
        prepared[label] = lambda run=run, array=array: run(array)
    for r in range(args.repeat):
        console.print(f"  measurement run {r + 1}/{args.repeat}")
        times = time_blocks(prepared, rounds=args.rounds, block=args.block,
                            warmup_s=args.warmup_s)  # fmt: skip
        for label, ts in times.items():
            rows[label]["runs"].append(_quantiles(ts))
    for row in rows.values():
        row["median_ms"] = statistics.median(run["median_ms"] for run in row["runs"])
    auto = reports.get("onebyone auto")
    if auto is not None:
        rows["onebyone auto"]["kept"] = f"{auto['engine']}/{auto['precision']}"
    return {"model": name, "batch": batch, "rows": rows, "failed": failed, "reports": reports}


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """onebyone's int8 against OpenVINO + NNCF int8, per case and as a geometric mean."""
    out: dict[str, Any] = {}
    for ours in OURS:
        peer = "openvino int8 (nncf)"
        ratios = [c["rows"][peer]["median_ms"] / c["rows"][ours]["median_ms"]
                  for c in cases if ours in c["rows"] and peer in c["rows"]]  # fmt: skip
        if ratios:
            out[ours] = {"vs_openvino_nncf_geomean": geomean(ratios),
                         "min": min(ratios), "max": max(ratios)}  # fmt: skip
    nncf = "openvino int8 (nncf)"
    control = [c["rows"][nncf]["median_ms"] / c["rows"][CONTROL]["median_ms"]
               for c in cases if CONTROL in c["rows"] and nncf in c["rows"]]  # fmt: skip
    if control:
        out["control: nncf vs the same model compiled again"] = {
            "geomean": geomean(control), "min": min(control), "max": max(control)}  # fmt: skip
    out["auto"] = auto_summary(cases)
    return out


def _within_budget(row: dict[str, Any]) -> bool:
    return bool(row["top1_agreement"] >= 1 - MAX_DROP)


def auto_summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """``onebyone auto`` against the fastest peer configuration within the budget, per
    case, and against the best single peer configuration over all cases (geomean)."""
    with_auto = [c for c in cases if "onebyone auto" in c["rows"]]
    per_case = []
    for c in with_auto:
        peers = {n: r for n, r in c["rows"].items() if n in PEERS and _within_budget(r)}
        if not peers:
            continue
        fastest = min(peers, key=lambda n: peers[n]["median_ms"])
        auto = c["rows"]["onebyone auto"]
        ratios = [peers[fastest]["median_ms"] / run["median_ms"]
                  for run in auto["runs"]]  # fmt: skip
        per_case.append({
            "model": c["model"], "batch": c["batch"], "fastest_peer": fastest,
            "kept": auto.get("kept"),
            "vs_fastest_peer": peers[fastest]["median_ms"] / auto["median_ms"],
            "per_run_vs_fastest_peer_median": [min(ratios), max(ratios)],
        })  # fmt: skip
    # a single configuration used on every model: present and within budget everywhere
    singles = {}
    for name in PEERS:
        rows = [c["rows"].get(name) for c in with_auto]
        if with_auto and all(r is not None and _within_budget(r) for r in rows):
            singles[name] = geomean(r["median_ms"] / c["rows"]["onebyone auto"]["median_ms"]
                                    for r, c in zip(rows, with_auto, strict=True))  # fmt: skip
    best = min(singles, key=lambda n: singles[n]) if singles else None
    return {
        "per_case": per_case,
        "vs_fastest_peer_min": min((p["vs_fastest_peer"] for p in per_case), default=None),
        "vs_each_single_peer_geomean": singles,
        "best_single_peer": best,
        "vs_best_single_peer_geomean": singles.get(best) if best else None,
    }


def _table(cases: list[dict[str, Any]]) -> Table:
    table = Table(title="median ms (p10-p90 of the middle run); error, top-1 agreement")
    names = [*PEERS, CONTROL, *OURS]
    table.add_column("model, batch")
    for n in names:
        table.add_column(n, justify="right")
    for case in cases:
        cells = []
        for n in names:
            row = case["rows"].get(n)
            if row is None:
                cells.append("-")
                continue
            mid = row["runs"][len(row["runs"]) // 2]
            cells.append(f"{row['median_ms']:.2f} ({mid['p10_ms']:.2f}-{mid['p90_ms']:.2f})\n"
                         f"{row['max_rel_error']:.2g}, {row['top1_agreement']:.2f}")  # fmt: skip
        table.add_row(f"{case['model']}, {case['batch']}", *cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[*BUILT_IN, *TIMM])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--providers", nargs="*", default=[], help="a subset (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="measurement runs (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per provider and run")
    parser.add_argument("--block", type=int, default=8, help="timed calls per block")
    parser.add_argument("--warmup-s", type=float, default=0.3, help="untimed calls per block")
    parser.add_argument("--quick", action="store_true", help="2 models, batch 1, one run")
    parser.add_argument("--out", default=None, help="results name (default int8)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.repeat = ["mobilenet_v2", "resnet50"], [1], 1
    torch.set_num_threads(THREADS)
    console = Console()
    load_before = os.getloadavg()
    cases: list[dict[str, Any]] = []
    name = args.out or ("int8_quick" if args.quick else "int8")

    def save() -> Path:  # after every case: a long run interrupted keeps what it measured
        return write_json(name, {
            "environment": environment(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "args": vars(args),
            "cases": cases,
            "summary": summary(cases),
        })  # fmt: skip

    for model in args.models:
        for batch in args.batches:
            console.print(f"[bold]{model}[/], batch {batch}")
            cases.append(run_case(model, batch, args, console))
            console.print(_table(cases[-1:]))
            path = save()
    console.print(_table(cases))
    console.print(summary(cases))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
