"""Does one fused Triton kernel beat cuDNN plus a separate epilogue? (NVIDIA GPU)

The layer suite (every distinct 1x1 layer of ResNet-50, MobileNetV2 and
GoogLeNet, plus odd shapes) at batch 32 and 128, bfloat16, NCHW and NHWC, with
the bottleneck epilogue ``relu(conv(x) + bias + residual)``. Side by side in
one run:

- ``onebyone``: ``onebyone.conv1x1(..., backend="triton")``, one kernel;
- ``cudnn+eager``: ``F.conv2d`` (cuDNN) followed by eager ``+ r`` and ``relu``;
- ``linear+eager``: ``F.linear`` on the NHWC pixel view, then the eager epilogue
  (NHWC, groups 1 only: elsewhere it would need a layout copy);
- ``compiled``: ``torch.compile`` of the cuDNN + eager chain.

Inference rows report TFLOP/s, GB/s (the bytes the op must move: the sampled
input pixels, weight, bias, residual and output) and the fraction of the
roofline ``max(flops / peak, bytes / bandwidth)``, with the bfloat16 matmul
peak and the copy bandwidth measured at the start of the same run. Training
rows time one forward + backward. A layer is memory-bound when its arithmetic
intensity is below the measured ridge point ``peak / bandwidth``.

Targets: onebyone >= 1.2x cudnn+eager on memory-bound layers, >= 0.9x on
compute-bound ones, >= 70% of the roofline, training step >= 1.1x.

Times are medians of CUDA-event-timed runs after warm-up, with the L2 cache
flushed before each run (``triton.testing.do_bench``). Writes
``benchmarks/results/bench_gpu.json`` (``bench_gpu_quick.json`` with ``--quick``).

Run: ``python benchmarks/bench_gpu.py`` (``--quick`` for seven layers at batch
32; ``--models resnet50`` or ``--batches 32`` to split a long run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
from common import ODD_LAYERS, Layer, environment, geomean, layer_suite, write_json

FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
DTYPE = torch.bfloat16
TARGETS = {"memory_bound": 1.2, "compute_bound": 0.9, "roofline": 0.7, "training": 1.1}
# Seven layers spanning the suite: memory-bound stem/bottleneck layers, narrow
# MobileNet layers, compute-bound late ResNet layers, and the odd shape.
QUICK_LAYERS = [
    Layer(64, 256, 56, 56),
    Layer(256, 64, 56, 56),
    Layer(96, 24, 56, 56),
    Layer(1024, 2048, 14, 14, stride=2),
    Layer(512, 2048, 7, 7),
    Layer(2048, 512, 7, 7),
    *ODD_LAYERS,
]

Fn = Callable[[], Any]


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if torch.version.cuda is None:
        return (
            f"bench_gpu.py needs an NVIDIA GPU with CUDA; this PyTorch ({torch.__version__}) "
            "is built without CUDA. No benchmark was run."
        )
    if not torch.cuda.is_available():
        return (
            "bench_gpu.py needs an NVIDIA GPU with CUDA; PyTorch sees none "
            "(torch.cuda.is_available() is False). No benchmark was run."
        )
    try:
        import triton  # noqa: F401
    except ImportError:
        return "bench_gpu.py needs Triton: pip install 'onebyone[triton]'."
    return None


def timer(fn: Fn, grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median seconds of ``fn`` on the GPU (warm-up, L2 flushed, CUDA events)."""
    from triton.testing import do_bench

    ms = do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    return float(ms) / 1e3


