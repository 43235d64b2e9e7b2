"""Figures for the explanations and the demo (matplotlib, no display needed).

Every function takes the computed result of a topic and returns a
``matplotlib.figure.Figure``; ``save_figure`` writes it as a PNG. Figures are
built on ``Figure`` objects directly (the Agg renderer), never through
``pyplot``'s global state, so they work on machines without a display and
leave no windows or global figures behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onebyone import _checks, _files, _optional
from onebyone.explain.fusion import SEED_CLAIM_PIXEL

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from onebyone.explain.costs import BottleneckComparison, ReductionCase
    from onebyone.explain.depth import DepthExample
    from onebyone.explain.digits import EpochStats
    from onebyone.explain.equivalence import FCEquivalence
    from onebyone.explain.fusion import FusionExample
    from onebyone.explain.worked import WorkedExample

__all__ = [
    "CostRow",
    "bottleneck_figure",
    "cost_breakdown_figure",
    "depth_figure",
    "fc_equivalence_figure",
    "feature_maps_figure",
    "fusion_figure",
    "learned_weights_figure",
    "reduction_figure",
    "save_figure",
    "training_curves_figure",
    "worked_example_figure",
]

DPI = 110
HIGHLIGHT = "#ff7f0e"  # orange: the pixel being explained
WRONG = "#d62728"  # red: where the seed's printed number is wrong
COLORS = {"1x1": "#1f77b4", "3x3": "#ff7f0e", "other": "#7f7f7f"}


def _figure(width: float, height: float) -> Figure:
    figure = _optional.require("matplotlib.figure", "a figure of onebyone.explain").Figure
    return figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders are created); returns the path.

    Written by ``onebyone._files``' rule: whole or not at all, mode ``0o600``.
    """
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise _checks.invalid("path", "a file name ending in .png", str(path))
    return _files.write_file(out, lambda temp: fig.savefig(temp, format="png", dpi=DPI))


def _heatmap(
    ax: Axes,
    data: np.ndarray,
    title: str,
    *,
    cmap: str = "viridis",
    fmt: str = "{:g}",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    colorbar: bool = True,
    cbar_label: str | None = None,
) -> Any:
    """Draw a matrix with row/column indices, optional values in the cells and a colour bar."""
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=11)
    rows, cols = data.shape
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel("column", fontsize=9)
    ax.set_ylabel("row", fontsize=9)
    ax.tick_params(labelsize=8)
    if annotate:
        for r in range(rows):
            for c in range(cols):
                red, green, blue, _ = im.cmap(im.norm(data[r, c]))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # cell luminance
                ax.text(
                    c,
                    r,
                    fmt.format(data[r, c]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if dark else "black",
                )
    if colorbar:
        fig = ax.get_figure()
        assert fig is not None
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        if cbar_label:
            bar.set_label(cbar_label, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return im


def _box(ax: Axes, row: int, col: int, color: str, width: float = 2.5) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=width)
    )


def worked_example_figure(ex: WorkedExample) -> Figure:
    """Seed 000's math view: three maps, their weights, and the computed output map."""
    fig = _figure(17, 4.6)
    axes = fig.subplots(1, 4)
    vmax = float(ex.maps.max())
    for c in range(ex.maps.shape[0]):
        _heatmap(
            axes[c],
            ex.maps[c],
            f"map {c + 1}  (weight {ex.kernel[0, c]:g})",
            vmin=0,
            vmax=vmax,
            colorbar=c == ex.maps.shape[0] - 1,
            cbar_label="input value",
        )
        _box(axes[c], 0, 0, HIGHLIGHT)
    terms = " + ".join(f"{ex.kernel[0, c]:g}·map{c + 1}" for c in range(ex.maps.shape[0]))
    _heatmap(
        axes[3], ex.output, f"T = {terms}", cmap="magma", fmt="{:.1f}", cbar_label="output value"
    )
    _box(axes[3], 0, 0, HIGHLIGHT)
    for r, c in ex.mismatches:
        _box(axes[3], r, c, WRONG, width=3.5)
    lines = [f"orange box: T[0,0] = {ex.spelled_sum(0, 0)} (the same pixel of every map)"]
    lines += [
        f"red box: the seed prints T[{r},{c}] = {ex.printed[r, c]:g}; "
        f"the sum is {ex.spelled_sum(r, c)}"
        for r, c in ex.mismatches
    ]
    fig.suptitle(
        "A 1x1 convolution with one filter: a weighted sum of the maps at every pixel\n"
        + "   |   ".join(lines),
        fontsize=12,
    )
    return fig


