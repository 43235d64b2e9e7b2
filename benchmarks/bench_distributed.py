"""One process against data-parallel processes: the demo's training step and accuracy.

Trains the demo's Network-in-Network on scikit-learn's digits (global batch 64,
20 epochs, seed 0) alone with ``train_digits`` and on ``--nproc`` local processes
with ``onebyone.train.launch`` (torchrun, gloo), alternating the two for
``--rounds`` rounds so a busy moment on the machine hits both alike. Reported per
provider: the median step time (forward, backward, the gradient all-reduce when
data parallel, optimizer step; over every step's epoch medians), the training
wall time, the whole wall time (for the processes: start-up, rendezvous and
shut-down included) and the held-out test accuracy. The load average is recorded
beside the times: on a shared 2-core machine they are noisy.

    .venv/bin/python benchmarks/bench_distributed.py [--nproc 2] [--epochs 20] [--rounds 2]

Writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_json
from onebyone.explain.digits import TrainingResult, train_digits
from onebyone.train import launch


def _row(result: TrainingResult, wall: float) -> dict[str, float]:
    return {
        "step_ms": 1e3 * statistics.median(e.step_seconds for e in result.history),
        "training_s": result.seconds,
        "wall_s": wall,
        "test_accuracy": result.test_accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="data-parallel processes")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20, the demo's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    args = parser.parse_args()

    providers = {
        "1 process": lambda: train_digits(epochs=args.epochs),
        f"{args.nproc} processes": lambda: launch(nproc_per_node=args.nproc, epochs=args.epochs),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in providers}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, train in providers.items():
            start = time.perf_counter()
            result = train()
            runs[name].append(_row(result, time.perf_counter() - start))
            loads.append(os.getloadavg()[0])
    print(f"{'provider':>12} {'step ms':>8} {'training s':>11} {'wall s':>7} {'test acc':>9}")
    summary = {}
    for name, rows in runs.items():
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        summary[name] = {"median": median, "runs": rows}
        print(
            f"{name:>12} {median['step_ms']:>8.1f} {median['training_s']:>11.1f} "
            f"{median['wall_s']:>7.1f} {median['test_accuracy']:>9.2%}"
        )
    one, many = (summary[name]["median"]["step_ms"] for name in providers)
    print(f"step time, {args.nproc} processes / 1: {many / one:.2f}; load average {loads}")
    write_json(
        "distributed",
        {
            "environment": environment(),
            "epochs": args.epochs,
            "global_batch": 64,
            "nproc": args.nproc,
            "load_average": loads,
            "providers": summary,
        },
    )


if __name__ == "__main__":
    main()
