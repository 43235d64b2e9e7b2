"""``onebyone analyze MODEL``: exact per-layer costs of a model and a roofline.

Calls ``onebyone.profile``; prints a table per layer and the share of
parameters and MACs by category, and writes JSON, CSV or a figure on request
(``onebyone._files``' rule: checked before any work, the extension added when
left out, all files written at the end or none, existing ones kept unless
``--force``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from onebyone import _checks, _files, _optional
from onebyone.commands import SUMMARIES
from onebyone.commands._common import (
    MODEL_FORMS,
    REJECTIONS,
    load_weights,
    parse_input,
    parse_options,
    rejected_input,
    resolve_model,
)
from onebyone.commands._terminal import Col, fit
from onebyone.cost import CONVENTION
from onebyone.profiling import (
    CATEGORIES,
    MachinePeak,
    Profile,
    cached_peak,
    machine_peak,
    profile,
)

__all__ = ["parse_peak", "register", "run"]

_PEAK_FORM = "'measure' or GFLOPS,GBPS (two positive numbers, such as 480,20)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help=SUMMARIES["analyze"],
        description=("Run MODEL once and count every layer it executes. " + CONVENTION),
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_FORMS)
    p.add_argument("--input", default="1x3x224x224", metavar="SHAPE",
                   help="input shape (default 1x3x224x224)")  # fmt: skip
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model's factory (repeatable); "
                   "values are Python literals or plain strings")  # fmt: skip
    p.add_argument("--weights", metavar="FILE",
                   help="load a state dict: safetensors, or a torch checkpoint of tensors "
                   "(read with weights_only=True; nothing in the file is executed)")  # fmt: skip
    p.add_argument("--peak", metavar="GFLOPS,GBPS|measure",
                   help="the roofline's peak: two numbers such as 480,20, or 'measure' to "
                   "measure this machine now and cache the result; default: "
                   "ONEBYONE_PEAK_GFLOPS and ONEBYONE_PEAK_GBPS if set, else the peak cached "
                   "for this machine, else measured once (1-2 s) and cached")  # fmt: skip
    p.add_argument("--top", metavar="N", help="show only the N layers with the most MACs")
    p.add_argument("--by-category", action="store_true",
                   help="show the per-category summary instead of the per-layer table")  # fmt: skip
    p.add_argument("--json", metavar="FILE.json", help="write the full profile as JSON")
    p.add_argument("--csv", metavar="FILE.csv", help="write one row per layer as CSV")
    p.add_argument("--plot", metavar="FILE.png",
                   help="write a figure: category shares and a roofline of the layers "
                   "(needs pip install 'onebyone[explain]')")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="replace existing --json, --csv and --plot files")  # fmt: skip
    p.set_defaults(run=run)


def parse_peak(text: str) -> MachinePeak | str:
    """``"480,20"`` -> ``MachinePeak(480.0, 20.0)``; ``"measure"`` stays ``"measure"``."""
    if text.strip() == "measure":
        return "measure"
    parts = text.split(",")
    try:
        gflops, gbps = (float(part) for part in parts)
        return MachinePeak(gflops, gbps)
    except (ValueError, TypeError):
        raise _checks.invalid("--peak", _PEAK_FORM, text) from None


# ---------------------------------------------------------------- weights


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str, spec: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(exc).strip().splitlines()[0]
        raise ValueError(
            f"Invalid value for argument `--weights`. Expected weights of {spec}. "
            f"Received {path}: {detail}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing (first {result.missing_keys[0]})")
        if result.unexpected_keys:
            parts.append(
                f"{len(result.unexpected_keys)} unexpected (first {result.unexpected_keys[0]})"
            )
        raise ValueError(
            f"Invalid value for argument `--weights`. Expected weights of {spec}. "
            f"Received {path} with keys {', '.join(parts)}."
        )


# ---------------------------------------------------------------- output


def _si(value: float) -> str:
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{suffix}"
    return f"{value:g}"


def _seconds(value: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms")):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value / 1e-6:.3f} us"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


_LAYER_COLUMNS = (
    Col("#"), Col("layer", "left", text=True), Col("op", "left", text=True),
    Col("category", "left", text=True), Col("output"), Col("params"), Col("MACs"), Col("bytes"),
    Col("FLOP/B"), Col("time us"), Col("bound", "left", text=True),
)  # fmt: skip
_CATEGORY_COLUMNS = (
    Col("category", "left", text=True), Col("layers"), Col("params"), Col("% params"),
    Col("MACs"), Col("% MACs"), Col("bytes"), Col("% time"),
)  # fmt: skip


def _layer_tables(prof: Profile, top: int | None, width: int) -> list[Table]:
    rows = list(enumerate(prof.layers))
    title = "every counted layer, in execution order"
    if top is not None:
        rows = sorted(rows, key=lambda r: (-r[1].cost.macs, -r[1].cost.bytes_moved))[:top]
        title = f"the {len(rows)} layers with the most MACs"
    cells = []
    for index, layer in rows:
        c = layer.cost
        cells.append([
            str(index),
            layer.name or f"({layer.type})",
            layer.op,
            layer.category,
            "x".join(map(str, layer.output_shape)),
            f"{c.params:,}",
            f"{c.macs:,}",
            _si(c.bytes_moved),
            f"{c.arithmetic_intensity:.1f}",
            "-" if layer.time_s is None else f"{layer.time_s * 1e6:.1f}",
            layer.bound or "-",
        ])  # fmt: skip
    return fit(_LAYER_COLUMNS, cells, width, title=title, keys=2)


def _category_tables(prof: Profile, width: int) -> list[Table]:
    total = prof.total
    time_total = prof.time_s
    counts = {c: sum(1 for layer in prof.layers if layer.category == c) for c in CATEGORIES}
    times = {c: sum(l.time_s or 0.0 for l in prof.layers if l.category == c) for c in CATEGORIES}
    cells = [
        [
            category,
            str(counts[category]),
            f"{cost.params:,}",
            _share(cost.params, total.params),
            f"{cost.macs:,}",
            _share(cost.macs, total.macs),
            _si(cost.bytes_moved),
            "-" if time_total is None else _share(times[category], time_total),
        ]
        for category, cost in prof.by_category().items()
    ]
    title = "share by category (a parameter shared across categories counts in each)"
    return fit(_CATEGORY_COLUMNS, cells, width, title=title)


def _report(console: Console, prof: Profile, spec: str, args: argparse.Namespace) -> None:
    inputs = ", ".join("x".join(map(str, s)) for s in prof.inputs)
    console.print(f"[bold]onebyone analyze {spec}[/]: {prof.model}, input {inputs}, {prof.dtype}")
    console.print(f"convention: {CONVENTION}")
    console.print(f"roofline: {prof.peak_note}")
    if not args.by_category:
        top = None if args.top is None else _top(args.top)
        for table in _layer_tables(prof, top, console.width):
            console.print(table)
    for table in _category_tables(prof, console.width):
        console.print(table)
    t = prof.total
    console.print(
        f"[bold]total[/]: params {t.params:,} ({_si(t.params)}), MACs {t.macs:,} "
        f"({_si(t.macs)}), FLOPs {t.flops:,}, bias adds {t.bias_adds:,}, "
        f"other ops {t.other_ops:,}, bytes {t.bytes_moved:,}"
        + ("" if prof.time_s is None else f", predicted {_seconds(prof.time_s)}")
    )
    unused = prof.unused_params
    if unused:
        modules: dict[str, int] = defaultdict(int)
        for name, size in unused.items():
            modules[name.rpartition(".")[0] or name] += size
        listed = ", ".join(f"{m} ({n:,})" for m, n in modules.items())
        console.print(
            f"parameters never read in this pass (not in the total): "
            f"{sum(unused.values()):,} in {listed}"
        )
    if prof.uncounted:
        listed = ", ".join(f"{name} x{n}" for name, n in sorted(prof.uncounted.items()))
        console.print(f"calls seen but not counted: {listed}")


def _top(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _checks.invalid("--top", "a positive int", text)
    return int(text)


def _plot(prof: Profile, path: Path) -> None:
    Figure = _optional.require("matplotlib.figure", "--plot").Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    shares, roof = fig.subplots(1, 2)
    total = prof.total
    by_category = prof.by_category()
    ys = range(len(CATEGORIES))
    params = [100 * by_category[c].params / total.params if total.params else 0 for c in CATEGORIES]
    macs = [100 * by_category[c].macs / total.macs if total.macs else 0 for c in CATEGORIES]
    shares.barh([y - 0.2 for y in ys], params, height=0.4, label="% of parameters")
    shares.barh([y + 0.2 for y in ys], macs, height=0.4, label="% of MACs")
    shares.set_yticks(list(ys), CATEGORIES)
    shares.invert_yaxis()
    shares.set_xlabel("share (%)")
    shares.set_title(f"{prof.model}: where parameters and MACs are")
    shares.legend()

    peak = prof.peak
    layers = [layer for layer in prof.layers if layer.cost.flops > 0 and layer.time_s]
    if layers and peak is not None and prof.time_s:
        lo = min(layer.cost.arithmetic_intensity for layer in layers) / 2
        hi = max(max(layer.cost.arithmetic_intensity for layer in layers) * 2, peak.ridge * 4)
        xs = [lo, peak.ridge, hi]
        roof.plot(xs, [min(peak.gflops, peak.gbps * x) for x in xs], color="black", lw=1,
                  label=f"roof: {peak.gflops:.0f} GFLOP/s, {peak.gbps:.0f} GB/s")  # fmt: skip
        for category in CATEGORIES:
            mine = [layer for layer in layers if layer.category == category]
            if mine:
                roof.scatter(
                    [layer.cost.arithmetic_intensity for layer in mine],
                    [layer.cost.flops / (layer.time_s or 1.0) / 1e9 for layer in mine],
                    s=[12 + 300 * (layer.time_s or 0.0) / prof.time_s for layer in mine],
                    alpha=0.7,
                    label=category,
                )
        roof.set_xscale("log")
        roof.set_yscale("log")
        roof.legend(fontsize="small")
    roof.set_xlabel("arithmetic intensity (FLOP/byte, FLOPs = 2 x MACs)")
    roof.set_ylabel("predicted GFLOP/s")
    roof.set_title("roofline of the layers with MACs (size: share of time)")
    fig.savefig(path, format="png", dpi=120)


def _outputs(args: argparse.Namespace) -> dict[str, _files.Output]:
    """The files to write, checked before any work: ``{"json": Output, ...}``."""
    outputs = {
        kind: _files.output_file(f"--{kind}", value, f".{suffix}", force=args.force)
        for kind, suffix in (("json", "json"), ("csv", "csv"), ("plot", "png"))
        if (value := getattr(args, kind)) is not None
    }
    if "plot" in outputs:
        _optional.require("matplotlib.figure", "--plot")
    return outputs


def _write(prof: Profile, outputs: dict[str, _files.Output]) -> list[Path]:
    """Write every output, all or none: each is staged, then all are moved in place."""
    writers = {
        "json": lambda path: path.write_text(prof.to_json()),
        "csv": lambda path: path.write_text(prof.to_csv()),
        "plot": lambda path: _plot(prof, path),
    }
    with _files.staged(list(outputs.values())) as temps:
        for kind, temp in zip(outputs, temps, strict=True):
            writers[kind](temp)
    return [output.path for output in outputs.values()]


def run(args: argparse.Namespace) -> int:
    shape = parse_input(args.input)
    options = parse_options(args.option)
    if args.top is not None:
        _top(args.top)
    outputs = _outputs(args)
    peak = None if args.peak is None else parse_peak(args.peak)
    status = Console(stderr=True)
    with status.status(f"building {args.model}"):
        model = resolve_model(args.model, options)
        if args.weights is not None:
            _load_into(model, load_weights(args.weights), args.weights, args.model)
    if peak is None:
        peak = cached_peak()
    if peak is None or peak == "measure":
        with status.status("measuring this machine's peak GFLOP/s and GB/s (cached afterwards)"):
            peak = machine_peak(refresh=True)
    with status.status(f"profiling {args.model} on {args.input}"):
        try:
            prof = profile(model, shape, peak=peak)
        except REJECTIONS as exc:  # the model rejects the input
            raise rejected_input(args.model, model, shape, exc) from None
    console = Console()  # the terminal's width, else COLUMNS, else 80
    _report(console, prof, args.model, args)
    for path in _write(prof, outputs):
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0
