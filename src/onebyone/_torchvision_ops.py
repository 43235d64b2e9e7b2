"""torchvision's compiled operators, declared where its compiled library does not load.

torchvision ships compiled operators (``torchvision::nms`` and relatives) and
registers their shapes at import. Where its compiled library does not match the
installed PyTorch (a CPU-only build beside a wheel made for another), that
import fails with "operator torchvision::nms does not exist" even though
classification models never call those operators. ``prepare`` loads the
compiled library where it can and otherwise declares the two operators
torchvision registers unconditionally (without a kernel: calling them still
fails, with PyTorch's own message).

``install`` puts a ``sys.meta_path`` finder in place that calls ``prepare`` when
``torchvision`` is first imported and then steps aside. The virtual environment
the project's Makefile builds runs it at interpreter start through a ``.pth``
file (``write_pth`` writes it), so a user's
own ``import torchvision`` or ``import timm`` works there. This module imports
only the standard library until torchvision is imported: interpreter start
stays free of torch, and the ``.pth`` loads this file without importing the
``onebyone`` package.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["PTH_NAME", "install", "prepare", "write_pth"]

PTH_NAME = "onebyone-torchvision.pth"
"""The start-up file's name: it sorts after setuptools' ``__editable__.*.pth``, which
puts the source tree on ``sys.path`` first."""

# Schemas of the operators torchvision registers fake kernels for at import time,
# whether or not its compiled library loaded (torchvision/_meta_registrations.py).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[Any] = []  # the torch.library.Library, kept alive: a dropped one unregisters

# One line, run by `site` at interpreter start: find the installed `onebyone` package
# without importing it, load this file from it under its own name, install the finder.
# (Nothing happens where onebyone or this file is gone: a stale .pth stays silent.)
_PTH_LINE = (
    "import importlib.util as u, os, sys; s = u.find_spec('onebyone'); "
    "p = s and s.origin and os.path.join(os.path.dirname(s.origin), '_torchvision_ops.py'); "
    "f = p and os.path.exists(p) and u.spec_from_file_location('onebyone._torchvision_ops', p); "
    "m = f and u.module_from_spec(f); "
    "m and (sys.modules.setdefault(f.name, m), f.loader.exec_module(m), m.install())\n"
)


def prepare() -> None:
    """Make ``import torchvision`` work: load its compiled library, else declare the
    operators it registers at import. Does nothing where torchvision is not installed."""
    _uninstall()  # once is enough: the finder's work is done here
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    # torchvision's own library first: where it loads, the operators exist and
    # declaring them here would clash with its definitions
    with contextlib.suppress(OSError, RuntimeError):
        torch.ops.load_library(_extension_path())
    if _declared:
        return
    missing = [s for s in _SCHEMAS if not _operator_exists(f"torchvision::{s.split('(')[0]}")]
    if not missing:
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        library.define(schema)
    _declared.append(library)


def _operator_exists(qualified_name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(qualified_name, "CPU")
    except RuntimeError:  # "operator ... does not exist"
        return False
    return True


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


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Finds nothing: on the first ``import torchvision`` it steps aside, calls
    ``prepare`` and lets the ordinary finders import torchvision."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision":
            with contextlib.suppress(ImportError):  # no torch: torchvision's import says so
                prepare()
        return None


def install() -> None:
    """Call ``prepare`` when ``torchvision`` is first imported (once; imports nothing now)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionFinder)]


def write_pth(site_dir: str | Path | None = None) -> Path:
    """Write the start-up file that runs ``install`` at every interpreter start.

    Args:
        site_dir: a site-packages folder; defaults to the running interpreter's.

    Returns:
        The file written (``PTH_NAME`` in ``site_dir``).
    """
    folder = Path(sysconfig.get_path("purelib") if site_dir is None else site_dir)
    target = folder / PTH_NAME
    target.write_text(_PTH_LINE)
    return target
