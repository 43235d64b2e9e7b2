"""``onebyone explain [TOPIC] [--save-figures DIR] [--html DIR]``: the seeds' examples, computed.

``--save-figures DIR`` and ``--html DIR`` (the explorer page,
``onebyone.explain.write_explorer``) follow ``onebyone._files``' rule: checked
before any work (DIR may exist; files in it of the names written are kept
unless ``--force``), written together once every figure is drawn, or not at
all.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rich.columns import Columns
from rich.console import Console
from rich.table import Table

from onebyone import _checks, _files, _optional
from onebyone.commands import SUMMARIES
from onebyone.explain import (
    SEED_KERNEL,
    TOPICS,
    BottleneckComparison,
    DepthExample,
    FCEquivalence,
    FusionExample,
    ReductionCase,
    WorkedExample,
    get_topic,
    save_topic_figure,
)
from onebyone.explain.explorer import DATA_FILE, PAGE_FILES, PAGE_MODES, write_explorer
from onebyone.explain.fusion import SEED_CLAIM_PIXEL

__all__ = ["RENDERERS", "register", "render_worked_example", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help=SUMMARIES["explain"],
        description="Explain 1x1 convolutions with examples computed by the library. "
        "Without TOPIC: list the topics ('all' shows every one).",
    )
    p.add_argument(
        "topic", nargs="?", metavar="TOPIC", help="one of: " + ", ".join(TOPICS) + ", all"
    )
    p.add_argument(
        "--save-figures",
        metavar="DIR",
        default=None,
        help="write one PNG per topic shown (all topics when TOPIC is omitted), named after "
        "the topic, into DIR (created if missing) (needs pip install 'onebyone[explain]')",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files of the same names in DIR (without it they are kept and the "
        "command stops before any work)",
    )
    p.add_argument(
        "--html",
        metavar="DIR",
        default=None,
        help="write the explorer page (DIR/index.html and its files, works offline) "
        "and print its path",
    )
    p.set_defaults(run=run)


def _matrix(
    data: np.ndarray,
    title: str,
    *,
    fmt: str = "{:g}",
    marks: dict[tuple[int, int], str] | None = None,
) -> Table:
    """A 2-D array as a rich table with row/column indices; ``marks`` styles given cells."""
    table = Table(title=title, show_header=True, header_style="dim", pad_edge=False)
    table.add_column("", style="dim", justify="right")
    for c in range(data.shape[1]):
        table.add_column(str(c), justify="right")
    for r in range(data.shape[0]):
        cells = []
        for c in range(data.shape[1]):
            text = fmt.format(data[r, c])
            style = (marks or {}).get((r, c))
            cells.append(f"[{style}]{text}[/]" if style else text)
        table.add_row(str(r), *cells)
    return table


def render_worked_example(console: Console, ex: WorkedExample, *, short: bool = False) -> None:
    """Seed 000's math view; ``short`` shows only the output map and the sums that matter."""
    marks = {(r, c): "bold red" for r, c in ex.mismatches}
    marks[(0, 0)] = marks[(1, 0)] = "bold yellow"
    weights = ", ".join(f"{w:g}" for w in ex.kernel[0])
    if not short:
        console.print(
            Columns(
                [
                    _matrix(ex.maps[c], f"map {c + 1} (x {ex.kernel[0, c]:g})")
                    for c in range(ex.maps.shape[0])
                ]
            )
        )
        console.print(
            f"1x1 kernel of depth 1: one filter with weights ({weights}), "
            f"weight shape {ex.kernel.shape}"
        )
    terms = " + ".join(f"{ex.kernel[0, c]:g}*map{c + 1}" for c in range(ex.maps.shape[0]))
    console.print(
        _matrix(
            ex.output, f"T = {terms}, computed by onebyone.numpy.conv1x1", fmt="{:.1f}", marks=marks
        )
    )
    pixels = [(0, 0), (1, 0)] if short else [(0, 0), (1, 0), (3, 2)]
    for r, c in [*pixels, *ex.mismatches]:
        console.print(
            f"  T[{r},{c}] = {ex.spelled_sum(r, c)}   (seed prints {ex.printed[r, c]:.1f})"
        )
    if ex.mismatches:
        where = ", ".join(f"T[{r},{c}]" for r, c in ex.mismatches)
        console.print(
            f"  [bold red]The seed's printed map is wrong at {where}[/]: it shows "
            + ", ".join(f"{ex.printed[r, c]:g}" for r, c in ex.mismatches)
            + "; the weighted sum gives "
            + ", ".join(f"{ex.output[r, c]:.1f}" for r, c in ex.mismatches)
            + ". All other pixels agree."
        )
    else:
        console.print("  Every pixel agrees with the seed's printed map.")
    shape = "x".join(map(str, ex.output.shape))
    console.print(
        f"  The seed's text calls the output 5x5; a 1x1 convolution keeps the "
        f"{'x'.join(map(str, ex.maps.shape[1:]))} size, and the computed map is {shape}."
    )


