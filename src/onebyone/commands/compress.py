"""``onebyone compress MODEL``: the model's convolutions split into bottlenecks to meet a MAC
budget (lossy by choice), written as safetensors with the ranks that rebuild it.

Calls ``onebyone.compress`` and prints its report: per layer the ranks, MACs
before and after and the energy kept; for the model its MACs, parameters,
error, held-out agreement/accuracy before and after fine-tuning, and latency
through ``optimize``. ``--data`` is a folder of ``.npy``/``.pt`` tensors or
images (in one sub-folder per class for labels), or ``digits`` (scikit-learn's
digits). ``MODEL`` ``digits`` is the demo's Network-in-Network, trained first as
the demo does. ``--out`` follows ``onebyone._files``'s rule.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from onebyone import _checks
from onebyone._files import output_file
from onebyone.commands._common import (
    MODEL_FORMS,
    load_weights,
    parse_input,
    parse_options,
    resolve_model,
)
from onebyone.deploy import ENGINES
from onebyone.transforms.compress import CompressReport, compress, save_compressed

__all__ = ["load_data", "register", "run"]

DIGITS = "digits"
TENSOR_SUFFIXES = (".npy", ".pt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compress",
        help="split a model's convolutions into bottlenecks to meet a MAC budget (lossy)",
        description=(
            "Split every groups=1 convolution of MODEL into thin layers (truncated SVD for "
            "1x1 and linear layers, Tucker-2 for k x k: 1x1 -> k x k -> 1x1) with ranks "
            "chosen to meet --target-macs with the least energy lost, optionally fine-tune "
            "by distillation on --data, report what was saved and what was lost, and write "
            "the weights with the ranks (obo.load_compressed rebuilds it)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help=f"{MODEL_FORMS}, or digits (the demo's NiN)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the compressed weights (.safetensors added)")  # fmt: skip
    p.add_argument("--target-macs", type=float, default=0.5, metavar="FRACTION",
                   help="MACs kept, a fraction of the original's, in (0, 1]")  # fmt: skip
    p.add_argument("--data", metavar="DIR",
                   help="a folder of .npy/.pt tensors or images (one sub-folder per class for "
                   "labels), or 'digits'; a share is held out to measure the loss")  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                   help="distillation epochs on --data (default 0)")  # fmt: skip
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop fine-tuning after this long")  # fmt: skip
    p.add_argument("--input", default=None, metavar="SHAPE",
                   help="input shape (default 1x3x224x224; 1x1x8x8 for digits)")  # fmt: skip
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model's factory (repeatable)")  # fmt: skip
    p.add_argument("--weights", metavar="FILE",
                   help="load a state dict first: safetensors, or a torch checkpoint of "
                   "tensors (read with weights_only=True)")  # fmt: skip
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="optimize's engine for the latencies (default auto)")  # fmt: skip
    p.add_argument("--no-latency", action="store_true",
                   help="skip timing both models through optimize")  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--seed", type=int, default=0, help="seeds the input, split and fine-tune")
    p.set_defaults(run=run)


# ---------------------------------------------------------------- --data


def _read_tensor(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, torch.Tensor):
        raise _checks.invalid("--data", "tensors in its .pt files", f"{path}: "
                              f"{type(loaded).__name__}")  # fmt: skip
    return loaded.float()


def _read_image(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    from PIL import Image

    c, h, w = shape[-3:]
    with Image.open(path) as image:
        converted = image.convert("L" if c == 1 else "RGB").resize((w, h))
        pixels = np.asarray(converted, dtype=np.float32) / 255.0
    t = torch.from_numpy(pixels)
    return t[None] if c == 1 else t.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def load_data(folder: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs (and labels, from one sub-folder per class) from a folder.

    Each ``.npy``/``.pt`` file holds one input ``shape[1:]`` or a batch of them;
    images are scaled to ``[0, 1]`` and resized to the input's height and width.
    """
    root = Path(folder)
    if not root.is_dir():
        raise _checks.invalid("--data", f"a folder or {DIGITS!r}", folder)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [(i, root / name) for i, name in enumerate(classes)] or [(-1, root)]
    inputs: list[torch.Tensor] = []
    labels: list[int] = []
    for label, where in groups:
        for path in sorted(where.iterdir()):
            suffix = path.suffix.lower()
            if suffix in TENSOR_SUFFIXES:
                t = _read_tensor(path)
            elif suffix in IMAGE_SUFFIXES:
                t = _read_image(path, shape)
            else:
                continue
            batch = t if t.dim() == len(shape) else t[None]  # one input -> a batch of one
            inputs.append(batch)
            labels += [label] * len(batch)
    if not inputs:
        raise _checks.invalid("--data", "a folder holding .npy, .pt or image files "
                              "(directly or in one sub-folder per class)", folder)  # fmt: skip
    if len({tuple(t.shape[1:]) for t in inputs}) > 1:
        raise _checks.invalid("--data", "inputs of one shape", sorted(
            {"x".join(map(str, t.shape[1:])) for t in inputs}))  # fmt: skip
    x = torch.cat(inputs)
    return x, (torch.tensor(labels) if classes else None)


