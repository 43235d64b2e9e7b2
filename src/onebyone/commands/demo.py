"""``onebyone demo``: a guided tour computed by the library."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import onebyone as obo
from onebyone.explain import worked_example


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="a tour of 1x1 convolutions, computed by the library")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run=run)


def _worked_example(console: Console) -> None:
    ex = worked_example()
    console.rule("[bold]1. The seed's worked example: three 6x6 maps, a 1x1 kernel of depth 1")
    table = Table(title="output T = 0.1*map1 + 0.2*map2 + 0.4*map3 (computed)", show_header=False)
    for r in range(ex.output.shape[0]):
        cells = []
        for c in range(ex.output.shape[1]):
            text = f"{ex.output[r, c]:.1f}"
            cells.append(f"[bold red]{text}[/]" if (r, c) in ex.mismatches else text)
        table.add_row(*cells)
    console.print(table)
    for r, c in [(0, 0), (1, 0)]:
        console.print(f"  T[{r},{c}] = {ex.spelled_sum(r, c)}")
    for r, c in ex.mismatches:
        console.print(
            f"  [red]The seed prints T[{r},{c}] = {ex.printed[r, c]:g}; "
            f"the sum is {ex.spelled_sum(r, c)}.[/]"
        )
    console.print("  (The seed also calls the output 5x5; a 1x1 convolution keeps 6x6.)")


def _keras_examples(console: Console, seed: int) -> None:
    console.rule("[bold]2. The seeds' shapes, computed by onebyone.conv1x1")
    gen = torch.Generator().manual_seed(seed)
    table = Table("example", "input", "weight", "output", "parameters", "MACs")
    cases = [
        ("reduction 50 -> 20 at 600x600 (seed 000)", (1, 50, 600, 600), 20),
        ("reduction 64 -> 32 at 28x28 (seed 001)", (1, 64, 28, 28), 32),
        ("fusion of 32 + 64 maps -> 64 (seed 001)", (1, 96, 28, 28), 64),
    ]
    with torch.inference_mode():
        for name, shape, k in cases:
            x = torch.randn(shape, generator=gen)
            w = torch.randn(k, shape[1], generator=gen) / np.sqrt(shape[1])
            y = obo.conv1x1(x, w, torch.zeros(k), activation="relu")
            params = w.numel() + k
            macs = k * shape[1] * y.shape[2] * y.shape[3]
            table.add_row(name, str(tuple(x.shape)), str(tuple(w.shape)), str(tuple(y.shape)),
                          f"{params:,}", f"{macs:,}")  # fmt: skip
    console.print(table)


def run(args: argparse.Namespace) -> int:
    console = Console()
    _worked_example(console)
    _keras_examples(console, args.seed)
    return 0
