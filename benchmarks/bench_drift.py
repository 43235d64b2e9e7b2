"""Whether a kept module slows the longer it runs, or the machine drifts between blocks.

``optimize`` times each candidate in a short block (``timing.time_alone``: 0.3 s of
warm-up, 1 s timed); ``bench_models.py`` re-times the kept module in longer blocks.
When the two disagree, either an engine runs slower the longer it runs without a
pause (a CPU's boost decaying, a thread pool's behaviour), or the machine's speed
moves between blocks seconds apart (other virtual machines on the same host). This
times one kept module (``--model``, a timm name, calibrated norms; ``--engine``) in
``--rounds`` rounds of one long block (``--block`` seconds, its median per 0.5 s of
calls) followed by a pause of 2 s and one short block of 1 s. A decay shows as
medians rising within each long block and the short block beating them; drift as
blocks differing from each other with flat medians inside.

Writes ``benchmarks/results/drift.json``. Run:
``PYTHONPATH=src python benchmarks/bench_drift.py --model mobilenetv3_large_100``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import onebyone as obo
from common import calibrate_norms, environment, write_json
from onebyone.deploy import timing


def _calls(call: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call of ``call``, called without a pause for ``seconds``."""
    clock, times = time.perf_counter, []
    start = clock()
    while clock() - start < seconds:
        t = clock()
        call()
        times.append(clock() - t)
    return times


def _per_window(times: list[float], window: float = 0.5) -> list[float]:
    """Median ms of each consecutive ``window`` seconds of calls."""
    medians, chunk, spent = [], [], 0.0
    for t in times:
        chunk.append(t)
        spent += t
        if spent >= window:
            medians.append(statistics.median(chunk) * 1e3)
            chunk, spent = [], 0.0
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mobilenetv3_large_100", help="a timm model name")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--block", type=float, default=6.0, help="seconds of the long block")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import timm

    x = torch.randn(args.batch, 3, 224, 224)
    model = timm.create_model(args.model, pretrained=False)
    model = calibrate_norms(model, torch.randn(8, 3, 224, 224)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast, _ = obo.optimize(model, x, engine=args.engine, measure=False)
    rounds = []
    with torch.inference_mode():
        call = lambda: fast(x)  # noqa: E731
        _calls(call, 0.3)  # warm-up
        for _ in range(args.rounds):
            windows = _per_window(_calls(call, args.block))
            time.sleep(2.0)
            short = statistics.median(_calls(call, 1.0)) * 1e3
            rounds.append({"long_block_ms_per_window": windows, "short_block_ms": short})
            print(f"{args.block:.0f} s block, median ms per 0.5 s: "
                  + " ".join(f"{m:.2f}" for m in windows)
                  + f" | after a 2 s pause, 1 s block: {short:.2f}", flush=True)  # fmt: skip
    payload = {
        "environment": environment(),
        "load": str(timing.machine_load()),
        "model": args.model, "batch": args.batch, "engine": args.engine,
        "rounds": rounds,
    }  # fmt: skip
    print(f"wrote {write_json('drift', payload)}")


if __name__ == "__main__":
    main()
