"""What ``compress`` saves and what it loses.

(a) ``--part digits``: the demo's digits networks (trained as the demo trains them),
    compressed to 0.25, 0.5, 0.75 and 1.0 of their MACs; test accuracy (the held-out
    digits test set, never seen by training or fine-tuning) before and after a short
    distillation fine-tune on the training images. Writes
    ``results/compress_digits.json`` and ``results/compress_digits.png`` (also
    ``docs/compress_digits.png``).
(b) ``--part resnet50``: timm's ResNet-50 (random weights, batch-norm statistics set
    from a random batch so activations are of order one), compressed to half its MACs;
    the original and the compressed model each through ``obo.optimize`` (float32),
    then timed side by side: alternating long blocks, median and p10/p90 per block,
    three runs. Writes ``results/compress_resnet50.json``.

Run: ``PYTHONPATH=src nice -n 5 python benchmarks/bench_compress.py --part digits``
(then ``--part resnet50``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onebyone as obo
from common import RESULTS, environment, write_json
from onebyone.explain.digits import evaluate, load_digits_split, train_digits

DOCS = Path(__file__).resolve().parents[1] / "docs"  # the figure is also shown there
TARGETS = (0.25, 0.5, 0.75, 1.0)
NETWORKS = {"NiN with 1x1 reduction": 16, "NiN without reduction": None}


def digits(seeds: list[int], epochs: int, lr: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for label, reduced in NETWORKS.items():
        for seed in seeds:
            data = load_digits_split(seed=seed)
            start = time.perf_counter()
            trained = train_digits(epochs=20, seed=seed, data=data, reduced=reduced)
            train_s = time.perf_counter() - start
            model = trained.model
            acc0 = evaluate(model, data.x_test, data.y_test)[1]
            for target in TARGETS:
                small, report = obo.compress(
                    model, data.x_test[:1], target_macs=target,
                    data=(data.x_train, data.y_train), holdout=0.1, finetune_epochs=epochs,
                    lr=lr, batch_size=32, seed=seed, measure_latency=False,
                )  # fmt: skip
                split, _ = obo.compress(model, data.x_test[:1], target_macs=target,
                                        measure_latency=False)  # fmt: skip
                row = {
                    "network": label, "seed": seed, "target": target,
                    "macs_fraction": report.macs_fraction, "macs_before": report.macs_before,
                    "params_before": report.params_before, "params_after": report.params_after,
                    "test_accuracy_original": acc0,
                    "test_accuracy_split": evaluate(split, data.x_test, data.y_test)[1],
                    "test_accuracy_finetuned": evaluate(small, data.x_test, data.y_test)[1],
                    "finetune_s": report.finetune.seconds if report.finetune else 0.0,
                    "train_s": train_s,
                    "ranks": {k: list(v) for k, v in report.ranks.items()},
                }  # fmt: skip
                rows.append(row)
                print(f"{label:24s} seed {seed} target {target:4.2f}: MACs "
                      f"{row['macs_fraction']:.3f}, test accuracy {acc0:.3f} -> split "
                      f"{row['test_accuracy_split']:.3f} -> fine-tuned "
                      f"{row['test_accuracy_finetuned']:.3f}", flush=True)  # fmt: skip
    return {"rows": rows, "finetune_epochs": epochs, "lr": lr, "batch_size": 32}


def plot_digits(result: dict[str, Any], *paths: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NETWORKS), figsize=(10, 4), sharey=True)
    for ax, label in zip(axes, NETWORKS, strict=True):
        rows = [r for r in result["rows"] if r["network"] == label]
        curves = (("test_accuracy_split", "split (no fine-tune)", "o--"),
                  ("test_accuracy_finetuned", "split + distillation", "s-"))  # fmt: skip
        for key, name, style in curves:
            xs = sorted({r["target"] for r in rows})
            fr = [statistics.mean(r["macs_fraction"] for r in rows if r["target"] == t) for t in xs]
            ys = [100 * statistics.mean(r[key] for r in rows if r["target"] == t) for t in xs]
            ax.plot(fr, ys, style, label=name)
        base = 100 * statistics.mean(r["test_accuracy_original"] for r in rows)
        ax.axhline(base, color="grey", lw=1, ls=":", label="original")
        ax.set_title(label)
        ax.set_xlabel("MACs kept (fraction of the original)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy, % (mean over seeds)")
    axes[0].legend(loc="lower right")
    fig.suptitle("onebyone compress on the demo's digits networks")
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)


def calibrated_resnet50(seed: int) -> nn.Module:
    from onebyone.models.external import load_external

    torch.manual_seed(seed)
    model = load_external("timm:resnet50")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: the statistics of the batch itself
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _block(fn: Any, x: torch.Tensor, seconds: float) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 10:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=10)
    return {"median_ms": 1e3 * statistics.median(times), "p10_ms": 1e3 * q[0],
            "p90_ms": 1e3 * q[-1], "calls": len(times)}  # fmt: skip


def resnet50(engine: str, block_s: float, runs: int) -> dict[str, Any]:
    load = {"before": os.getloadavg()}
    model = calibrated_resnet50(0)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    small, report = obo.compress(model, x, target_macs=0.5, measure_latency=False)
    compress_s = time.perf_counter() - start
    print(f"compressed in {compress_s:.0f} s: MACs {report.macs_fraction:.3f}, params "
          f"{report.params_before:,} -> {report.params_after:,}, output rel error "
          f"{report.example_rel_error:.3g}", flush=True)  # fmt: skip
    fast: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for name, m in (("original", model), ("compressed", small)):
        start = time.perf_counter()
        fast[name], rep = obo.optimize(m, x, engine=engine)
        chosen[name] = f"{rep.engine}/{rep.precision}"
        print(f"{name}: optimize kept {chosen[name]} in {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
    with torch.inference_mode():
        for fn in fast.values():
            _block(fn, x, 2.0)  # warm-up
        blocks: list[dict[str, Any]] = []
        for run in range(runs):
            order = ["original", "compressed"] if run % 2 == 0 else ["compressed", "original"]
            row: dict[str, Any] = {"run": run + 1}
            for name in order:
                row[name] = _stats(_block(fast[name], x, block_s))
            row["speedup"] = row["original"]["median_ms"] / row["compressed"]["median_ms"]
            blocks.append(row)
            print(f"run {run + 1}: original {row['original']['median_ms']:.1f} ms "
                  f"[{row['original']['p10_ms']:.1f}, {row['original']['p90_ms']:.1f}], "
                  f"compressed {row['compressed']['median_ms']:.1f} ms "
                  f"[{row['compressed']['p10_ms']:.1f}, {row['compressed']['p90_ms']:.1f}]: "
                  f"{row['speedup']:.2f}x", flush=True)  # fmt: skip
    load["after"] = os.getloadavg()
    return {
        "engine_asked": engine, "engines_kept": chosen, "block_s": block_s, "runs": blocks,
        "speedup_median": statistics.median(b["speedup"] for b in blocks),
        "macs_before": report.macs_before, "macs_after": report.macs_after,
        "params_before": report.params_before, "params_after": report.params_after,
        "example_rel_error": report.example_rel_error, "compress_s": compress_s,
        "load_average": load,
        "layers": [{"name": c.name, "kind": c.kind, "ranks": list(c.ranks),
                    "energy_kept": c.energy_kept} for c in report.layers],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("digits", "resnet50"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30, help="fine-tune epochs (digits)")
    parser.add_argument("--lr", type=float, default=3e-3, help="fine-tune learning rate")
    parser.add_argument("--engine", default="auto", help="optimize's engine (resnet50)")
    parser.add_argument("--block-s", type=float, default=10.0, help="seconds per timed block")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (digits: 1)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the digits figure")
    args = parser.parse_args()
    if args.threads or args.part == "digits":  # the digits networks are fastest on one
        torch.set_num_threads(args.threads or 1)
    env = environment()
    if args.part == "digits" and args.plot_only:
        saved = json.loads((RESULTS / "compress_digits.json").read_text())
        plot_digits(saved, RESULTS / "compress_digits.png", DOCS / "compress_digits.png")
        return
    if args.part == "digits":
        result = digits(args.seeds, args.epochs, args.lr)
        plot_digits(result, RESULTS / "compress_digits.png", DOCS / "compress_digits.png")
        path = write_json("compress_digits", {"environment": env, **result})
    else:
        result = resnet50(args.engine, args.block_s, args.runs)
        path = write_json("compress_resnet50", {"environment": env, **result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
