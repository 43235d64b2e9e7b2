"""The explorer: a self-contained page where a learner changes weights and watches.

``write_explorer(directory)`` writes ``index.html`` with its stylesheet and
script from ``onebyone/explain/page/`` and one ``data.js`` that sets the global
``ONEBYONE_DATA`` (a script, because browsers refuse to ``fetch`` JSON from
``file://``). Nothing on the page is fetched from anywhere: it works offline.

Every number in ``data.js`` comes from the functions ``onebyone explain``
prints (``worked_example``, ``depth_example``, ``fusion_example``,
``conv_cost``, ``reduction_examples``, ``bottleneck_comparison``,
``fc_equivalence``) and from ``onebyone.profile`` of built-in models. The
page recomputes the same formulas in JavaScript as the controls change; the
tests check both against the library.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onebyone import _checks, _files
from onebyone.cost import CONVENTION, Cost, conv_cost
from onebyone.explain.costs import bottleneck_comparison, reduction_examples
from onebyone.explain.depth import depth_example
from onebyone.explain.equivalence import fc_equivalence
from onebyone.explain.fusion import SEED_CLAIM_PIXEL, SEED_FUSION_MAPS, fusion_example
from onebyone.explain.worked import worked_example

__all__ = [
    "DATA_FILE",
    "DATA_GLOBAL",
    "EXPLORER_MODELS",
    "GOOGLENET_3X3",
    "GOOGLENET_5X5",
    "PAGE_FILES",
    "PAGE_MODES",
    "SEED_STATED_SIZE",
    "explorer_data",
    "model_profile",
    "read_explorer_data",
    "write_explorer",
]

PAGE_FILES: tuple[str, ...] = ("index.html", "style.css", "explorer.js")
"""The page's static files, shipped in ``onebyone/explain/page/``."""

DATA_FILE = "data.js"
"""The generated script holding the library's numbers."""

PAGE_MODES = (0o644, 0o755)
"""``(file mode, folder mode)`` of the page, before the umask: it is meant to be served,
so unlike every other output of onebyone it is readable by others."""

DATA_GLOBAL = "ONEBYONE_DATA"
"""The global ``data.js`` sets (``window.ONEBYONE_DATA``)."""

EXPLORER_MODELS: tuple[str, ...] = ("mobilenet_v2", "resnet50", "googlenet", "squeezenet1_1")
"""Built-in models whose per-layer MACs the page shows (profiled at 224x224)."""

GOOGLENET_5X5: dict[str, int] = {
    "in_channels": 192,
    "out_channels": 32,
    "size": 28,
    "kernel_size": 5,
    "reduced": 16,
}
"""GoogLeNet's inception (3a) "5x5" branch: 192 maps of 28x28 -> 32, reduced to 16 first."""

GOOGLENET_3X3: dict[str, int] = {
    "in_channels": 192,
    "out_channels": 128,
    "size": 28,
    "kernel_size": 3,
    "reduced": 96,
}
"""GoogLeNet's inception (3a) 3x3 branch: 192 maps of 28x28 -> 128, reduced to 96 first."""

SEED_STATED_SIZE = (5, 5)
"""The output size seed 000's text states ("mapped to 1 feature maps of size 5x5")."""

_DATA_PREFIX = f"window.{DATA_GLOBAL} = "


def _cost(cost: Cost) -> dict[str, int]:
    return {"params": cost.params, "macs": cost.macs}


def _calculator_case(
    in_channels: int, out_channels: int, size: int, kernel_size: int, reduced: int
) -> dict[str, Any]:
    """Both designs the calculator draws, counted by ``conv_cost`` ("same" padding, bias)."""
    direct = conv_cost(in_channels, out_channels, kernel_size, input_size=size, padding="same")
    reduce = conv_cost(in_channels, reduced, input_size=size)
    conv = conv_cost(reduced, out_channels, kernel_size, input_size=size, padding="same")
    return {
        "inputs": {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "size": size,
            "kernel_size": kernel_size,
            "reduced": reduced,
        },
        "direct": _cost(direct),
        "reduce_1x1": _cost(reduce),
        "conv_after": _cost(conv),
        "reduced_total": _cost(reduce + conv),
    }


