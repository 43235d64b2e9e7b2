"""How fast is one 1x1 layer? onebyone's op against its peers, side by side.

Three questions over the layer suite (every distinct 1x1 layer of ResNet-50,
MobileNetV2 and GoogLeNet at batch 1 and 8, plus odd shapes), fp32 on the CPU:

1. NumPy: ``onebyone.numpy.conv1x1`` vs ``np.matmul`` on the same GEMM vs ``np.einsum``.
2. PyTorch inference of conv + bias + folded-BN + residual + ReLU:
   ``onebyone.conv1x1`` vs the eager chain ``Conv2d -> BatchNorm2d -> add -> ReLU``,
   in NCHW and channels-last. The share of the machine's peak it reaches is set
   beside that of the bare convolution (the product alone, no epilogue, straight
   into oneDNN, on a prepacked weight too): the ceiling for any op built on it.
3. PyTorch training step (forward + backward): ``Conv1x1`` vs ``nn.Conv2d(k=1)``, and
   with an epilogue: ``Conv1x1(activation="relu")(x, residual=r)`` vs
   ``relu(Conv2d(x) + r)``.

Run: ``python benchmarks/bench_op.py`` (``--quick`` for a short subset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onebyone as obo
import onebyone.numpy as onp
from common import (
    Layer,
    environment,
    geomean,
    interleaved_medians,
    layer_suite,
    measure_peak,
    write_json,
)
from onebyone.nn import Conv1x1

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def numpy_providers(layer: Layer) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((layer.batch, layer.c, layer.h, layer.w), dtype=np.float32)
    w = rng.standard_normal((layer.k, layer.c // layer.groups), dtype=np.float32)
    s, g = layer.stride, layer.groups
    ho, wo = layer.out_hw
    wg = w.reshape(g, layer.k // g, layer.c // g)  # (g, K/g, C/g)

    def matmul() -> np.ndarray:  # the faster form of np.matmul for each case
        if g == 1:
            return np.matmul(w, x[:, :, ::s, ::s].reshape(layer.batch, layer.c, ho * wo))
        cols = x[:, :, ::s, ::s].reshape(layer.batch, g, layer.c // g, ho * wo)
        return np.matmul(wg, cols)

    def einsum() -> np.ndarray:
        xs = x[:, :, ::s, ::s].reshape(layer.batch, g, layer.c // g, ho, wo)
        return np.einsum("gkc,ngchw->ngkhw", wg, xs)

    return {
        "onebyone.numpy": lambda: onp.conv1x1(x, w, stride=s, groups=g),
        "np.matmul": matmul,
        "np.einsum": einsum,
    }


def inference_providers(layer: Layer, fmt: torch.memory_format) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(layer.batch, layer.c, layer.h, layer.w, generator=gen).to(memory_format=fmt)
    ho, wo = layer.out_hw
    r = torch.randn(layer.batch, layer.k, ho, wo, generator=gen).to(memory_format=fmt)
    conv = nn.Conv2d(layer.c, layer.k, 1, stride=layer.stride, groups=layer.groups)
    bn = nn.BatchNorm2d(layer.k)
    with torch.no_grad():
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.normal_(generator=gen)
        bn.bias.normal_(generator=gen)
    conv, bn = conv.eval().to(memory_format=fmt), bn.eval()
    scale = bn.weight / torch.sqrt(
        bn.running_var + bn.eps
    )  # folded BN: w' = w*s, b' = (b-mu)*s+beta
    w = (conv.weight.reshape(layer.k, -1) * scale[:, None]).detach().contiguous()
    b = ((conv.bias - bn.running_mean) * scale + bn.bias).detach()

    def eager() -> torch.Tensor:
        return torch.relu(bn(conv(x)) + r)

    def ours(backend: str) -> Any:
        return lambda: obo.conv1x1(x, w, b, stride=layer.stride, groups=layer.groups,
                                   activation="relu", residual=r, backend=backend)  # fmt: skip

    # The ceiling for the share of peak: the product alone, straight into oneDNN (no
    # bias, no residual, no activation, no argument checks), also on a prepacked weight.
    s, g = layer.stride, layer.groups
    w4 = w.reshape(layer.k, -1, 1, 1)

    def bare() -> torch.Tensor:
        return torch.convolution(x, w4, None, (s, s), (0, 0), (1, 1), False, (0, 0), g)

    with torch.no_grad():
        torch.testing.assert_close(ours("auto")(), eager(), rtol=1e-3, atol=1e-3)
    providers = {
        "eager chain": eager,
        "onebyone": ours("auto"),
        "onebyone gemm": ours("gemm"),
        "onebyone onednn": ours("onednn"),
        "bare convolution": bare,
    }
    if fmt is torch.channels_last:  # a packed weight makes oneDNN write channels-last
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w4, [0, 0], [s, s], [1, 1], g, list(x.shape)
        )
        providers["bare packed convolution"] = lambda: torch.ops.mkldnn._convolution_pointwise(
            x, packed, None, [0, 0], [s, s], [1, 1], g, "none", [], ""
        )
    return providers


def training_providers(layer: Layer, fmt: torch.memory_format) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(layer.batch, layer.c, layer.h, layer.w, generator=gen)
    x = x.to(memory_format=fmt).requires_grad_()
    ours = Conv1x1(layer.c, layer.k, stride=layer.stride, groups=layer.groups)
    ref = nn.Conv2d(layer.c, layer.k, 1, stride=layer.stride, groups=layer.groups)
    ref = ref.to(memory_format=fmt)
    ours.load_state_dict(ref.state_dict())
    grad = torch.randn_like(ref(x)).to(memory_format=fmt)

    def step(module: nn.Module) -> Any:
        def run() -> None:
            x.grad = None
            module.zero_grad(set_to_none=True)
            module(x).backward(grad)

        return run

    return {"nn.Conv2d": step(ref), "Conv1x1": step(ours)}


def epilogue_training_providers(layer: Layer, fmt: torch.memory_format) -> dict[str, Any]:
    """Training with an epilogue: relu(conv(x) + b + r), fused vs the eager chain."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(layer.batch, layer.c, layer.h, layer.w, generator=gen)
    x = x.to(memory_format=fmt).requires_grad_()
    ref = nn.Conv2d(layer.c, layer.k, 1, stride=layer.stride, groups=layer.groups)
    ref = ref.to(memory_format=fmt)
    ours = Conv1x1(layer.c, layer.k, stride=layer.stride, groups=layer.groups, activation="relu")
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        out = ref(x)
    r = torch.randn_like(out).to(memory_format=fmt).requires_grad_()
    grad = torch.randn_like(out).to(memory_format=fmt)

    def step(forward: Any, module: nn.Module) -> Any:
        def run() -> None:
            x.grad = r.grad = None
            module.zero_grad(set_to_none=True)
            forward().backward(grad)

        return run

    return {
        "Conv2d -> add -> ReLU": step(lambda: torch.relu(ref(x) + r), ref),
        "Conv1x1(relu, residual)": step(lambda: ours(x, residual=r), ours),
    }


