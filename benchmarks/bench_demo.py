"""How well and how fast the demo's network learns, and how long `onebyone demo` takes.

Trains the demo's Network-in-Network on scikit-learn's digits for several seeds,
with and without its 1x1 reduction, and reports the held-out test accuracy of
each; then runs the full `onebyone demo` once as a subprocess and times it.
Accuracy is a property of the seed, not of the machine; the times depend on the
machine and on its load, which is recorded next to them.

    .venv/bin/python benchmarks/bench_demo.py [--seeds 5] [--epochs 20] [--no-demo]

Writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from onebyone.explain.digits import load_digits_split, train_digits

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20, the demo's)")
    parser.add_argument("--no-demo", action="store_true", help="skip timing the full demo")
    args = parser.parse_args()

    runs = []
    print(f"{'seed':>4} {'reduction':>10} {'test accuracy':>14} {'train s':>8}")
    for seed in range(args.seeds):
        data = load_digits_split(seed=seed)
        for reduced in (16, None):
            result = train_digits(epochs=args.epochs, seed=seed, data=data, reduced=reduced)
            runs.append(
                {
                    "seed": seed,
                    "reduced": reduced,
                    "test_accuracy": result.test_accuracy,
                    "train_seconds": result.seconds,
                }
            )
            print(f"{seed:>4} {reduced!s:>10} {result.test_accuracy:>14.2%} {result.seconds:>8.1f}")

    summary = {}
    for reduced in (16, None):
        accs = [r["test_accuracy"] for r in runs if r["reduced"] == reduced]
        summary[str(reduced)] = {
            "min": min(accs),
            "median": statistics.median(accs),
            "max": max(accs),
        }
        print(
            f"reduction {reduced!s:>4}: test accuracy min {min(accs):.2%}, "
            f"median {statistics.median(accs):.2%}, max {max(accs):.2%}"
        )

    demo = None
    if not args.no_demo:
        exe = Path(sys.executable).with_name("onebyone")
        with tempfile.TemporaryDirectory() as out:
            load_before = os.getloadavg()
            start = time.perf_counter()
            proc = subprocess.run(
                [str(exe), "demo", "--out", out], capture_output=True, text=True, check=True
            )
            wall = time.perf_counter() - start
            written = json.loads((Path(out) / "summary.json").read_text())
        demo = {
            "wall_seconds": wall,
            "test_accuracy": written["test_accuracy"],
            "load_average_before": load_before,
            "last_line": proc.stdout.strip().splitlines()[-1],
        }
        print(
            f"onebyone demo: {wall:.1f} s wall, test accuracy {written['test_accuracy']:.2%} "
            f"(load average before: {load_before[0]:.1f})"
        )

    payload = {
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "epochs": args.epochs,
        "runs": runs,
        "accuracy": summary,
        "demo": demo,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "demo.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