def model_profile(name: str, input_size: int = 224) -> dict[str, Any]:
    """One built-in model's per-layer MACs and parameters from ``onebyone.profile``.

    The model is profiled on the meta device (counts depend on shapes only, so
    no data is allocated); a model whose initialisation needs real data there
    is built on the CPU and moved. The counts are cached for the process.

    Args:
        name: a name from ``onebyone.list_models()``.
        input_size: ``H = W`` of the ``(1, 3, H, W)`` input.

    Returns:
        ``{"name", "input_shape", "macs", "params", "pointwise_macs",
        "pointwise_params", "layers"}``; ``layers`` lists every executed call
        with MACs, in order, as ``{"name", "op", "category", "kernel", "macs",
        "params", "output_shape"}`` (``kernel`` is ``None`` for a linear layer).

    Example:
        >>> p = model_profile("squeezenet1_1")
        >>> p["params"]
        1235496
    """
    from onebyone import list_models

    model = _checks.choice("name", name, tuple(list_models()))
    size = _checks.positive_int("input_size", input_size)
    return json.loads(_profile_json(model, size))  # a fresh copy for every caller


@functools.cache
def _profile_json(name: str, size: int) -> str:
    from onebyone import create_model, profile

    try:
        with torch.device("meta"):
            model = create_model(name)
    except NotImplementedError:  # an initialiser that reads data (e.g. truncated normal)
        model = create_model(name).to("meta")
    report = profile(model, (1, 3, size, size))
    layers = []
    for layer in report.layers:
        if layer.cost.macs == 0:
            continue
        module = model.get_submodule(layer.name) if layer.name else model
        kernel = (1, 1) if layer.category == "pointwise" else getattr(module, "kernel_size", None)
        if layer.category == "linear":
            kernel = None
        layers.append(
            {
                "name": layer.name,
                "op": layer.op,
                "category": layer.category,
                "kernel": None if kernel is None else [int(kernel[0]), int(kernel[1])],
                "macs": layer.cost.macs,
                "params": layer.cost.params,
                "output_shape": list(layer.output_shape),
            }
        )
    pointwise = report.by_category()["pointwise"]
    return json.dumps(
        {
            "name": name,
            "input_shape": [1, 3, size, size],
            "macs": report.total.macs,
            "params": report.total.params,
            "pointwise_macs": pointwise.macs,
            "pointwise_params": pointwise.params,
            "layers": layers,
        }
    )


def _pixels(pixels: Sequence[tuple[int, int]]) -> list[list[int]]:
    return [[int(r), int(c)] for r, c in pixels]


