"""What a call of ``onebyone.conv1x1`` costs above its kernel, eager and registered.

A tiny product (1x4x2x2 -> 8 filters, residual + ReLU, inference), so the time is
almost all call overhead. Providers, interleaved in one run:

- ``convolution``: ``torch.convolution`` alone;
- ``kernel``: the kernel ``conv1x1`` picks for this call (``routing.choose``), called
  directly with its arguments already checked;
- ``conv1x1``: the public op on real tensors (its direct eager path); its cost above
  ``kernel`` is the checks and the dispatch;
- ``registered``: ``torch.ops.onebyone.conv1x1`` called through the dispatcher, as
  traced and exported graphs run it;
- ``F.conv2d + add + relu``: what a user writes without onebyone.

Writes ``benchmarks/results/dispatch.json``. Run: ``python benchmarks/bench_dispatch.py``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import onebyone as obo
from common import environment, interleaved_medians, write_json
from onebyone import geometry
from onebyone.kernels import routing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="calls per timed round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, w, b = torch.randn(1, 4, 2, 2), torch.randn(8, 4), torch.randn(8)
    r = torch.randn(1, 8, 2, 2)
    w4 = w.reshape(8, 4, 1, 1)

    def repeat(fn):  # one timed call = `rounds` calls, so timer overhead vanishes
        def run() -> None:
            for _ in range(args.rounds):
                fn()

        return run

    geo = geometry.geometry(x.shape, w.shape, b.shape, stride=(1, 1), groups=1)
    kernel = routing.choose("auto", x, False, geo)
    providers = {
        "kernel": repeat(
            lambda: kernel.conv1x1(x, w, b, stride=(1, 1), groups=1, activation="relu", residual=r)
        ),
        "convolution": repeat(
            lambda: torch.convolution(x, w4, b, (1, 1), (0, 0), (1, 1), False, (0, 0), 1)
        ),
        "conv1x1": repeat(lambda: obo.conv1x1(x, w, b, activation="relu", residual=r)),
        "registered": repeat(lambda: torch.ops.onebyone.conv1x1(x, w, b, [1, 1], 1, "relu", r)),
        "F.conv2d + add + relu": repeat(lambda: torch.relu(F.conv2d(x, w4, b) + r)),
    }
    with torch.inference_mode():
        medians = interleaved_medians(providers, min_rounds=9, budget_s=3.0)
    per_call_us = {name: s / args.rounds * 1e6 for name, s in medians.items()}
    base = per_call_us["kernel"]
    print(f"kernel chosen: {kernel.__name__}")
    print(f"{'provider':<24}{'us per call':>12}{'above the kernel':>20}")
    for name, us in per_call_us.items():
        print(f"{name:<24}{us:>12.2f}{us - base:>20.2f}")
    write_json(
        "dispatch",
        {"environment": environment(), "per_call_us": per_call_us, "rounds": args.rounds},
    )


if __name__ == "__main__":
    main()
