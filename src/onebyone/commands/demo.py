"""``onebyone demo``: a guided tour computed by the library.

The tour: the seed's worked example (short form); a Network-in-Network built
around 1x1 convolutions trained on scikit-learn's real 8x8 digits; its cost
profile against the same network without its 1x1 reduction; ``optimize`` on
it, with the verified error and the speed-up; figures and ``summary.json``
saved to ``--out`` (created if missing; files of the same names in it are kept
unless ``--force``), checked before the tour starts and written once it has finished
(``onebyone._files``' rule). Training is deterministic under ``--seed``;
``--quick`` runs in a few seconds; ``--distributed`` trains the networks
data-parallel on ``--nproc-per-node`` local processes through torchrun
(``onebyone.train.launch``), with the same seed and global batches. The tour
needs the ``explain`` extra (scikit-learn's digits, matplotlib's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import onebyone as obo
from onebyone import _checks, _files, _optional
from onebyone.commands import SUMMARIES
from onebyone.commands._terminal import fit, table_columns
from onebyone.commands.explain import render_worked_example
from onebyone.deploy import optimize
from onebyone.explain import worked_example
from onebyone.explain.digits import (
    DigitsData,
    EpochStats,
    TrainingResult,
    load_digits_split,
    train_digits,
)
from onebyone.train import launch, process_count
from onebyone.transforms.verify import verify as verify_model

EPOCHS = 20
"""Training epochs of the full tour."""
QUICK_EPOCHS = 3
"""``--quick`` trains this few epochs: it checks the tour, not the accuracy."""
TARGET_ACCURACY = 0.97
SUMMARY_FILE = "summary.json"
FIGURE_FILES = (
    "worked-example.png",
    "training-curves.png",
    "feature-maps-2-3.png",
    "learned-1x1-weights.png",
    "cost-breakdown.png",
)
"""The files the tour writes into ``--out``."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help=SUMMARIES["demo"],
        description="A tour: the seed's worked example, a 1x1 network trained on real "
        "handwritten digits, its cost profile, optimize with verified outputs, and figures.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (default {EPOCHS}; {QUICK_EPOCHS} with --quick)",
    )
    p.add_argument(
        "--out",
        default="onebyone-demo",
        help="folder for the figures and summary.json, created if missing (default "
        "./onebyone-demo/)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the tour's files in --out (without it they are kept and the tour "
        "does not start)",
    )
    p.add_argument("--no-figures", action="store_true", help="do not draw or save figures")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="train data-parallel on --nproc-per-node local processes (torchrun, gloo on "
        "the CPU): same seed and global batch as one process",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=2,
        help="processes for --distributed (default 2, at least 2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a few seconds: {QUICK_EPOCHS} epochs unless --epochs is given",
    )
    p.set_defaults(run=run)


def _worked_example(console: Console) -> None:
    console.rule("[bold]1. The seed's worked example: three 6x6 maps, a 1x1 kernel of depth 1")
    render_worked_example(console, worked_example(), short=True)
    console.print("  More: onebyone explain worked-example (and the other topics).")


def _keras_examples(console: Console, seed: int) -> None:
    console.rule("[bold]2. The seeds' shapes, computed by onebyone.conv1x1")
    gen = torch.Generator().manual_seed(seed)
    rows = []
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
            rows.append([name, str(tuple(x.shape)), str(tuple(w.shape)), str(tuple(y.shape)),
                         f"{params:,}", f"{macs:,}"])  # fmt: skip
    headers = ("example", "input", "weight", "output", "parameters", "MACs")
    _print(console, fit(table_columns(headers), rows, console.width))


