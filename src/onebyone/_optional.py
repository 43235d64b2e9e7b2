"""Optional dependencies: one import with an error that names the pip install.

``pip install onebyone`` brings NumPy, PyTorch, rich and safetensors; figures
and the demo's data set need the ``explain`` extra (matplotlib, scikit-learn),
running ONNX files the ``onnx`` extra, OpenVINO the ``openvino`` extra, timm models
the ``models`` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from onebyone import _checks

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "explain"),
    "sklearn": ("scikit-learn", "explain"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
    "timm": ("timm", "models"),
}
"""``module -> (pip package, onebyone extra)`` of the optional imports ``require`` knows."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` naming what needs it and the pip install.

    Args:
        module: a top-level module of ``EXTRAS`` (``"matplotlib"``) or one of its
            submodules (``"matplotlib.figure"``).
        purpose: what needs it, for the message (``"--plot"``).

    Raises:
        ImportError: ``"--plot needs matplotlib (No module named 'matplotlib'):
            pip install 'onebyone[explain]'"``.

    Example:
        >>> from onebyone._optional import require
        >>> require("matplotlib.figure", "a figure").__name__  # doctest: +SKIP
        'matplotlib.figure'
    """
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise _checks.invalid("module", f"one of {', '.join(EXTRAS)} or a submodule", module)
    package, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs {package} ({exc}): pip install 'onebyone[{extra}]'"
        ) from exc