def explorer_data(models: Sequence[str] = EXPLORER_MODELS) -> dict[str, Any]:
    """Every number the explorer page shows, computed by the library, as plain JSON data.

    Args:
        models: built-in model names for the "real networks" section.

    Returns:
        A dict with the keys ``worked``, ``depth``, ``fusion``, ``costs``, ``fc``,
        ``models``, ``convention`` and ``version``; arrays are nested lists.

    Example:
        >>> data = explorer_data(models=["squeezenet1_1"])
        >>> data["worked"]["mismatches"]
        [[5, 2]]
    """
    from onebyone import __version__, list_models

    if isinstance(models, str) or not isinstance(models, Sequence):
        raise _checks.invalid("models", "a sequence of model names", models, kind=TypeError)
    names = [_checks.choice("models", m, tuple(list_models())) for m in models]

    ex = worked_example()
    h, w = ex.output.shape
    worked = {
        "maps": ex.maps.tolist(),
        "kernel": ex.kernel[0].tolist(),
        "output": ex.output.tolist(),
        "printed": ex.printed.tolist(),
        "mismatches": _pixels(ex.mismatches),
        "spelled": {f"{r},{c}": ex.spelled_sum(r, c) for r in range(h) for c in range(w)},
        "stated_size": list(SEED_STATED_SIZE),
    }

    depth = depth_example()
    fusion = fusion_example()
    eq = fc_equivalence()
    bottleneck = bottleneck_comparison()
    (b_params, p_params), (b_macs, p_macs) = bottleneck.params, bottleneck.macs
    return {
        "version": __version__,
        "convention": CONVENTION,
        "worked": worked,
        "depth": {
            "names": depth.names,
            "filters": depth.filters.tolist(),
            "outputs": depth.outputs.tolist(),
        },
        "fusion": {
            "a": fusion.a,
            "b": fusion.b,
            "weight": fusion.weight[0].tolist(),
            "pattern": {str(d): [list(m) for m in SEED_FUSION_MAPS[d]] for d in (2, 3)},
            "maps": {str(d): fusion.maps[d].tolist() for d in (2, 3)},
            "combined": {str(d): fusion.combined[d].tolist() for d in (2, 3)},
            "differing": _pixels(fusion.differing["combined"]),
            "claim_pixel": list(SEED_CLAIM_PIXEL),
        },
        "costs": {
            "googlenet_5x5": _calculator_case(**GOOGLENET_5X5),
            "googlenet_3x3": _calculator_case(**GOOGLENET_3X3),
            "reductions": [
                {
                    "title": case.title,
                    "input_shape": list(case.input_shape),
                    "output_shape": list(case.output_shape),
                    "params": case.params,
                    "macs": case.macs,
                    "input_bytes": case.input_bytes,
                    "output_bytes": case.output_bytes,
                }
                for case in reduction_examples()
            ],
            "bottleneck": {
                "input_shape": list(bottleneck.input_shape),
                "bottleneck": {"params": b_params, "macs": b_macs},
                "plain": {"params": p_params, "macs": p_macs},
                "layers": [
                    {
                        "design": design,
                        "name": layer.name,
                        "kernel": list(layer.kernel),
                        "params": layer.params,
                        "macs": layer.macs,
                    }
                    for design, group in (
                        ("bottleneck", bottleneck.bottleneck),
                        ("plain", bottleneck.plain),
                    )
                    for layer in group
                ],
            },
        },
        "fc": {
            "x": eq.x.astype(np.float64).tolist(),
            "weight": eq.weight.astype(np.float64).tolist(),
            "bias": eq.bias.astype(np.float64).tolist(),
            "conv_output": eq.conv_output.astype(np.float64).tolist(),
            "linear_output": eq.linear_output.astype(np.float64).tolist(),
            "max_abs_difference": eq.max_abs_difference,
            "pixel": list(eq.pixel),
        },
        "models": [model_profile(name) for name in names],
    }


def _data_script(data: dict[str, Any]) -> str:
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return (
        f"// Computed by onebyone {data.get('version', '')}; do not edit.\n{_DATA_PREFIX}{text};\n"
    )


def read_explorer_data(path: str | Path) -> dict[str, Any]:
    """Read the data back from a ``data.js`` that ``write_explorer`` wrote.

    Example:
        >>> import tempfile
        >>> out = write_explorer(tempfile.mkdtemp(), models=["squeezenet1_1"])
        >>> read_explorer_data(out.parent / DATA_FILE)["worked"]["kernel"]
        [0.1, 0.2, 0.4]
    """
    text = Path(path).read_text(encoding="utf-8")
    start = text.find(_DATA_PREFIX)
    if start < 0 or not text.rstrip().endswith(";"):
        raise _checks.invalid("path", f"a {DATA_FILE} written by write_explorer", str(path))
    return json.loads(text[start + len(_DATA_PREFIX) : text.rstrip().rfind(";")])


def write_explorer(directory: str | Path, *, models: Sequence[str] = EXPLORER_MODELS) -> Path:
    """Write the explorer page into ``directory`` and return the path of its ``index.html``.

    The folder gets ``index.html``, ``style.css``, ``explorer.js`` and
    ``data.js`` (other files in it are left alone). The data is computed before
    anything is written, and the files are written to a staging folder first,
    so a failure leaves no partial page behind.

    Args:
        directory: the folder (created if missing).
        models: built-in models for the "real networks" section.

    Example:
        >>> import tempfile
        >>> write_explorer(tempfile.mkdtemp(), models=["squeezenet1_1"]).name
        'index.html'
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise _checks.invalid("directory", "a folder path", directory, kind=TypeError)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise _checks.invalid("directory", "a folder (or a path to create one)", str(target))
    script = _data_script(explorer_data(models))
    page = resources.files("onebyone.explain") / "page"

    def write(folder: Path) -> None:
        for name in PAGE_FILES:
            (folder / name).write_bytes((page / name).read_bytes())
        (folder / DATA_FILE).write_text(script, encoding="utf-8")

    _files.write_folder(target, write, argument="directory", modes=PAGE_MODES)
    return target / "index.html"