def _check_data(model: nn.Module, inputs: torch.Tensor, where: str) -> None:
    """Refuse (naming ``--data``) inputs the model does not take, before any work."""
    try:
        with torch.inference_mode():
            model(inputs[:2])
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = f"{where} holding {tuple(inputs.shape)}: {type(exc).__name__}: "
        detail += lines[0] if lines else ""
        raise _checks.invalid("--data", "inputs the model accepts", detail) from None


def _digits_model(console: Console, seed: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from onebyone.explain.digits import load_digits_split, train_digits

    data = load_digits_split(seed=seed)
    with console.status("training the demo's digits network (20 epochs)"):
        result = train_digits(epochs=20, seed=seed, data=data)
    console.print(f"digits network trained: test accuracy {result.test_accuracy:.1%}")
    return result.model, (data.x_train, data.y_train)


# ---------------------------------------------------------------- the report


def _quality(q: Any) -> str:
    if q is None:
        return "-"
    parts = [] if q.accuracy is None else [f"accuracy {q.accuracy:.1%}"]
    if q.agreement is not None:
        parts.append(f"top-1 agreement {q.agreement:.1%}")
    parts.append(f"rel error {q.rel_error:.3g}")
    return ", ".join(parts)


def _print_report(console: Console, spec: str, report: CompressReport) -> None:
    table = Table(title=f"onebyone compress {spec}: target {report.target_macs:g} of the MACs")
    for column in ("layer", "type", "shape", "split", "ranks", "MACs before", "MACs after",
                   "energy kept"):  # fmt: skip
        left = column in ("layer", "type", "split")
        table.add_column(column, justify="left" if left else "right", overflow="fold")
    for c in report.layers:
        table.add_row(
            c.name, c.type, "x".join(map(str, c.shape)), c.kind,
            ",".join(map(str, c.ranks)) or "-", f"{c.macs_before:,}", f"{c.macs_after:,}",
            f"{c.energy_kept:.1%}",
        )  # fmt: skip
    console.print(table)
    if report.skipped:
        console.print(f"left alone: {len(report.skipped)} layers, e.g. "
                      f"{report.skipped[0][0]}: {report.skipped[0][1]}")  # fmt: skip
    console.print(
        f"MACs {report.macs_before:,} -> {report.macs_after:,} ({report.macs_fraction:.1%}; "
        f"lowest reachable {report.lowest_fraction:.1%}); parameters {report.params_before:,} "
        f"-> {report.params_after:,}",
        highlight=False,
    )
    console.print(f"lost: output rel error on the example {report.example_rel_error:.3g}",
                  highlight=False)  # fmt: skip
    if report.before_finetune is not None:
        n = report.before_finetune.samples
        original = report.original_accuracy
        if original is not None:
            console.print(f"held out ({n}): original accuracy {original:.1%}", highlight=False)
        console.print(f"held out ({n}), split: {_quality(report.before_finetune)}",
                      highlight=False)  # fmt: skip
        if report.after_finetune is not None and report.finetune is not None:
            ft = report.finetune
            why = " (time limit)" if ft.stopped_by_time_limit else ""
            console.print(f"held out ({n}), after {ft.epochs} fine-tune epochs in "
                          f"{ft.seconds:.1f} s{why}: {_quality(report.after_finetune)}",
                          highlight=False)  # fmt: skip
    if report.speedup is not None:
        console.print(
            f"latency through optimize: {report.latency_before_ms:.2f} ms ({report.engine_before})"
            f" -> {report.latency_after_ms:.2f} ms ({report.engine_after}): "
            f"{report.speedup:.2f}x", highlight=False,
        )  # fmt: skip
    for note in report.notes:
        console.print(f"note: {note}")


# ---------------------------------------------------------------- run


def _recorded_name(spec: str) -> str | None:
    """The model name ``load_compressed`` can rebuild from, or ``None``."""
    from onebyone.models import list_models
    from onebyone.models.external import is_external

    return spec if spec in list_models() or is_external(spec) else None


def run(args: argparse.Namespace) -> int:
    console = Console()
    target = args.target_macs
    if not 0 < target <= 1:
        raise _checks.invalid("--target-macs", "a fraction of the original MACs in (0, 1]",
                              target)  # fmt: skip
    if args.finetune_epochs < 0:
        raise _checks.invalid("--finetune-epochs", "an int >= 0", args.finetune_epochs)
    digits = args.model == DIGITS
    if args.finetune_epochs and not args.data and not digits:
        raise _checks.invalid("--finetune-epochs", "0 without --data", args.finetune_epochs)
    out = output_file("--out", args.out, ".safetensors", force=args.force)
    shape = parse_input(args.input or ("1x1x8x8" if digits else "1x3x224x224"))
    data: Any = None
    if args.data and args.data != DIGITS:  # read before any long work: bad data fails fast
        data = load_data(args.data, shape)
    options = parse_options(args.option)
    if digits:
        model, digits_data = _digits_model(console, args.seed)
        if args.data == DIGITS or not args.data:
            data = digits_data
    else:
        if args.data == DIGITS:
            raise _checks.invalid("--data", "digits only with MODEL digits (or a folder)",
                                  args.data)  # fmt: skip
        model = resolve_model(args.model, options)
        if args.weights:
            state = load_weights(args.weights)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                lines = str(exc).strip().splitlines()
                raise _checks.invalid("--weights", f"weights of {args.model}",
                                      f"{args.weights}: {lines[1 if len(lines) > 1 else 0]}"
                                      ) from None  # fmt: skip
    model.eval()
    if data is not None:
        _check_data(model, data[0], args.data)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    )
    stage = progress.add_task("compressing", total=None, loss="")
    epochs: dict[int, Any] = {}

    def on_batch(epoch: int, batch: int, batches: int, loss: float) -> None:
        if epoch not in epochs:
            progress.update(stage, description="fine-tuning by distillation")
            epochs[epoch] = progress.add_task(
                f"epoch {epoch}/{args.finetune_epochs}", total=batches, loss=""
            )
        progress.update(epochs[epoch], completed=batch, loss=f"loss {loss:.4f}")

    with progress:
        compressed, report = compress(
            model,
            x,
            target_macs=target,
            data=data,
            finetune_epochs=args.finetune_epochs,
            time_limit_s=args.time_limit,
            measure_latency=not args.no_latency,
            engine=args.engine,
            seed=args.seed,
            on_batch=on_batch,
            progress=lambda message: progress.update(stage, description=message),
        )
        progress.update(stage, total=1, completed=1, description="done")
    _print_report(console, args.model, report)
    name = _recorded_name(args.model)
    with out.staging() as temp:
        save_compressed(compressed, temp, model_name=name, options=options if name else None)
    rebuild = "obo.load_compressed(path)" if name else "obo.load_compressed(path, model)"
    console.print(f"wrote {out.path} ({out.path.stat().st_size / 1e6:.1f} MB); {rebuild} "
                  "rebuilds it", highlight=False, soft_wrap=True)  # fmt: skip
    return 0
