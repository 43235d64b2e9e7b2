"""Models nobody here wrote: ``timm:NAME`` and ``torchvision:NAME``.

``load_external("timm:resnet50")`` builds timm's architecture with random
weights (``pretrained=False``: nothing is downloaded); ``"torchvision:resnet50"``
likewise with ``weights=None``. Both packages are optional.

torchvision ships compiled operators (``torchvision::nms`` and relatives) and
registers their shapes at import. Where its compiled library does not match the
installed PyTorch (a CPU-only build beside a wheel made for another), that
import fails with "operator torchvision::nms does not exist" even though
classification models never call those operators. ``import_torchvision``
declares them first (``onebyone._torchvision_ops``, which the Makefile's virtual
environment also runs at interpreter start) and then imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

from torch import nn

from onebyone import _checks
from onebyone._torchvision_ops import prepare

__all__ = ["SOURCES", "import_timm", "import_torchvision", "is_external", "load_external"]

SOURCES: dict[str, str] = {"timm": "timm", "torchvision": "torchvision"}
"""``prefix -> pip package`` of the model sources ``load_external`` knows."""


def import_torchvision() -> ModuleType:
    """``import torchvision``, declaring its compiled operators first where they are missing
    (``onebyone._torchvision_ops.prepare``).

    Raises:
        ImportError: torchvision is not installed.
    """
    prepare()
    return importlib.import_module("torchvision")


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