def fusion_figure(ex: FusionExample) -> Figure:
    """The digit 2 and digit 3 feature maps, their 1x1 fusion, and where the fusions differ."""
    fig = _figure(15, 7.5)
    grid = fig.add_gridspec(2, 4)
    vmax = max(float(m.max()) for m in ex.combined.values())
    w1, w2 = ex.weight[0]
    titles = (
        "map 1 (horizontal strokes, a)",
        "map 2 (vertical strokes, b)",
        f"fused: {w1:g}·map1 + {w2:g}·map2",
    )
    block = []
    for row, digit in enumerate((2, 3)):
        panels = (ex.maps[digit][0], ex.maps[digit][1], ex.combined[digit])
        for col, (data, title) in enumerate(zip(panels, titles, strict=True)):
            ax = fig.add_subplot(grid[row, col])
            im = _heatmap(
                ax, data, f"digit {digit}: {title}", cmap="Blues", vmin=0, vmax=vmax, colorbar=False
            )
            block.append(ax)
            if col == 2:
                for r, c in ex.differing["combined"]:
                    _box(ax, r, c, HIGHLIGHT)
    fig.colorbar(im, ax=block, shrink=0.6, label="value in the map")
    ax = fig.add_subplot(grid[:, 3])
    diff = ex.difference
    lim = float(np.abs(diff).max()) or 1.0
    _heatmap(
        ax, diff, "fused(2) − fused(3)", cmap="RdBu_r", vmin=-lim, vmax=lim, cbar_label="difference"
    )
    for r, c in ex.differing["combined"]:
        _box(ax, r, c, HIGHLIGHT)
    pixels = ", ".join(f"({r},{c})" for r, c in ex.differing["combined"])
    owners = "; ".join(
        f"a stroke at ({r},{c}) means {' or '.join(map(str, ex.digit_with_stroke_at(r, c)))}"
        for r, c in ex.differing["combined"]
    )
    fig.suptitle(
        f"Fusing two feature maps with one 1x1 convolution (a = {ex.a:g}, b = {ex.b:g}, "
        "(row, column) from 0).\n"
        f"Map 1 is identical for both digits; the fused maps differ only at {pixels} "
        f"(orange): {owners}.\n"
        f"The seed says b at {SEED_CLAIM_PIXEL} means a 2; computed, only the "
        f"{' and the '.join(map(str, ex.digit_with_stroke_at(*SEED_CLAIM_PIXEL))) or 'neither'}"
        f" has a stroke there.",
        fontsize=12,
    )
    return fig


def reduction_figure(cases: Sequence[ReductionCase]) -> Figure:
    """Memory of the maps before and after each 1x1 reduction, with parameters and MACs."""
    fig = _figure(6 * len(cases), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(cases)))
    for ax, case in zip(axes, cases, strict=True):
        values = [case.input_bytes / 1e6, case.output_bytes / 1e6, case.weight_bytes / 1e6]
        labels = [
            f"input\n{'x'.join(map(str, case.input_shape[1:]))}",
            f"output\n{'x'.join(map(str, case.output_shape[1:]))}",
            f"weights\n{'x'.join(map(str, case.weight_shape))} + bias",
        ]
        bars = ax.bar(labels, values, color=["#7f7f7f", COLORS["1x1"], COLORS["3x3"]])
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                f"{v:,.3f} MB" if v < 1 else f"{v:,.1f} MB",
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=10,
            )
        ax.set_ylabel("megabytes (float32)")
        ax.set_title(
            f"{case.title}\n{case.params:,} parameters, {case.macs:,} MACs\n"
            f"output is {case.memory_ratio:.0%} of the input's memory",
            fontsize=11,
        )
        ax.margins(y=0.15)
    fig.suptitle("Dimensionality reduction with a 1x1 convolution", fontsize=13)
    return fig


