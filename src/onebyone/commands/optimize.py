"""``onebyone optimize MODEL``: fold, merge, fuse and verify a model; optionally write ONNX.

Calls ``onebyone.optimize`` on a random input of the given shape and prints its
report. ``--onnx FILE`` also writes the folded model as ONNX, runs that file
in ONNX Runtime and prints how far its output is from the original model's.
The file follows ``commands._output``'s rule: checked before any work, ``.onnx``
added when left out, written through a temporary file and a rename only when
the export and the run in ONNX Runtime succeed, an existing file kept unless
``--force``.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from onebyone import _optional
from onebyone.commands._common import (
    MODEL_FORMS,
    load_weights,
    parse_input,
    parse_options,
    resolve_model,
)
from onebyone.commands._output import Output, output_file
from onebyone.transforms import OptimizeReport, export_onnx, optimize
from onebyone.transforms.fold import fold_owned
from onebyone.transforms.merge import merge_owned
from onebyone.transforms.optimize import ENGINES
from onebyone.transforms.verify import compare, default_tolerance

__all__ = ["register", "run"]

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "optimize",
        help="fold, merge and fuse a model for CPU inference, with outputs verified equal",
        description=(
            "Apply fold_batchnorm -> merge_pointwise -> fuse_epilogues -> layout to MODEL, "
            "check the result against the original on a random input and report what "
            "changed, the error and the latency before and after."
        ),
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_FORMS)
    p.add_argument(
        "--input", default="1x3x224x224", metavar="SHAPE", help="input shape (default 1x3x224x224)"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the model's factory (repeatable)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="load a state dict: safetensors, or a torch checkpoint of tensors "
        "(read with weights_only=True)",
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=sorted(_DTYPES),
        help="compute dtype (bf16 where the CPU supports it; the error is reported)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="execution engine; auto measures both and keeps the faster",
    )
    p.add_argument(
        "--onnx", metavar="FILE.onnx", help="also write the folded model as ONNX (.onnx added)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --onnx file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.set_defaults(run=run)


def _load(model: nn.Module, path: str, spec: str) -> None:
    state = load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next(
            (ln.strip() for ln in first if "size mismatch" in ln or "key" in ln), first[0]
        )
        raise ValueError(
            f"Invalid value for argument `--weights`. Expected weights of {spec}. "
            f"Received {path}: {detail}"
        ) from None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _print_report(
    console: Console, spec: str, shape: tuple[int, ...], report: OptimizeReport
) -> None:
    console.print(
        f"[bold]onebyone optimize {spec}[/]: input {'x'.join(map(str, shape))}, "
        f"engine {report.engine}, {report.dtype}, prepared in {report.prepare_s:.2f} s"
    )
    passes = Table(title="passes")
    for column in ("pass", "applied", "skipped", "first skipped (why)"):
        passes.add_column(column, justify="right" if column in ("applied", "skipped") else "left")
    for p in report.passes:
        why = f"{p.skipped[0][0]}: {p.skipped[0][1]}" if p.skipped else ""
        passes.add_row(p.name, str(p.count), str(len(p.skipped)), why[:90])
    console.print(passes)
    layers = Table(title="operations on the model's graph")
    for column in ("", "total", "conv", "batch norm", "activation", "add"):
        layers.add_column(column, justify="left" if not column else "right")
    for label, counts in (("before", report.layers_before), ("after", report.layers_after)):
        if counts is None:
            layers.add_row(label, "does not trace", "", "", "", "")
        else:
            layers.add_row(
                label,
                str(counts.total),
                str(counts.convolutions),
                str(counts.batch_norms),
                str(counts.activations),
                str(counts.adds),
            )
    console.print(layers)
    summary = Table(title="result", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    if report.engine_ms:
        for name, ms in report.engine_ms.items():
            summary.add_row(f"engine {name} (best of the selection runs)", _ms(ms))
    if report.verify is not None:
        summary.add_row("max abs error vs original", f"{report.verify.max_abs:.3g}")
        summary.add_row("max rel error vs original", f"{report.verify.max_rel:.3g}")
        summary.add_row("tolerance (rtol, atol)", f"{report.verify.rtol:g}, {report.verify.atol:g}")
    summary.add_row("latency before (median)", _ms(report.latency_before_ms))
    summary.add_row("latency after (median)", _ms(report.latency_after_ms))
    if report.speedup is not None:
        summary.add_row("speed-up", f"{report.speedup:.2f}x")
    console.print(summary)
    for note in report.notes:
        console.print(f"note: {note}")


def _onnx(console: Console, model: nn.Module, x: torch.Tensor, target: Output) -> None:
    ort = _optional.require("onnxruntime", "--onnx")
    folded, _ = fold_owned(model, x, owned=False)
    merged, _ = merge_owned(folded, True, owned=True)
    data, how = export_onnx(merged, x)
    with target.staging() as temp:  # moved in place only if ONNX Runtime runs the file
        temp.write_bytes(data)
        session = ort.InferenceSession(str(temp), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        outputs = [torch.from_numpy(o) for o in session.run(None, feed)]
    with torch.inference_mode():
        reference = model(x)
    got: object = outputs[0] if isinstance(reference, torch.Tensor) else tuple(outputs)
    rtol, atol = default_tolerance(torch.float32)
    result = compare(reference, got, rtol=rtol, atol=atol)
    state = "within" if result.ok else "BEYOND"
    console.print(
        f"wrote {target.path} ({len(data) / 1e6:.1f} MB, exported by {how}); ONNX Runtime vs the "
        f"original: max abs {result.max_abs:.3g}, max rel {result.max_rel:.3g} "
        f"({state} rtol={rtol:g}, atol={atol:g})",
        soft_wrap=True,
    )


def run(args: argparse.Namespace) -> int:
    console = Console()
    shape = parse_input(args.input)
    target = None
    if args.onnx is not None:  # checked before any work; "" is refused, not ignored
        target = output_file("--onnx", args.onnx, ".onnx", force=args.force)
        _optional.require("onnxruntime", "--onnx")
    model = resolve_model(args.model, parse_options(args.option))
    if args.weights:
        _load(model, args.weights, args.model)
    model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    _, report = optimize(model, x, dtype=_DTYPES[args.dtype], engine=args.engine)
    _print_report(console, args.model, shape, report)
    if target is not None:
        _onnx(console, model, x, target)
    return 0
