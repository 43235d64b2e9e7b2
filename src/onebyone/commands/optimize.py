"""``onebyone optimize MODEL``: a model made faster, verified, and written as deployable files.

Calls ``onebyone.optimize`` on a random input of the given shape and prints its
report: how the model was captured, what the passes did, every candidate engine
with its latency and measured error. ``--onnx FILE`` and ``--openvino DIR`` also
write the optimised graph, ready for an existing serving engine. Both follow
``onebyone._files``' rule: checked before any work (``.onnx`` added when left
out, existing files kept unless ``--force``), written through temporaries
renamed into place together, only once every written graph ran and matched the
original; a failure leaves neither. With ``--precision int8`` (or when ``auto`` keeps
an int8 candidate) they are the quantised models that were measured: the QDQ ONNX
model, the int8 IR, reloaded and checked before they are put in place.
"""

from __future__ import annotations

import argparse
import copy

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
from onebyone.deploy import (
    DEFAULT_TOLERANCES,
    ENGINES,
    PRECISIONS,
    OptimizeReport,
    optimize,
    save_int8,
    save_onnx,
    save_openvino,
)
from onebyone.deploy.data import load_folder

__all__ = ["register", "run"]

IR_FILES = ("model.xml", "model.bin")
"""What ``--openvino DIR`` writes into DIR."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "optimize",
        help=SUMMARIES["optimize"],
        description=(
            "Capture MODEL with torch.export, fold its norms and merge its 1x1 convolutions, "
            "build every installed engine (torch, ONNX Runtime, OpenVINO), check each "
            "against the original on a random input and on another batch size, and keep "
            "the fastest. Optionally write the result as ONNX or OpenVINO IR."
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
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="float32 (exact within its rounding), bfloat16 (lossy by choice, where the "
        "CPU has it; its error is reported), int8 (quantised, calibrated on --data, held to "
        "--max-drop) or auto (the fastest of them within the budget; int8 with --data only)",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        metavar="FRACTION",
        help="largest drop in accuracy (labelled --data) or in top-1 agreement with the "
        "float32 model, on the held-out part of --data, a lossy candidate may have "
        "(default 0.01 with int8 and auto)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="REL",
        help="largest relative error a candidate may have (default: 1e-4 for float32, "
        "6e-2 for bfloat16); with --precision bfloat16 float32 candidates compete too",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="execution engine; auto builds every installed one and keeps the fastest",
    )
    p.add_argument(
        "--onnx", metavar="FILE.onnx", help="also write the optimised graph as ONNX (.onnx added)"
    )
    p.add_argument(
        "--openvino", metavar="DIR", help="also write it as OpenVINO IR (DIR/model.xml + .bin)"
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="also verify every candidate on this data: a folder of images or of .npy/.pt "
        "tensors, or one sub-folder of images per class (then accuracy is reported); "
        "images are resized to --input and normalised as the model expects",
    )
    p.add_argument(
        "--json", metavar="FILE.json", help="also write the whole report as JSON (.json added)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
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


_PASS_COLUMNS = (
    Col("pass", "left", text=True), Col("applied"), Col("skipped"),
    Col("first skipped (why)", "left", text=True),
)  # fmt: skip
_CANDIDATE_COLUMNS = (
    Col("engine", "left", text=True), Col("precision", "left", text=True), Col("latency"),
    Col("p10-p90"), Col("max rel error"), Col("top-1"), Col("accuracy"), Col("calibration"),
    Col("build"), Col("note", "left", text=True),
)  # fmt: skip


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _report_tables(report: OptimizeReport, width: int) -> list[Table]:
    """The passes and the candidates of ``report`` as tables fitting ``width`` columns."""
    passes = []
    for p in report.passes:
        why = f"{p.skipped[0][0]}: {p.skipped[0][1]}" if p.skipped else ""
        passes.append([p.name, str(p.count), str(len(p.skipped)), why])
    candidates = []
    for c in report.candidates:
        chosen = (c.engine, c.precision) == (report.engine, report.precision)
        spread = "-" if c.latency is None else f"{c.latency.p10_ms:.2f}-{c.latency.p90_ms:.2f}"
        # on the data where given (held-out part with a budget), else on the checks
        top1 = next((v for v in (c.held_out_top1_agreement, c.data_top1_agreement,
                                 c.top1_agreement) if v is not None), None)  # fmt: skip
        accuracy = c.held_out_accuracy if report.max_drop is not None else c.data_accuracy
        candidates.append([
            c.engine,
            c.precision,
            _ms(c.latency_ms),
            spread,
            "-" if c.max_rel_error is None else f"{c.max_rel_error:.2g}",
            _share(top1),
            _share(accuracy),
            "-" if c.calibration_s is None else f"{c.calibration_s:.1f} s",
            f"{c.build_s:.1f} s" if c.build_s else "-",
            "kept" if chosen else ("" if c.ok else c.why),
        ])  # fmt: skip
    title = f"candidates (tolerance: relative error {report.tolerance:g}"
    if report.max_drop is not None:
        title += (f"; lossy ones: {report.budget_metric} drop at most {report.max_drop:g} on "
                  f"{report.held_out_rows} held-out inputs")  # fmt: skip
    title += ")"
    return [
        *fit(_PASS_COLUMNS, passes, width, title="passes on the graph"),
        *fit(_CANDIDATE_COLUMNS, candidates, width, title=title, keys=2),
    ]


def _print_report(
    console: Console, spec: str, shape: tuple[int, ...], report: OptimizeReport
) -> None:
    console.print(
        f"[bold]onebyone optimize {spec}[/]: input {'x'.join(map(str, shape))}; kept "
        f"[bold]{report.engine}[/] ({report.precision}), prepared in {report.prepare_s:.1f} s"
    )
    batch = "any batch size" if report.dynamic_batch else "the example's batch size only"
    console.print(f"captured by {report.capture} ({batch})")
    for route, why in report.capture_attempts:
        console.print(f"  {route} did not work: {why}")
    for table in _report_tables(report, console.width):
        console.print(table)
    if report.data_batches:
        accuracy = report.data_accuracy_original
        console.print(
            f"on the data ({report.data_rows} inputs"
            + ("" if accuracy is None else f"; the original's accuracy {accuracy:.1%}")
            + "):"
        )
        for c in report.candidates:
            if c.data_max_rel_error is None or c.engine == "original":
                continue
            line = f"  {c.name}: max rel error {c.data_max_rel_error:.3g}"
            if c.data_top1_agreement is not None:
                line += f", top-1 agreement {c.data_top1_agreement:.1%}"
            if c.data_accuracy is not None:
                line += f", accuracy {c.data_accuracy:.1%}"
            console.print(line, highlight=False)
    if report.max_drop is not None:
        original = report.held_out_accuracy_original
        console.print(
            f"budget: {report.calibration_rows} inputs of the data calibrate, "
            f"{report.held_out_rows} are held out"
            + ("" if original is None else f" (the original's accuracy on them {original:.1%})")
            + f"; max drop {report.max_drop:g} in {report.budget_metric}",
            highlight=False,
        )
    if report.speedup is not None:
        before, after = report.latency_before, report.latency_after
        spread = report.speedup_range
        within = "" if spread is None else f" ({spread[0]:.2f}x to {spread[1]:.2f}x over p10-p90)"
        console.print(
            f"latency {before or _ms(report.latency_before_ms)} -> "
            f"{after or _ms(report.latency_after_ms)}: speed-up {report.speedup:.2f}x{within}",
            highlight=False,
        )
    for name, by_batch in report.throughput.items():
        rates = ", ".join(
            f"{rate:.1f} inputs/s at batch {b}" for b, rate in sorted(by_batch.items())
        )
        console.print(f"throughput ({name}): {rates}", highlight=False)
    if report.verify is not None:
        other = report.verify_other
        console.print(
            f"max rel error vs original: {report.verify.max_rel:.3g} on the example"
            + ("" if other is None else f", {other.max_rel:.3g} on another batch size")
        )
    if report.serves:
        console.print(f"serves {report.serves}; other inputs run the original model")
    if report.peak_rss_mb is not None:
        console.print(f"peak memory (RSS): {report.peak_rss_mb:.0f} MB")
    for note in report.notes:
        warn = note.startswith(("the machine was busy", "wide timing spread", "the checks prove"))
        console.print(f"[bold yellow]warning:[/] {note}" if warn else f"note: {note}")


def _check_budget(args: argparse.Namespace) -> None:
    """int8 needs --data; --max-drop is a fraction in [0, 1] and needs --data."""
    if args.max_drop is not None and not 0.0 <= args.max_drop <= 1.0:
        raise _checks.invalid(
            "--max-drop", "a fraction in [0, 1] (0.01: one point of accuracy or top-1 "
            "agreement)", args.max_drop,
        )  # fmt: skip
    if args.data is None and (args.precision == "int8" or args.max_drop is not None):
        why = "int8 calibrates on real inputs" if args.precision == "int8" else "--max-drop"
        raise _checks.invalid(
            "--data", f"a folder of real inputs ({why}: random inputs say nothing about the "
            "model's real activations)", None,
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    console = Console()
    shape = parse_input(args.input)
    _check_budget(args)
    outputs = {}
    if args.json is not None:
        outputs["json"] = _files.output_file("--json", args.json, ".json", force=args.force)
    if args.onnx is not None:  # checked before any work; "" is refused, not ignored
        outputs["onnx"] = _files.output_file("--onnx", args.onnx, ".onnx", force=args.force)
        _optional.require("onnxruntime", "--onnx")
    if args.openvino is not None:
        outputs["openvino"] = _files.output_folder(
            "--openvino", args.openvino, IR_FILES, force=args.force
        )
        _optional.require("openvino", "--openvino")
    _files.check_all(list(outputs.values()))
    model = resolve_model(args.model, parse_options(args.option))
    if args.weights:
        _load(model, args.weights, args.model)
    model.eval()
    data = None if args.data is None else load_folder("--data", args.data, model, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    try:  # one run first (of a copy: a forward may update buffers): an input the model
        # rejects is bad input, said in its terms
        with torch.inference_mode():
            copy.deepcopy(model)(x.clone())
    except REJECTIONS as exc:
        raise rejected_input(args.model, model, shape, exc) from None
    with console.status("optimizing") as status:
        _, report = optimize(
            model,
            x,
            precision=args.precision,
            tolerance=args.tolerance,
            engine=args.engine,
            data=data,
            max_drop=args.max_drop,
            progress=lambda message: status.update(f"optimizing: {message}"),
        )
    _print_report(console, args.model, shape, report)
    if outputs.keys() - {"json"} and report.program is None:
        failed = report.capture_attempts[-1][1] if report.capture_attempts else report.capture
        raise RuntimeError(
            f"no file written: --onnx and --openvino need a torch.export capture ({failed})"
        )
    tolerance = 1e-4 if args.tolerance is None else float(args.tolerance)
    # the IR computes as the kept OpenVINO candidate did; float32 otherwise
    ir_precision = report.precision if report.engine == "openvino" else "float32"
    ir_tolerance = tolerance
    if ir_precision == "bfloat16":
        kept = next(c for c in report.candidates if c.name == "openvino/bfloat16")
        own = DEFAULT_TOLERANCES["bfloat16"] if args.tolerance is None else tolerance
        ir_tolerance = min(0.99, max(own, 2 * (kept.max_rel_error or 0.0)))
    lines = []
    with console.status("writing the files"), _files.staged(list(outputs.values())) as temps:
        for kind, temp in zip(outputs, temps, strict=True):
            if kind == "json":
                temp.write_text(report.to_json())
                lines.append(f"wrote {outputs[kind].path} (the report as JSON)")
                continue
            engine = "onnxruntime" if kind == "onnx" else "openvino"
            quantised = _int8_module(report, engine, args.precision)
            if quantised is not None:
                _, verified = save_int8(quantised, temp, (x,))
                what = "a QDQ ONNX model" if kind == "onnx" else "IR with FakeQuantize"
                where = outputs[kind].path if kind == "onnx" else outputs[kind].path / IR_FILES[0]
                lines.append(
                    f"wrote {where} (int8: {what}, the model measured above); reloaded, it "
                    f"differs from it by a relative {verified.max_rel:.2g}"
                )
                continue
            if args.precision == "int8":
                lines.append(f"no {engine} int8 candidate within the budget: float32 written")
            if kind == "onnx":
                _, verified = save_onnx(report.program, (x,), temp, original=model,
                                        tolerance=tolerance, call=report.call_spec,
                                        built=report.exports.get("onnx"))  # fmt: skip
                lines.append(
                    f"wrote {outputs[kind].path} ({temp.stat().st_size / 1e6:.1f} MB, ONNX); "
                    f"ONNX Runtime vs the original: max rel error {verified.max_rel:.3g}"
                )
            else:
                _, verified = save_openvino(report.program, (x,), temp, original=model,
                                            tolerance=ir_tolerance, precision=ir_precision,
                                            call=report.call_spec,
                                            built=report.exports.get("openvino")
                                            if ir_precision == "float32" else None)  # fmt: skip
                hint = "f32" if ir_precision == "float32" else "bf16"
                lines.append(
                    f"wrote {outputs[kind].path / IR_FILES[0]} and {IR_FILES[1]} (OpenVINO IR, "
                    f"{ir_precision}, recorded in its runtime options: compile it with "
                    f"INFERENCE_PRECISION_HINT={hint}); OpenVINO vs the original: "
                    f"max rel error {verified.max_rel:.3g}"
                )
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    return 0


def _int8_module(report: OptimizeReport, engine: str, precision: str) -> nn.Module | None:
    """The measured int8 module of ``engine`` to write: when it was kept, or when int8 was
    asked for (and it met the budget)."""
    if (report.engine, report.precision) == (engine, "int8") or precision == "int8":
        module = report.int8_modules.get(engine)
        return module if isinstance(module, nn.Module) else None
    return None