def bottleneck_figure(cmp: BottleneckComparison) -> Figure:
    """Parameters and MACs per layer: 1x1 -> 3x3 -> 1x1 bottleneck against a plain 3x3."""
    from matplotlib.ticker import StrMethodFormatter

    fig = _figure(13, 5.2)
    axes = fig.subplots(1, 2)
    designs = (("bottleneck\n1x1 → 3x3 → 1x1", cmp.bottleneck), ("plain 3x3", cmp.plain))
    for ax, field, label in zip(axes, ("params", "macs"), ("parameters", "MACs"), strict=True):
        for x, (_, layers) in enumerate(designs):
            bottom = 0
            for layer in layers:
                value = int(getattr(layer, field))
                kind = "1x1" if layer.kernel == (1, 1) else "3x3"
                ax.bar(x, value, bottom=bottom, color=COLORS[kind], edgecolor="white")
                if value > 0.15 * max(getattr(cmp, field)):
                    ax.text(
                        x,
                        bottom + value / 2,
                        f"{layer.name}\n{value:,}",
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white",
                    )
                else:
                    ax.text(
                        x + 0.41,
                        bottom + value / 2,
                        f"{layer.name} {value:,}",
                        ha="left",
                        va="center",
                        fontsize=9,
                    )
                bottom += value
            ax.annotate(f"total {bottom:,}", (x, bottom), ha="center", va="bottom", fontsize=10)
        b, p = getattr(cmp, field)
        ax.set_xticks(range(2), [name for name, _ in designs])
        ax.set_xlim(-0.6, 1.6)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_ylabel(label)
        ax.set_title(f"{label}: the bottleneck needs {b / p:.0%} of the plain 3x3", fontsize=11)
        ax.margins(y=0.12)
    from matplotlib.patches import Patch

    axes[0].legend(
        handles=[Patch(color=COLORS["1x1"], label="1x1"), Patch(color=COLORS["3x3"], label="3x3")],
        loc="upper left",
    )
    shape = "x".join(map(str, cmp.input_shape[1:]))
    widths = " → ".join(
        [str(cmp.bottleneck[0].input_shape[1])] + [str(x.output_shape[1]) for x in cmp.bottleneck]
    )
    fig.suptitle(
        f"Bottleneck {widths} against a plain 3x3 of the same width: same input and output "
        f"({shape}), ReLU after each convolution",
        fontsize=13,
    )
    return fig


def fc_equivalence_figure(eq: FCEquivalence) -> Figure:
    """The shared weights, one pixel worked through, and conv outputs against linear outputs."""
    fig = _figure(16, 4.8)
    axes = fig.subplots(1, 3, width_ratios=[1.2, 1.2, 1])
    lim = float(np.abs(eq.weight).max())
    _heatmap(
        axes[0],
        eq.weight,
        "weight W (K x C), shared by both",
        cmap="RdBu_r",
        fmt="{:.2f}",
        vmin=-lim,
        vmax=lim,
        cbar_label="weight",
    )
    axes[0].set_xlabel("input channel c")
    axes[0].set_ylabel("output channel k")
    n, r, c = eq.pixel
    k = np.arange(eq.weight.shape[0])
    linear_pixel = eq.weight @ eq.pixel_input + eq.bias
    axes[1].bar(k - 0.2, eq.pixel_output, 0.4, label="Conv1x1 output at the pixel")
    axes[1].bar(k + 0.2, linear_pixel, 0.4, label="W @ x[pixel] + b")
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_xticks(k, [f"k={i}" for i in k])
    axes[1].set_ylabel("value")
    axes[1].set_title(
        f"pixel (n={n}, row={r}, col={c}): x = {np.round(eq.pixel_input, 2)}", fontsize=10
    )
    axes[1].legend(fontsize=9)
    a, b = eq.conv_output.ravel(), eq.linear_output.ravel()
    axes[2].scatter(a, b, s=14)
    line = [min(a.min(), b.min()), max(a.max(), b.max())]
    axes[2].plot(line, line, color="black", linewidth=0.8, label="y = x")
    axes[2].set_xlabel("Conv1x1 output")
    axes[2].set_ylabel("nn.Linear output (pixels as rows)")
    axes[2].set_title(
        f"all {a.size} outputs; max |difference| = {eq.max_abs_difference:.1e}", fontsize=10
    )
    axes[2].legend(fontsize=9)
    fig.suptitle("A 1x1 convolution is a fully connected layer applied at every pixel", fontsize=13)
    return fig


