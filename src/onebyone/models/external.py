"""Models nobody here wrote: ``timm:NAME`` and ``torchvision:NAME``.

``load_external("timm:resnet50")`` builds timm's architecture with random
weights (``pretrained=False``: nothing is downloaded); ``"torchvision:resnet50"``
likewise with ``weights=None``. Both packages are optional.

torchvision ships compiled operators (``torchvision::nms`` and relatives) and
registers their shapes at import. Where its compiled library does not match the
installed PyTorch (a CPU-only build beside a wheel made for another), that
import fails with "operator torchvision::nms does not exist" even though
classification models never call those operators. ``import_torchvision``
declares the two operators it registers unconditionally (without a kernel:
calling them still fails, with PyTorch's own message) and then imports it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from onebyone import _checks

__all__ = ["SOURCES", "import_timm", "import_torchvision", "is_external", "load_external"]

SOURCES: dict[str, str] = {"timm": "timm", "torchvision": "torchvision"}
"""``prefix -> pip package`` of the model sources ``load_external`` knows."""

# Schemas of the operators torchvision registers fake kernels for at import time,
# whether or not its compiled library loaded (torchvision/_meta_registrations.py).
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[torch.library.Library] = []  # kept alive: a dropped Library unregisters


def _declare_torchvision_operators() -> None:
    if _declared:
        return
    missing = [
        s for s in _TORCHVISION_SCHEMAS if not _operator_exists(f"torchvision::{s.split('(')[0]}")
    ]
    if not missing:
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        library.define(schema)
    _declared.append(library)


def _operator_exists(qualified_name: str) -> bool:
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(qualified_name, "CPU")
    except RuntimeError:  # "operator ... does not exist"
        return False
    return True


def import_torchvision() -> ModuleType:
    """``import torchvision``, declaring its compiled operators first where they are missing.

    Raises:
        ImportError: torchvision is not installed.
    """
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        # torchvision's own library first: where it loads, the operators exist and
        # declaring them here would clash with its definitions
        with contextlib.suppress(OSError, RuntimeError):
            torch.ops.load_library(_extension_path())
        _declare_torchvision_operators()
    return importlib.import_module("torchvision")


def _extension_path() -> str:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        raise OSError("torchvision is not a package here")
    folder = Path(next(iter(spec.submodule_search_locations)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_C{suffix}"
        if candidate.exists():
            return str(candidate)
    raise OSError(f"no compiled library in {folder}")


def import_timm() -> ModuleType:
    """``import timm`` (which imports torchvision: see ``import_torchvision``).

    Raises:
        ImportError: timm is not installed.
    """
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()
    return importlib.import_module("timm")


def is_external(spec: object) -> bool:
    """Whether ``spec`` names a model of an external source (``"timm:resnet50"``)."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in SOURCES and ":" in spec


def load_external(spec: str, **kwargs: Any) -> nn.Module:
    """Build ``timm:NAME`` or ``torchvision:NAME`` with random weights.

    Args:
        spec: ``"timm:NAME"`` (any name ``timm.list_models()`` gives) or
            ``"torchvision:NAME"`` (a builder of ``torchvision.models``).
        **kwargs: keyword arguments for the builder (``num_classes=10``, ...).

    Returns:
        The model, in training mode as the builders return it.

    Raises:
        ValueError: an unknown prefix or name.
        ImportError: the package is not installed (the message names the pip install).

    Example:
        >>> from onebyone.models.external import load_external
        >>> model = load_external("timm:resnet18", num_classes=10)  # doctest: +SKIP
    """
    if not is_external(spec):
        raise _checks.invalid(
            "spec", f"'SOURCE:NAME' with SOURCE one of {', '.join(SOURCES)}", spec
        )
    source, name = spec.split(":", 1)
    try:
        module = import_timm() if source == "timm" else import_torchvision()
    except ImportError as exc:
        raise ImportError(
            f"{spec} needs the `{SOURCES[source]}` package: pip install {SOURCES[source]} "
            f"(or pip install 'onebyone[models]'); importing it failed: {exc}"
        ) from exc
    if source == "timm":
        if not module.is_model(name):
            close = module.list_models(f"*{name}*")[:5]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise _checks.invalid("MODEL", f"a timm architecture{hint}", spec)
        return module.create_model(name, pretrained=False, **kwargs)
    builders = module.models.list_models()
    if name not in builders:
        raise _checks.invalid("MODEL", "a torchvision.models builder name", spec)
    return module.models.get_model(name, weights=None, **kwargs)