def measure_peak(device: str, bench: Callable[[Fn], float]) -> dict[str, float]:
    """bfloat16 matmul TFLOP/s (cuBLAS, 8192^3) and copy bandwidth (GB/s, 1 GiB)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=DTYPE)
    b = torch.randn(n, n, device=device, dtype=DTYPE)
    tflops = 2 * n**3 / bench(lambda: torch.matmul(a, b)) / 1e12
    src = torch.empty(2**30 // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    gbs = 2 * 2**30 / bench(lambda: dst.copy_(src)) / 1e9  # read + write
    return {"bf16_matmul_tflops": tflops, "copy_gbs": gbs}


def op_bytes(layer: Layer, itemsize: int) -> int:
    """Bytes the fused op must move: sampled input pixels, weight, bias, residual, output."""
    ho, wo = layer.out_hw
    pixels = layer.batch * ho * wo
    return itemsize * (
        pixels * layer.c + layer.k * (layer.c // layer.groups) + layer.k + 2 * pixels * layer.k
    )


def make_inputs(layer: Layer, fmt: torch.memory_format, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    ho, wo = layer.out_hw
    cg = layer.c // layer.groups

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)

    x = randn(layer.batch, layer.c, layer.h, layer.w).to(DTYPE).to(memory_format=fmt)
    w = (randn(layer.k, cg) / cg**0.5).to(DTYPE)
    b = randn(layer.k).to(DTYPE)
    r = randn(layer.batch, layer.k, ho, wo).to(DTYPE).to(memory_format=fmt)
    return {"x": x, "w": w, "b": b, "r": r}


def eager_chain(
    x: torch.Tensor, w4: torch.Tensor, b: torch.Tensor, r: torch.Tensor, stride: int, groups: int
) -> torch.Tensor:
    return torch.relu(F.conv2d(x, w4, b, stride=stride, groups=groups) + r)


def linear_chain(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor, s: int) -> Any:
    rows = x.permute(0, 2, 3, 1)[:, ::s, ::s]  # (N, H', W', C): a view of NHWC storage
    return torch.relu(F.linear(rows, w, b) + r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def providers(layer: Layer, fmt_name: str, t: dict[str, torch.Tensor]) -> dict[str, Fn]:
    """The forward of every provider on the same tensors (leaves may require grad)."""
    s, g = layer.stride, layer.groups
    x, w, b, r = t["x"], t["w"], t["b"], t["r"]
    w4 = w.view(layer.k, layer.c // g, 1, 1)
    torch._dynamo.reset()  # a fresh compile for this shape, never a fallback to eager
    compiled = torch.compile(eager_chain, dynamic=False)
    out: dict[str, Fn] = {
        "onebyone": lambda: obo.conv1x1(
            x, w, b, stride=s, groups=g, activation="relu", residual=r, backend="triton"
        ),
        "cudnn+eager": lambda: eager_chain(x, w4, b, r, s, g),
        "compiled": lambda: compiled(x, w4, b, r, s, g),
    }
    if fmt_name == "nhwc" and g == 1:
        out["linear+eager"] = lambda: linear_chain(x, w, b, r, s)
    return out


def max_error(fns: dict[str, Fn]) -> dict[str, float]:
    """Largest |difference| of each provider from cudnn+eager, relative to its max."""
    ref = fns["cudnn+eager"]().float()
    scale = float(ref.abs().max().clamp_min(1e-6))
    return {name: float((fn().float() - ref).abs().max()) / scale for name, fn in fns.items()}


def run_inference(layer: Layer, fmt_name: str, device: str, bench: Callable[[Fn], float]) -> Any:
    tensors = make_inputs(layer, FORMATS[fmt_name], device)
    with torch.no_grad():
        fns = providers(layer, fmt_name, tensors)
        errors = max_error(fns)
        times = {name: bench(fn) for name, fn in fns.items()}
    return times, errors


def run_training(layer: Layer, fmt_name: str, device: str, bench: Any) -> dict[str, float]:
    tensors = make_inputs(layer, FORMATS[fmt_name], device)
    leaves = [t.requires_grad_() for t in tensors.values()]
    fns = providers(layer, fmt_name, tensors)
    grad = torch.randn_like(fns["cudnn+eager"]())

    def step(forward: Fn) -> Fn:
        return lambda: forward().backward(grad)

    for fn in fns.values():  # compile forward and backward before timing
        step(fn)()
    return {name: bench(step(fn), grad_to_none=leaves) for name, fn in fns.items()}


def rows_for(
    layers: list[Layer],
    formats: list[str],
    training: bool,
    device: str,
    bench: Any,
    console: Console,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    itemsize = torch.empty((), dtype=DTYPE).element_size()
    for i, layer in enumerate(layers):
        for fmt_name in formats:
            console.print(f"[{i + 1}/{len(layers)}] {layer.name} {fmt_name}", highlight=False)
            times, errors = run_inference(layer, fmt_name, device, bench)
            row = {
                "layer": layer.name,
                "source": layer.source,
                "format": fmt_name,
                "macs": layer.macs,
                "bytes": op_bytes(layer, itemsize),
                "inference_s": times,
                "max_rel_error": errors,
            }
            if training:
                row["training_s"] = run_training(layer, fmt_name, device, bench)
            rows.append(row)
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def analyse(rows: list[dict[str, Any]], peak: dict[str, float]) -> dict[str, Any]:
    """Per-row rates and roofline fractions (added to the rows) and the summary."""
    flops_peak = peak["bf16_matmul_tflops"] * 1e12
    bw_peak = peak["copy_gbs"] * 1e9
    ridge = flops_peak / bw_peak
    for row in rows:
        t = row["inference_s"]["onebyone"]
        flops = 2 * row["macs"]
        row["intensity"] = flops / row["bytes"]
        row["memory_bound"] = row["intensity"] < ridge
        row["tflops"] = flops / t / 1e12
        row["gbs"] = row["bytes"] / t / 1e9
        row["roofline_fraction"] = max(flops / flops_peak, row["bytes"] / bw_peak) / t
        times = row["inference_s"]
        row["speedup"] = {p: times[p] / t for p in times if p != "onebyone"}
        if "training_s" in row:
            tt = row["training_s"]
            row["training_speedup"] = {p: tt[p] / tt["onebyone"] for p in tt if p != "onebyone"}

    def speedups(sel: list[dict[str, Any]], key: str, peer: str) -> list[float]:
        return [r[key][peer] for r in sel if key in r and peer in r[key]]

    memory = [r for r in rows if r["memory_bound"]]
    compute = [r for r in rows if not r["memory_bound"]]
    summary: dict[str, Any] = {"ridge_flop_per_byte": ridge, "rows": len(rows)}
    for label, sel in (("memory_bound", memory), ("compute_bound", compute)):
        vs_cudnn = speedups(sel, "speedup", "cudnn+eager")
        summary[f"{label}_layers"] = len(sel)
        summary[f"{label}_speedup_vs_cudnn_geomean"] = geomean(vs_cudnn)
        summary[f"{label}_speedup_vs_cudnn_min"] = min(vs_cudnn, default=float("nan"))
        summary[f"{label}_speedup_vs_compiled_geomean"] = geomean(
            speedups(sel, "speedup", "compiled")
        )
    summary["onebyone_max_rel_error"] = max(r["max_rel_error"]["onebyone"] for r in rows)
    fractions = sorted(r["roofline_fraction"] for r in rows)
    summary["roofline_fraction_median"] = fractions[len(fractions) // 2] if fractions else None
    summary["rows_at_or_above_70pct_roofline"] = sum(f >= TARGETS["roofline"] for f in fractions)
    train = speedups(rows, "training_speedup", "cudnn+eager")
    if train:
        summary["training_speedup_vs_cudnn_geomean"] = geomean(train)
        summary["training_speedup_vs_compiled_geomean"] = geomean(
            speedups(rows, "training_speedup", "compiled")
        )
    summary["targets"] = {
        "memory_bound >= 1.2x cudnn+eager (geomean)": _met(
            summary["memory_bound_speedup_vs_cudnn_geomean"], TARGETS["memory_bound"]
        ),
        "compute_bound >= 0.9x cudnn+eager (geomean)": _met(
            summary["compute_bound_speedup_vs_cudnn_geomean"], TARGETS["compute_bound"]
        ),
        ">= 70% of roofline (median)": _met(summary["roofline_fraction_median"], 0.7),
        "training >= 1.1x cudnn+eager (geomean)": _met(
            summary.get("training_speedup_vs_cudnn_geomean"), TARGETS["training"]
        ),
    }
    return summary


def _met(value: float | None, target: float) -> str:
    if value is None or value != value:  # no rows of that kind in this run
        return "not measured"
    return f"{'met' if value >= target else 'NOT met'} ({value:.2f} vs {target})"


def print_tables(console: Console, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    peers = ["cudnn+eager", "linear+eager", "compiled"]
    table = Table(
        title="inference, bf16: onebyone time, rate, roofline; peers' time / onebyone's",
        title_justify="left",
    )
    for col in ("layer", "fmt", "bound", "us", "TFLOP/s", "GB/s", "roofline", *peers):
        table.add_column(col, justify="left" if col in ("layer", "fmt", "bound") else "right")
    for r in rows:
        table.add_row(
            r["layer"],
            r["format"],
            "mem" if r["memory_bound"] else "compute",
            f"{r['inference_s']['onebyone'] * 1e6:.1f}",
            f"{r['tflops']:.1f}",
            f"{r['gbs']:.0f}",
            f"{100 * r['roofline_fraction']:.0f}%",
            *(f"{r['speedup'][p]:.2f}x" if p in r["speedup"] else "-" for p in peers),
        )
    console.print(table)
    if any("training_s" in r for r in rows):
        train = Table(
            title="training step (forward + backward): onebyone time; peers' time / onebyone's",
            title_justify="left",
        )
        for col in ("layer", "fmt", "us", *peers):
            train.add_column(col, justify="left" if col in ("layer", "fmt") else "right")
        for r in rows:
            sp = r["training_speedup"]
            train.add_row(
                r["layer"],
                r["format"],
                f"{r['training_s']['onebyone'] * 1e6:.1f}",
                *(f"{sp[p]:.2f}x" if p in sp else "-" for p in peers),
            )
        console.print(train)
    summary_table = Table(title="summary", title_justify="left")
    summary_table.add_column("measure")
    summary_table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            for k, v in value.items():
                summary_table.add_row(f"target: {k}", v)
        else:
            summary_table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(summary_table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seven layers at batch 32")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--models", nargs="+", help="layer suite of these models only")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    console = Console(width=150)  # the inference table has ten columns
    reason = unavailable()
    if reason is not None:
        console.print(reason, highlight=False)
        return 2

    import triton

    torch.manual_seed(0)
    if args.quick:
        layers = [Layer(**{**vars(lay), "batch": 32}) for lay in QUICK_LAYERS]
    else:
        layers = layer_suite(args.batches, models=args.models)
    peak = measure_peak("cuda", timer)
    console.print(
        f"{torch.cuda.get_device_name()}: bf16 matmul {peak['bf16_matmul_tflops']:.0f} TFLOP/s, "
        f"copy {peak['copy_gbs']:.0f} GB/s (measured now). {len(layers)} layers x "
        f"{len(args.formats)} formats.",
        highlight=False,
    )
    rows = rows_for(layers, args.formats, not args.skip_training, "cuda", timer, console)
    summary = analyse(rows, peak)
    print_tables(console, rows, summary)
    env = environment() | {
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    path = write_json(
        "bench_gpu" + ("_quick" if args.quick else ""),
        {"environment": env, "args": vars(args), "peak": peak, "summary": summary, "rows": rows},
    )
    console.print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