def depth_figure(ex: DepthExample) -> Figure:
    """The input maps on top, one output map per filter below."""
    c, k = ex.maps.shape[0], ex.filters.shape[0]
    cols = max(c, k)
    fig = _figure(5 * cols, 9)
    axes = fig.subplots(2, cols, squeeze=False)
    vmax = float(ex.maps.max())
    for i in range(cols):
        if i < c:
            _heatmap(
                axes[0, i],
                ex.maps[i],
                f"input map {i + 1}",
                vmin=0,
                vmax=vmax,
                cbar_label="input value",
            )
        else:
            axes[0, i].axis("off")
        if i < k:
            weights = ", ".join(f"{w:.2g}" for w in ex.filters[i])
            lim = float(np.abs(ex.outputs[i]).max()) or 1.0
            cmap = "RdBu_r" if ex.outputs[i].min() < 0 else "magma"
            _heatmap(
                axes[1, i],
                ex.outputs[i],
                f"output map {i + 1}: {ex.names[i]}\nfilter ({weights})",
                cmap=cmap,
                fmt="{:.1f}",
                vmin=-lim if cmap == "RdBu_r" else None,
                vmax=lim if cmap == "RdBu_r" else None,
                cbar_label="output value",
            )
        else:
            axes[1, i].axis("off")
    fig.suptitle(
        f"{k} filters of depth {c} in parallel: weight ({k} x {c}), "
        f"{k} output maps, {ex.params(k)} weights",
        fontsize=13,
    )
    return fig