def _seed_blocks(console: Console, seed: int) -> None:
    console.rule("[bold]2b. The seed's three Keras examples, built from onebyone.nn blocks")
    with torch.random.fork_rng():  # seeded weights and inputs; the global RNG is left as it was
        torch.manual_seed(seed)
        x32, x64 = torch.randn(1, 32, 28, 28), torch.randn(1, 64, 28, 28)
        reduce = obo.nn.Conv1x1(64, 32, activation="relu")
        fuse = obo.nn.ChannelFusion([32, 64], 64, activation="relu")
        bottleneck = obo.nn.Bottleneck(64, 32, 64, norm=None)

    def keras_conv2d(c: int, k: int, size: int = 1) -> int:  # Conv2D(k, size) with a bias
        return (size * size * c + 1) * k

    bottleneck_keras = keras_conv2d(64, 32) + keras_conv2d(32, 32, 3) + keras_conv2d(32, 64)
    cases: list[tuple[str, str, torch.nn.Module, tuple[torch.Tensor, ...], int]] = [
        (
            "reduction 64 -> 32",
            "Conv1x1(64, 32, activation='relu')",
            reduce,
            (x64,),
            keras_conv2d(64, 32),
        ),
        (
            "fusion of 32 + 64 maps -> 64",
            "ChannelFusion([32, 64], 64, activation='relu')",
            fuse,
            (x32, x64),
            keras_conv2d(96, 64),
        ),
        (
            "bottleneck 64 -> 32 -> 32 -> 64",
            "Bottleneck(64, 32, 64, norm=None)",
            bottleneck,
            (x64,),
            bottleneck_keras,
        ),
    ]
    rows = []
    with torch.inference_mode():
        for name, code, block, xs, keras in cases:
            y = block(*xs)
            params = sum(p.numel() for p in block.parameters())
            rows.append([name, code, " + ".join(str(tuple(x.shape)) for x in xs),
                         str(tuple(y.shape)), f"{params:,}", f"{keras:,}"])  # fmt: skip
    headers = ("seed example", "onebyone.nn block", "input", "output", "parameters",
               "the seed's Keras layers")  # fmt: skip
    _print(console, fit(table_columns(headers, (0, 1, 2)), rows, console.width))
    console.print("  Same shapes and parameters as the seed's Keras layers; the Bottleneck also "
                  "adds ResNet's identity shortcut (free) inside its last 1x1.")  # fmt: skip


def _print(console: Console, tables: list[Table]) -> None:
    for table in tables:
        console.print(table)


def _epoch_fields(stats: EpochStats) -> dict[str, Any]:
    """The progress bar's columns at the end of an epoch."""
    return {"loss": stats.train_loss, "train": stats.train_accuracy,
            "test": f"{stats.test_accuracy:6.1%}"}  # fmt: skip


def _progress_columns(width: int) -> list[ProgressColumn]:
    """The training bar's columns: fewer on a narrow terminal, so no number is cut."""
    fields = (
        "loss {task.fields[loss]:.3f}  train {task.fields[train]:6.1%}  test {task.fields[test]}"
    )
    if width >= 110:
        return [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                MofNCompleteColumn(), TextColumn(fields), TimeElapsedColumn()]  # fmt: skip
    compact = TextColumn(fields.replace("  ", " ").replace(":6.1%", ":.1%"))
    if width >= 76:
        return [TextColumn("[bold]{task.description}"), MofNCompleteColumn(), compact,
                TimeElapsedColumn()]  # fmt: skip
    return [TextColumn("[bold]{task.description}"), compact]