def _render_fusion(console: Console, ex: FusionExample) -> None:
    console.print(
        f"The seed leaves a and b symbolic; here a = {ex.a:g} (horizontal strokes, "
        f"map 1) and b = {ex.b:g} (vertical strokes, map 2), distinct so the fused "
        "map shows which map each stroke came from. (row, column) from 0."
    )
    w1, w2 = ex.weight[0]
    marks = dict.fromkeys(ex.differing["combined"], "bold yellow")
    for digit in (2, 3):
        console.print(
            Columns(
                [
                    _matrix(ex.maps[digit][0], f"digit {digit}: map 1"),
                    _matrix(ex.maps[digit][1], f"digit {digit}: map 2"),
                    _matrix(ex.combined[digit], f"{w1:g}*map1 + {w2:g}*map2", marks=marks),
                ]
            )
        )
    console.print(_matrix(ex.difference, "fused(2) - fused(3)", marks=marks))
    for name, pixels in ex.differing.items():
        where = ", ".join(f"({r},{c})" for r, c in pixels) or "nowhere"
        console.print(f"  {name} of the 2 and of the 3 differ at: {where}")
    for r, c in ex.differing["combined"]:
        owners = " and ".join(map(str, ex.digit_with_stroke_at(r, c)))
        console.print(
            f"  fused map at ({r},{c}): 2 -> {ex.combined[2][r, c]:g}, "
            f"3 -> {ex.combined[3][r, c]:g}: a stroke there means {owners}"
        )
    console.print(
        f"  Why it separates: map 1 carries no difference at all, map 2 carries all of it, and "
        f"the 1x1 convolution puts both into one map, so that one map holds the whole digit and "
        f"a single pixel of it decides: reading the separating pixels, the fused 2 is called "
        f"{ex.classify(ex.combined[2])} and the fused 3 is called {ex.classify(ex.combined[3])}."
    )
    console.print(
        "  The fused maps "
        + ("equal" if ex.printed_matches else "[bold red]differ from[/]")
        + " the seed's printed 'Output 1' and 'Output 2'."
    )
    claim = ex.digit_with_stroke_at(*SEED_CLAIM_PIXEL)
    console.print(
        f"  [bold red]The seed says[/] b at {SEED_CLAIM_PIXEL} means a 2 and no b there means a "
        f"3. Computed, the fused map has a stroke at {SEED_CLAIM_PIXEL} only for the "
        f"{' and the '.join(map(str, claim)) or 'neither digit'}: the rule is inverted. "
        "It holds for the pixel (3,0): b there means a 2."
    )
    console.print(
        "  [bold red]Also in the seed[/]: the second caption reads 'Feature map 1 of digit 2 + "
        "Feature map 2 of digit 2 --> Output 2', but those are the maps of the digit 3; and a "
        "1x1 convolution combines each pixel of map 1 with the pixel at the same place in map "
        "2 (a weighted sum), not with every pixel of map 2."
    )


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _render_reduction(console: Console, cases: Sequence[ReductionCase]) -> None:
    table = Table("", *(case.title for case in cases))
    rows: list[tuple[str, Callable[[ReductionCase], str]]] = [
        ("input (N x C x H x W)", lambda case: _shape(case.input_shape)),
        ("weight (K x C) + bias", lambda case: f"{_shape(case.weight_shape)} + {case.biases}"),
        ("output (N x K x H x W)", lambda case: _shape(case.output_shape)),
        ("parameters", lambda case: f"{case.params:,}"),
        ("MACs", lambda case: f"{case.macs:,}"),
        ("input memory", lambda case: f"{case.input_bytes / 1e6:,.3f} MB"),
        ("output memory", lambda case: f"{case.output_bytes / 1e6:,.3f} MB"),
        ("output / input", lambda case: f"{case.memory_ratio:.0%}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(case) for case in cases))
    console.print(table)
    console.print(
        "  Measured by running onebyone.nn.Conv1x1 on a float32 input of each shape. "
        "A MAC is one multiply-accumulate (FLOPs = 2 x MACs; bias adds not included). "
        "Every later layer reads the smaller output."
    )


def _render_bottleneck(console: Console, cmp: BottleneckComparison) -> None:
    table = Table("layer", "kernel", "output (CxHxW)", "parameters", "MACs")
    for design, layers in (("bottleneck", cmp.bottleneck), ("plain 3x3", cmp.plain)):
        table.add_row(f"[bold]{design}[/]")
        for layer in layers:
            table.add_row(
                f"  {layer.name}",
                _shape(layer.kernel),
                _shape(layer.output_shape[1:]),
                f"{layer.params:,}",
                f"{layer.macs:,}",
            )
        total_p = sum(x.params for x in layers)
        total_m = sum(x.macs for x in layers)
        table.add_row(
            "  [bold]total", "", "", f"[bold]{total_p:,}", f"[bold]{total_m:,}", end_section=True
        )
    console.print(table)
    (bp, pp), (bm, pm) = cmp.params, cmp.macs
    console.print(
        f"  Input {_shape(cmp.input_shape)}; the bottleneck gives {_shape(cmp.bottleneck_output)}, "
        f"the plain 3x3 {_shape(cmp.plain_output)}. The bottleneck needs {bp / pp:.0%} "
        f"of the parameters and {bm / pm:.0%} of the MACs ({pm / bm:.2f}x fewer)."
    )


def _render_fc(console: Console, eq: FCEquivalence) -> None:
    n, r, c = eq.pixel
    console.print(
        f"Input x: {eq.x.shape} (N, C, H, W). Conv1x1 weight W: {eq.weight.shape} "
        f"(K, C); the nn.Linear(in_features={eq.weight.shape[1]}, "
        f"out_features={eq.weight.shape[0]}) holds the same W and bias."
    )
    console.print(
        Columns(
            [_matrix(eq.weight, "W", fmt="{:.3f}"), _matrix(eq.bias[:, None], "b", fmt="{:.3f}")]
        )
    )
    console.print(f"  pixel (n={n}, row={r}, col={c}): x = {np.round(eq.pixel_input, 4)}")
    console.print(f"  Conv1x1 output there:   {np.round(eq.pixel_output, 4)}")
    console.print(f"  W @ x + b:              {np.round(eq.weight @ eq.pixel_input + eq.bias, 4)}")
    console.print(
        f"  nn.Linear on all {eq.x.shape[0] * eq.x.shape[2] * eq.x.shape[3]} pixels "
        f"(the (N, H, W, C) view, one row per pixel) against Conv1x1: max |difference| "
        f"= {eq.max_abs_difference:.2e} over {eq.conv_output.size} outputs "
        "(float32 rounding; the sums are added in different orders)."
    )


def _render_depth(console: Console, ex: DepthExample) -> None:
    table = Table("filters K", "weight (K x C)", "output (K x H x W)", "weights")
    h, w = ex.maps.shape[1:]
    for k in range(1, len(ex.names) + 1):
        table.add_row(str(k), f"{k} x {ex.maps.shape[0]}", f"{k} x {h} x {w}", str(ex.params(k)))
    console.print(table)
    console.print(
        Columns(
            [
                _matrix(
                    ex.outputs[k],
                    f"map {k + 1}: {name} ({', '.join(f'{v:.2g}' for v in ex.filters[k])})",
                    fmt="{:.2f}",
                )
                for k, name in enumerate(ex.names)
            ]
        )
    )
    diff = float(np.abs(ex.outputs - ex.one_at_a_time).max())
    console.print(
        f"  All {len(ex.names)} filters in one call and each filter alone give the same "
        f"maps (max |difference| = {diff:.1e}): the filters run in parallel and do not "
        "interact."
    )
    if np.array_equal(ex.filters[0], SEED_KERNEL[0]):
        console.print("  Map 1 uses the seed's kernel: it is the worked example's T.")


RENDERERS: dict[str, Callable[[Console, Any], None]] = {
    "worked-example": render_worked_example,
    "fusion": _render_fusion,
    "reduction": _render_reduction,
    "bottleneck": _render_bottleneck,
    "fc-equivalence": _render_fc,
    "depth": _render_depth,
}
"""How ``onebyone explain`` prints each topic's result."""


def _list(console: Console) -> None:
    table = Table("topic", "what it shows", title="onebyone explain TOPIC")
    for topic in TOPICS.values():
        table.add_row(topic.name, topic.summary)
    table.add_row("all", "every topic above, in order")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.topic is None:
        names = list(TOPICS) if args.save_figures is not None else []
    else:
        _checks.choice("TOPIC", args.topic, (*TOPICS, "all"))
        names = list(TOPICS) if args.topic == "all" else [get_topic(args.topic).name]
    outputs = {}  # every output checked before any work
    if args.html is not None:
        outputs["html"] = _files.output_folder(
            "--html", args.html, (*PAGE_FILES, DATA_FILE), force=args.force, modes=PAGE_MODES
        )
    if args.save_figures is not None:
        outputs["figures"] = _files.output_folder(
            "--save-figures", args.save_figures, [f"{name}.png" for name in names],
            force=args.force,
        )  # fmt: skip
        _optional.require("matplotlib.figure", "--save-figures")
    _files.check_all(list(outputs.values()))
    if args.topic is None and (args.html is None or args.save_figures is not None):
        _list(console)
    results = {}
    for name in names:
        topic = TOPICS[name]
        results[name] = topic.compute()
        if args.topic is not None:
            console.rule(f"[bold]{name}: {topic.summary}")
            RENDERERS[name](console, results[name])
    written = []
    with _files.staged(list(outputs.values())) as temps:
        for kind, temp in zip(outputs, temps, strict=True):
            if kind == "html":
                write_explorer(temp)
                written.append(str(outputs[kind].path / "index.html"))
            else:
                for name, result in results.items():
                    file = save_topic_figure(name, result, temp).name
                    written.append(f"  figure: {outputs[kind].path / file}")
    for line in written:
        console.print(line, highlight=False, soft_wrap=True)
    return 0