def training_curves_figure(history: Sequence[EpochStats], target: float = 0.97) -> Figure:
    """Loss and accuracy per epoch, training and held-out test."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(12, 4.5)
    axes = fig.subplots(1, 2)
    epochs = [e.epoch for e in history]
    axes[0].plot(epochs, [e.train_loss for e in history], "o-", label="training")
    axes[0].plot(epochs, [e.test_loss for e in history], "s-", label="held-out test")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cross-entropy (log scale)")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [100 * e.train_accuracy for e in history], "o-", label="training")
    axes[1].plot(epochs, [100 * e.test_accuracy for e in history], "s-", label="held-out test")
    axes[1].axhline(100 * target, color="gray", linestyle="--", label=f"{target:.0%} target")
    axes[1].set_ylabel("accuracy (%)")
    last = history[-1]
    axes[1].set_title(
        f"accuracy: {last.test_accuracy:.1%} on the test set after epoch {last.epoch}"
    )
    axes[1].set_ylim(max(0.0, 100 * min(e.test_accuracy for e in history) - 5), 100.5)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Network-in-Network on scikit-learn's 8x8 handwritten digits", fontsize=13)
    return fig


def feature_maps_figure(
    images: dict[int, np.ndarray],
    before: dict[int, np.ndarray],
    after: dict[int, np.ndarray],
    channels_before: Sequence[int],
    channels_after: Sequence[int],
    layer: str,
) -> Figure:
    """Digit images and the chosen maps just before and just after one 1x1 layer.

    Args:
        images: digit -> ``(8, 8)`` image.
        before, after: digit -> ``(C, 8, 8)`` maps going into and out of the 1x1 layer.
        channels_before, channels_after: which maps to show.
        layer: the 1x1 layer's name, for the title.
    """
    digits = list(images)
    nb, na = len(channels_before), len(channels_after)
    fig = _figure(2.1 * (1 + nb + na) + 2, 2.3 * len(digits) + 1.2)
    axes = fig.subplots(len(digits), 1 + nb + na, squeeze=False)
    vb = max(float(before[d][list(channels_before)].max()) for d in digits) or 1.0
    va = max(float(after[d][list(channels_after)].max()) for d in digits) or 1.0
    for row, d in enumerate(digits):
        axes[row, 0].imshow(images[d], cmap="gray_r", vmin=0, vmax=1)
        axes[row, 0].set_title(f"image of a {d}", fontsize=10)
        im_b = im_a = None
        for i, ch in enumerate(channels_before):
            im_b = axes[row, 1 + i].imshow(before[d][ch], cmap="viridis", vmin=0, vmax=vb)
            axes[row, 1 + i].set_title(f"before: map {ch}", fontsize=10)
        for i, ch in enumerate(channels_after):
            im_a = axes[row, 1 + nb + i].imshow(after[d][ch], cmap="magma", vmin=0, vmax=va)
            axes[row, 1 + nb + i].set_title(f"after 1x1: map {ch}", fontsize=10)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    assert im_b is not None and im_a is not None
    fig.colorbar(im_b, ax=axes[:, 1 : 1 + nb].ravel().tolist(), shrink=0.8, label="before 1x1")
    fig.colorbar(im_a, ax=axes[:, 1 + nb :].ravel().tolist(), shrink=0.8, label="after 1x1")
    fig.suptitle(
        f"Feature maps of a 2 and a 3 going into and out of the 1x1 layer {layer}: every map "
        "after it is, pixel by pixel, ReLU(weighted sum of all maps before it + bias)\n"
        "(shown: the maps whose mean differs most between the two digits)",
        fontsize=12,
    )
    return fig


def learned_weights_figure(
    weights: dict[str, np.ndarray], row_labels: dict[str, str] | None = None
) -> Figure:
    """Heat maps of learned 1x1 weight matrices ``(K, C)``, one panel per layer.

    Args:
        weights: layer name -> its ``(K, C)`` weight.
        row_labels: layer name -> what its rows are (default ``"output map k"``).
    """
    fig = _figure(7 * len(weights), 5.5)
    axes = np.atleast_1d(fig.subplots(1, len(weights)))
    for ax, (name, w) in zip(axes, weights.items(), strict=True):
        lim = float(np.abs(w).max()) or 1.0
        im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(f"{name}: weight {w.shape[0]} x {w.shape[1]}", fontsize=11)
        ax.set_xlabel("input map c")
        ax.set_ylabel((row_labels or {}).get(name, "output map k"))
        if w.shape[0] <= 16:
            ax.set_yticks(range(w.shape[0]))
        bar = fig.colorbar(im, ax=ax)
        bar.set_label("weight W[k, c]")
    fig.suptitle(
        "Learned 1x1 weights: output map k = sum over c of W[k, c] x input map c "
        "(red: adds the map, blue: subtracts it)",
        fontsize=12,
    )
    return fig


CostRow = tuple[str, str, int, int]
"""``(layer name, kind, parameters, MACs)``; kind is ``"1x1"``, ``"3x3"`` or ``"other"``."""


def cost_breakdown_figure(variants: dict[str, Sequence[CostRow]]) -> Figure:
    """MACs and parameters per layer, one panel pair per network variant (shared scales)."""
    from matplotlib.ticker import StrMethodFormatter

    names = list(variants)
    fig = _figure(13, 1.6 + 0.38 * max(len(v) for v in variants.values()) * len(names))
    axes = fig.subplots(len(names), 2, squeeze=False, sharex="col")
    for row, name in enumerate(names):
        rows = list(variants[name])
        labels = [r[0] for r in rows]
        colors = [COLORS.get(r[1], COLORS["other"]) for r in rows]
        columns = (("MACs", [r[3] for r in rows]), ("parameters", [r[2] for r in rows]))
        for col, (label, values) in enumerate(columns):
            ax = axes[row, col]
            total = sum(values)
            ax.barh(range(len(rows)), values, color=colors)
            ax.set_yticks(range(len(rows)), labels, fontsize=9)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.set_title(f"{name}: {total:,} {label}", fontsize=11)
            for i, v in enumerate(values):
                if v:
                    ax.text(v, i, f" {v / total:.0%}", va="center", fontsize=8)
            ax.margins(x=0.15)
    from matplotlib.patches import Patch

    axes[0, 0].legend(
        handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="lower right"
    )
    fig.suptitle("Where the cost is: per-layer MACs and parameters", fontsize=13)
    return fig