def time_all(providers: dict[str, Any], budget: float) -> dict[str, float]:
    return interleaved_medians(providers, budget_s=budget * len(providers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few layers, short timings")
    parser.add_argument("--budget", type=float, default=0.15, help="seconds per provider per layer")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    console = Console()
    torch.manual_seed(0)

    layers = layer_suite()
    if args.quick:
        layers = layers[:: max(1, len(layers) // 6)]
    budget = 0.03 if args.quick else args.budget
    # The peak is measured before and after the layers; the better one counts, so a
    # busy moment during one measurement cannot inflate every share of the peak.
    peaks = [measure_peak()]
    console.print(f"Peak fp32 before: {describe_peak(peaks[0])}. {len(layers)} layers.")

    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for layer in layers:
            t = time_all(numpy_providers(layer), budget)
            rows.append({"section": "numpy", "layer": layer.name, "macs": layer.macs, "times": t})
            for fmt_name, fmt in FORMATS.items():
                t = time_all(inference_providers(layer, fmt), budget)
                intensity = 2 * layer.macs / layer.bytes_moved(residual=True)
                rows.append({"section": "inference", "format": fmt_name, "layer": layer.name,
                             "macs": layer.macs, "intensity": intensity, "times": t})  # fmt: skip
    if not args.skip_training:
        for layer in layers:
            for fmt_name, fmt in FORMATS.items():
                t = time_all(training_providers(layer, fmt), budget)
                rows.append({"section": "training", "format": fmt_name, "layer": layer.name,
                             "macs": layer.macs, "times": t})  # fmt: skip
                t = time_all(epilogue_training_providers(layer, fmt), budget)
                rows.append({"section": "training epilogue", "format": fmt_name,
                             "layer": layer.name, "macs": layer.macs, "times": t})  # fmt: skip

    peaks.append(measure_peak())
    console.print(f"Peak fp32 after: {describe_peak(peaks[1])}.")
    peak = max(peaks, key=lambda p: p.gflops)
    ridge = peak.gflops / peak.bandwidth_gbs  # flop/byte where compute starts to bound
    for row in rows:
        if row["section"] == "inference":
            row["compute_bound"] = row["intensity"] > ridge
    summary = summarise(rows, peak.gflops)
    print_tables(console, rows, summary, peak.gflops)
    path = write_json(
        "bench_op" + ("_quick" if args.quick else ""),
        {
            "environment": environment(),
            "peak": peak.__dict__,
            "peaks_before_after": [p.__dict__ for p in peaks],
            "ridge_flop_per_byte": ridge,
            "summary": summary,
            "rows": rows,
        },
    )
    console.print(f"Wrote {path}")
    return 0


def describe_peak(peak: Any) -> str:
    ridge = peak.gflops / peak.bandwidth_gbs
    engines = ", ".join(f"{k} {v:.0f}" for k, v in peak.by_engine.items())
    return (
        f"{peak.gflops:.0f} GFLOP/s ({engines}); copy bandwidth {peak.bandwidth_gbs:.1f} GB/s; "
        f"ridge {ridge:.1f} flop/byte"
    )


def summarise(rows: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    def ratios(section: str, num: str, den: str) -> list[float]:
        return [r["times"][num] / r["times"][den] for r in rows if r["section"] == section]

    def speedup(r: dict[str, Any]) -> float:
        return float(r["times"]["eager chain"] / r["times"]["onebyone"])

    inference = [r for r in rows if r["section"] == "inference"]
    compute = [r for r in inference if r["compute_bound"]]
    slowest = min(inference, key=speedup)
    fractions = [2 * r["macs"] / r["times"]["onebyone"] / 1e9 / peak for r in compute]
    bare = [min(t for p, t in r["times"].items() if p.startswith("bare")) for r in compute]
    bare_fractions = [2 * r["macs"] / t / 1e9 / peak for r, t in zip(compute, bare, strict=True)]
    of_bare = [t / r["times"]["onebyone"] for r, t in zip(compute, bare, strict=True)]
    out: dict[str, Any] = {
        "numpy_vs_matmul_median": float(np.median(ratios("numpy", "np.matmul", "onebyone.numpy"))),
        "numpy_vs_einsum_median": float(np.median(ratios("numpy", "np.einsum", "onebyone.numpy"))),
        "inference_speedup_geomean": geomean(speedup(r) for r in inference),
        "inference_speedup_min": speedup(slowest),
        "inference_slowest_layer": f"{slowest['layer']} {slowest['format']}",
        "compute_bound_layers": len(compute),
        "compute_bound_peak_fraction_median": float(np.median(fractions)) if fractions else None,
        # the same for the faster bare convolution (the product alone), and onebyone's
        # speed (with its epilogue) as a fraction of that bare convolution's
        "compute_bound_bare_peak_fraction_median": (
            float(np.median(bare_fractions)) if bare_fractions else None
        ),
        "compute_bound_onebyone_vs_bare_median": float(np.median(of_bare)) if of_bare else None,
    }
    for batch in sorted({r["layer"].rsplit(" n", 1)[1] for r in compute}, key=int):
        sel = [i for i, r in enumerate(compute) if r["layer"].endswith(f" n{batch}")]
        out[f"compute_bound_peak_fraction_median_batch{batch}"] = float(
            np.median([fractions[i] for i in sel])
        )
        out[f"compute_bound_bare_peak_fraction_median_batch{batch}"] = float(
            np.median([bare_fractions[i] for i in sel])
        )
    for fmt in FORMATS:
        sel = [r for r in inference if r["format"] == fmt]
        out[f"inference_speedup_geomean_{fmt}"] = geomean(
            r["times"]["eager chain"] / r["times"]["onebyone"] for r in sel
        )
    train = [r for r in rows if r["section"] == "training"]
    if train:
        t_ratio = [r["times"]["Conv1x1"] / r["times"]["nn.Conv2d"] for r in train]
        out["training_time_ratio_geomean"] = geomean(t_ratio)
        out["training_time_ratio_median"] = float(np.median(t_ratio))
        out["training_time_ratio_max"] = max(t_ratio)
        out["training_layers_over_1.05"] = sum(t > 1.05 for t in t_ratio)
    fused = [r for r in rows if r["section"] == "training epilogue"]
    if fused:
        speedups = [
            r["times"]["Conv2d -> add -> ReLU"] / r["times"]["Conv1x1(relu, residual)"]
            for r in fused
        ]
        out["training_epilogue_speedup_geomean"] = geomean(speedups)
        out["training_epilogue_speedup_min"] = min(speedups)
    return out


def print_tables(
    console: Console, rows: list[dict[str, Any]], summary: dict[str, Any], peak: float
) -> None:
    for section in ("numpy", "inference", "training", "training epilogue"):
        sel = [r for r in rows if r["section"] == section]
        if not sel:
            continue
        providers = list(dict.fromkeys(p for r in sel for p in r["times"]))
        table = Table(title=f"{section}: median ms (GFLOP/s, % of peak)", title_justify="left")
        table.add_column("layer")
        if section != "numpy":
            table.add_column("format")
        for p in providers:
            table.add_column(p, justify="right")
        for r in sel:
            cells = [r["layer"]] + ([r["format"]] if section != "numpy" else [])
            for p in providers:
                if p not in r["times"]:
                    cells.append("-")
                    continue
                t = r["times"][p]
                gf = 2 * r["macs"] / t / 1e9 * (3 if section.startswith("training") else 1)
                cells.append(f"{t * 1e3:.3f} ({gf:.0f}, {100 * gf / peak:.0f}%)")
            table.add_row(*cells)
        console.print(table)
    summary_table = Table(title="summary", title_justify="left")
    summary_table.add_column("measure")
    summary_table.add_column("value", justify="right")
    for key, value in summary.items():
        summary_table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(summary_table)


if __name__ == "__main__":
    sys.exit(main())