def _train(
    console: Console,
    *,
    epochs: int,
    seed: int,
    data: DigitsData,
    reduced: int | None,
    label: str,
    processes: int | None = None,
) -> TrainingResult:
    """Train with one progress bar per epoch showing the loss and the accuracies
    (one bar over the epochs when ``processes`` train it data-parallel)."""
    progress = Progress(*_progress_columns(console.width), console=console)
    if processes is not None:
        job = progress.add_task(
            f"{label} on {processes} processes, epochs",
            total=epochs,
            loss=float("nan"),
            train=0.0,
            test="   ...",
        )

        def epoch_done(stats: EpochStats) -> None:
            progress.update(job, completed=stats.epoch, **_epoch_fields(stats))

        with progress:
            return launch(
                nproc_per_node=processes,
                epochs=epochs,
                seed=seed,
                reduced=reduced,
                on_epoch=epoch_done,
            )
    tasks: dict[int, Any] = {}

    def on_batch(epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        if epoch not in tasks:
            tasks[epoch] = progress.add_task(
                f"{label} epoch {epoch:2d}/{epochs}",
                total=batches,
                loss=loss,
                train=acc,
                test="   ...",
            )
        progress.update(tasks[epoch], completed=batch, loss=loss, train=acc)

    def on_epoch(stats: EpochStats) -> None:
        progress.update(tasks[stats.epoch], **_epoch_fields(stats))

    with progress:
        return train_digits(
            epochs=epochs,
            seed=seed,
            data=data,
            reduced=reduced,
            on_batch=on_batch,
            on_epoch=on_epoch,
        )


def _processes(args: argparse.Namespace) -> int | None:
    """Processes of a ``--distributed`` training, ``None`` for one process."""
    return process_count(args.nproc_per_node) if args.distributed else None


def _training(console: Console, args: argparse.Namespace, epochs: int) -> TrainingResult:
    console.rule("[bold]3. A Network-in-Network trained on real handwritten digits")
    data = load_digits_split(seed=args.seed)
    console.print(
        f"  scikit-learn's bundled digits: {len(data.x_train) + len(data.x_test):,} real 8x8 "
        f"images of 0-9; {len(data.x_train):,} for training, {len(data.x_test):,} held out "
        "(stratified: every digit in the same proportion). Network: two mlpconv layers (3x3 "
        "conv, then 1x1 convs), a 1x1 reduction between them, no fully connected layer: the "
        "last 1x1 conv gives one map per digit, averaged into its score."
    )
    processes = _processes(args)
    if processes is not None:
        console.print(
            f"  Data-parallel on {processes} processes: torchrun (torch.distributed.run) starts "
            f"`python -m onebyone.train` {processes} times ("
            f"{'NCCL' if torch.cuda.is_available() else 'gloo'}); each takes 1/{processes} of "
            "every global batch of 64 and DistributedDataParallel averages the gradients. Same "
            "seed, batches and schedule as one process; batch norm sees each process's share."
        )
    result = _train(
        console,
        epochs=epochs,
        seed=args.seed,
        data=data,
        reduced=16,
        label="NiN",
        processes=processes,
    )
    acc = result.test_accuracy
    n_test = len(data.x_test)
    verdict = "meets" if acc >= TARGET_ACCURACY else "is below"
    console.print(
        f"  Held-out test accuracy: [bold]{acc:.2%}[/] ({round(acc * n_test)}/{n_test}) after "
        f"{epochs} epochs in {result.seconds:.1f} s; {verdict} the {TARGET_ACCURACY:.0%} target"
        + (" (--quick trains too little to reach it)." if args.quick else ".")
    )
    with torch.inference_mode():
        predicted = result.model(data.x_test).argmax(dim=1)
    for a, b in ((2, 3), (3, 2)):
        wrong = int(((data.y_test == a) & (predicted == b)).sum())
        total = int((data.y_test == a).sum())
        console.print(f"  test images of a {a} called a {b}: {wrong} of {total}")
    return result


def _cost_rows(report: Any) -> list[tuple[str, str, int, int]]:
    kinds = {"pointwise": "1x1", "conv": "3x3"}
    return [
        (layer.name, kinds.get(layer.category, "other"), layer.cost.params, layer.cost.macs)
        for layer in report.layers
        if layer.cost.params or layer.cost.macs
    ]


def profile_tables(report: Any, width: int) -> list[Table]:
    """The layers of the DigitsNiN's profile ``report`` that hold parameters or MACs."""
    total = report.total
    rows = [
        [
            layer.name,
            layer.category,
            "x".join(map(str, layer.output_shape[1:])),
            f"{layer.cost.params:,}",
            f"{layer.cost.macs:,}",
            f"{layer.cost.macs / total.macs:.1%}",
        ]
        for layer in report.layers
        if layer.cost.params or layer.cost.macs
    ]
    rows.append(["[bold]total", "", "", f"[bold]{total.params:,}", f"[bold]{total.macs:,}", ""])
    side = "x".join(map(str, report.inputs[0][2:]))
    headers = ("layer", "kind", "output", "parameters", "MACs", "share of MACs")
    return fit(table_columns(headers, (0, 1)), rows, width, title=f"DigitsNiN on one {side} image")


def _profile(
    console: Console, args: argparse.Namespace, result: TrainingResult, epochs: int
) -> dict[str, Any]:
    console.rule("[bold]4. What it costs: onebyone.profile, with and without the 1x1 reduction")
    shape = (1, 1, 8, 8)
    report = obo.profile(result.model, shape)
    total = report.total
    _print(console, profile_tables(report, console.width))
    pointwise = report.by_category()["pointwise"]
    console.print(
        f"  1x1 layers: {pointwise.macs / total.macs:.0%} of the MACs and "
        f"{pointwise.params / total.params:.0%} of the parameters. "
        f"{report.convention}"
    )
    console.print(
        "  The same network without the 1x1 reduction (32 maps go straight into "
        "the second 3x3 conv), trained the same way:"
    )
    variant = _train(
        console,
        epochs=epochs,
        seed=args.seed,
        data=result.data,
        reduced=None,
        label="no reduction",
        processes=_processes(args),
    )
    other = obo.profile(variant.model, shape)
    rows = [
        [label, f"{a:,}", f"{b:,}", f"{1 - a / b:.0%} fewer"]
        for label, a, b in [
            ("parameters", total.params, other.total.params),
            ("MACs per image", total.macs, other.total.macs),
        ]
    ]
    third = "mlpconv2.0"
    macs_3x3 = [
        sum(layer.cost.macs for layer in r.layers if layer.name == third) for r in (report, other)
    ]
    rows.append([
        f"MACs of the 3x3 conv ({third})",
        f"{macs_3x3[0]:,}",
        f"{macs_3x3[1]:,}",
        f"{1 - macs_3x3[0] / macs_3x3[1]:.0%} fewer",
    ])  # fmt: skip
    rows.append([
        "held-out test accuracy",
        f"{result.test_accuracy:.2%}",
        f"{variant.test_accuracy:.2%}",
        f"{100 * (result.test_accuracy - variant.test_accuracy):+.2f} points",
    ])  # fmt: skip
    headers = ("", "with the 1x1 reduction", "without", "the reduction buys")
    _print(console, fit(table_columns(headers), rows, console.width))
    return {
        "reports": {"with reduction": report, "without reduction": other},
        "variant": variant,
    }


BUILT_IN_INPUT = {"nin": 32}
"""Input size of the built-in models in the "why 1x1" table (others: 224x224)."""
QUICK_SKIPS = ("resnet101", "resnet152")
"""Deeper variants of resnet50 left out of that table under ``--quick``."""


# GoogLeNet's inception (3a), 5x5 branch as in the paper: 192 maps of 28x28, 16 after the 1x1
_INCEPTION_3A = (192, 16, 32, 28)


def design_tables(width: int) -> list[Table]:
    """A direct 5x5 convolution against a 1x1 reduction then the 5x5 (``conv_cost``)."""
    c, r, k, size = _INCEPTION_3A
    direct = obo.conv_cost(c, k, 5, input_size=size, padding=2)
    reduce = obo.conv_cost(c, r, 1, input_size=size)
    then = obo.conv_cost(r, k, 5, input_size=size, padding=2)
    rows = [
        [label, f"{cost.params:,}", f"{cost.macs:,}", f"{cost.flops:,}", f"{cost.bytes_moved:,}"]
        for label, cost in [
            (f"direct 5x5, {c} -> {k}", direct),
            (f"  1x1 reduction, {c} -> {r}", reduce),
            (f"  then 5x5, {r} -> {k}", then),
            ("1x1 reduction + 5x5", reduce + then),
        ]
    ]
    headers = ("design", "parameters", "MACs", "FLOPs", "bytes moved")
    title = f"{c} maps of {size}x{size} -> {k} maps, float32"
    return fit(table_columns(headers), rows, width, title=title)


def model_tables(rows: list[list[str]], width: int, caption: str | None = None) -> list[Table]:
    """The built-in models' sizes: rows of model, input, parameters, MACs and 1x1 shares."""
    headers = ("model", "input", "parameters", "MACs", "1x1 share of MACs",
               "1x1 share of parameters")  # fmt: skip
    title = "the built-in models, counted by onebyone.profile"
    return fit(table_columns(headers), rows, width, title=title, caption=caption)


def _why_one_by_one(console: Console, quick: bool) -> None:
    console.rule("[bold]5. Why 1x1: a 1x1 reduction before a 5x5 convolution (onebyone.conv_cost)")
    c, r, k, size = _INCEPTION_3A
    direct = obo.conv_cost(c, k, 5, input_size=size, padding=2)
    both = obo.conv_cost(c, r, 1, input_size=size) + obo.conv_cost(
        r, k, 5, input_size=size, padding=2
    )
    _print(console, design_tables(console.width))
    console.print(f"  The reduction cuts MACs {direct.macs / both.macs:.1f}x and parameters "
                  f"{direct.params / both.params:.1f}x. {obo.CONVENTION}")  # fmt: skip

    names = [n for n in obo.list_models() if not (quick and n in QUICK_SKIPS)]
    left_out = sorted(set(obo.list_models()) - set(names))
    caption = f"--quick leaves out {', '.join(left_out)}" if left_out else None
    rows = []
    with console.status("profiling the built-in models"):
        for name in names:
            side = BUILT_IN_INPUT.get(name, 224)
            report = obo.profile(obo.create_model(name), (1, 3, side, side))
            total, pointwise = report.total, report.by_category()["pointwise"]
            rows.append([name, f"{side}x{side}", f"{total.params:,}", f"{total.macs:,}",
                         f"{pointwise.macs / total.macs:.0%}",
                         f"{pointwise.params / total.params:.0%}"])  # fmt: skip
    _print(console, model_tables(rows, console.width, caption))


def _optimize(console: Console, result: TrainingResult) -> dict[str, Any]:
    console.rule("[bold]6. onebyone.optimize: the same network, faster, outputs verified")
    x = result.data.x_test  # (450, 1, 8, 8): the whole held-out set as one batch
    fast, report = optimize(result.model, x)
    with torch.inference_mode():
        same = bool(torch.equal(fast(x).argmax(dim=1), result.model(x).argmax(dim=1)))
    speedup = report.speedup
    if speedup is None:
        raise RuntimeError("onebyone.optimize measured no timing")
    # measured here on the returned model, whichever one optimize kept (on some CPUs no
    # engine beats the original and a frozen copy of it is returned)
    verified = verify_model(result.model, fast, x, rtol=report.tolerance)
    row = ["latency (median)", f"{report.latency_before_ms:.2f} ms",
           f"{report.latency_after_ms:.2f} ms"]  # fmt: skip
    title = f"one batch of all {len(x)} test images"
    _print(console, fit(table_columns(("", "before", "after")), [row], console.width, title=title))
    passes = ", ".join(f"{name} {count}" for name, count in report.pass_counts().items())
    console.print(
        f"  captured by {report.capture}; passes: {passes}; engine: {report.engine} "
        "(chosen by measuring every installed engine side by side)"
    )
    console.print(
        f"  verified on all {len(x)} test images: max |error| {verified.max_abs:.2e}, "
        f"relative {verified.max_rel:.2e} (tolerance rtol {verified.rtol:g}, atol "
        f"{verified.atol:g}); predictions identical: {'yes' if same else 'NO'}. "
        f"Speed-up [bold]{speedup:.1f}x[/]."
    )
    for note in report.notes:
        console.print(f"  note: {note}")
    load = os.getloadavg()[0]
    console.print(
        f"  Timed as a user would run it: default threads ({torch.get_num_threads()} for "
        f"PyTorch). Load average {load:.1f} on {os.cpu_count()} cores"
        + (": other work shares the cores, so the times are noisy." if load > 1 else ".")
    )
    return {
        "engine": report.engine,
        "max_abs_error": verified.max_abs,
        "max_rel_error": verified.max_rel,
        "latency_before_ms": report.latency_before_ms,
        "latency_after_ms": report.latency_after_ms,
        "speedup": speedup,
        "predictions_identical": same,
        "load_average": load,
    }


def _figures(
    console: Console, out: Path, result: TrainingResult, costs: dict[str, Any]
) -> dict[str, Any]:
    """Draw the tour's figures: ``{file name: matplotlib Figure}`` (saved at the end)."""
    from onebyone.explain import figures
    from onebyone.explain.digits import digit_feature_maps

    console.rule(f"[bold]7. Figures in {out.resolve()}")
    maps = digit_feature_maps(result)
    layers = result.model.pointwise_layers()
    learned = {
        "mlpconv1.3 (first 1x1 layer)": layers["mlpconv1.3"].weight.detach().numpy(),
        "mlpconv2.4 (1x1 layer giving the class maps)": layers["mlpconv2.4"]
        .weight.detach()
        .numpy(),
    }
    drawn = {
        "worked-example.png": figures.worked_example_figure(worked_example()),
        "training-curves.png": figures.training_curves_figure(result.history, TARGET_ACCURACY),
        "feature-maps-2-3.png": figures.feature_maps_figure(
            maps.images,
            maps.before,
            maps.after,
            maps.channels_before,
            maps.channels_after,
            maps.layer,
        ),
        "learned-1x1-weights.png": figures.learned_weights_figure(
            learned, {name: "class map (digit)" for name in learned if "class" in name}
        ),
        "cost-breakdown.png": figures.cost_breakdown_figure(
            {name: _cost_rows(r) for name, r in costs["reports"].items()}
        ),
    }
    return drawn


def _summary(
    args: argparse.Namespace,
    epochs: int,
    result: TrainingResult,
    costs: dict[str, Any],
    optimized: dict[str, Any],
    seconds: float,
) -> str:
    summary = {
        "seed": args.seed,
        "epochs": epochs,
        "quick": bool(args.quick),
        "train_images": len(result.data.x_train),
        "test_images": len(result.data.x_test),
        "processes": _processes(args) or 1,
        "test_accuracy": result.test_accuracy,
        "training_seconds": result.seconds,
        "history": [vars(e) for e in result.history],
        "without_reduction_test_accuracy": costs["variant"].test_accuracy,
        "cost": {
            name: {"params": r.total.params, "macs": r.total.macs}
            for name, r in costs["reports"].items()
        },
        "optimize": optimized,
        "seconds": seconds,
    }
    return json.dumps(summary, indent=2) + "\n"


def _save(console: Console, target: _files.Output, drawn: dict[str, Any], summary: str) -> None:
    """Write the figures and ``summary.json`` into ``target`` at once; print where."""
    from onebyone.explain.figures import save_figure

    with _files.staged([target]) as (folder,):
        for name, fig in drawn.items():
            save_figure(fig, folder / name)
        (folder / SUMMARY_FILE).write_text(summary)
    for name in drawn:
        console.print(f"  {target.path / name}", highlight=False, soft_wrap=True)
    console.print(f"  summary: {target.path / SUMMARY_FILE}", highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    console = Console()
    epochs = _checks.positive_int(
        "epochs",
        args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else EPOCHS),
    )
    _processes(args)  # a bad --nproc-per-node stops the tour before it starts
    names = [SUMMARY_FILE, *([] if args.no_figures else FIGURE_FILES)]
    target = _files.output_folder("--out", args.out, names, force=args.force)  # before the tour
    _optional.require("sklearn.datasets", "onebyone demo (its digits data set)")
    if not args.no_figures:
        _optional.require("matplotlib.figure", "onebyone demo's figures (or --no-figures)")
    _worked_example(console)
    _keras_examples(console, args.seed)
    _seed_blocks(console, args.seed)
    result = _training(console, args, epochs)
    costs = _profile(console, args, result, epochs)
    _why_one_by_one(console, args.quick)
    optimized = _optimize(console, result)
    drawn = {} if args.no_figures else _figures(console, target.path, result, costs)
    seconds = time.perf_counter() - start
    _save(console, target, drawn, _summary(args, epochs, result, costs, optimized, seconds))
    console.print(
        f"[bold]Tour finished in {seconds:.1f} s[/] (seed {args.seed}, {epochs} epochs, "
        f"test accuracy {result.test_accuracy:.2%})."
    )
    return 0
