"""onebyone: 1x1 (pointwise) convolutions made first-class.

>>> import torch, onebyone as obo
>>> obo.conv1x1(torch.randn(1, 64, 8, 8), torch.randn(32, 64)).shape
torch.Size([1, 32, 8, 8])
"""

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("onebyone")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

# The public API below imports torch. It is loaded on first use of any of its
# names (or at once when torch is already imported), so that `onebyone --help`
# and the NumPy op start without torch. onebyone.numpy (the NumPy op) is left
# out of __all__: `from onebyone import *` must not rebind the name `numpy`.
_SUBMODULES = ("deploy", "models", "nn", "transforms", "numpy")
_NAMES = {
    "onebyone.activations": ("ACTIVATIONS",),
    "onebyone.cost": ("CONVENTION", "Cost", "conv_cost"),
    "onebyone.deploy": ("EngineUnavailableError", "OptimizeReport", "optimize"),
    "onebyone.functional": ("BACKENDS", "BackendUnavailableError", "conv1x1", "decompositions"),
    "onebyone.models": ("create_model", "list_models"),
    "onebyone.profiling": ("MachinePeak", "Profile", "machine_peak", "profile"),
    "onebyone.transforms": (
        "PassReport", "VerificationError", "VerifyReport", "fold_batchnorm", "fuse_epilogues",
        "merge_pointwise", "to_channels_last", "verify",
    ),
    "onebyone.transforms.compress": (
        "CompressReport", "compress", "load_compressed", "save_compressed",
    ),
    "onebyone.weights": ("LAYOUTS", "convert_weight"),
}  # fmt: skip

if TYPE_CHECKING:
    from onebyone import deploy, models, nn, transforms
    from onebyone import numpy as numpy
    from onebyone.activations import ACTIVATIONS
    from onebyone.cost import CONVENTION, Cost, conv_cost
    from onebyone.deploy import (  # type: ignore[no-redef]
        EngineUnavailableError,
        OptimizeReport,
        optimize,
    )
    from onebyone.functional import BACKENDS, BackendUnavailableError, conv1x1, decompositions
    from onebyone.models import create_model, list_models
    from onebyone.profiling import MachinePeak, Profile, machine_peak, profile
    from onebyone.transforms import (
        PassReport,
        fold_batchnorm,
        fuse_epilogues,
        merge_pointwise,
        to_channels_last,
    )
    from onebyone.transforms.compress import (
        CompressReport,
        compress,
        load_compressed,
        save_compressed,
    )
    from onebyone.transforms.verify import VerificationError, VerifyReport, verify
    from onebyone.weights import LAYOUTS, convert_weight


def _load() -> None:
    """Import the public API into this module's namespace."""
    found = globals()
    for name in _SUBMODULES:
        found[name] = importlib.import_module(f"onebyone.{name}")
    for module_name, names in _NAMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            found[name] = getattr(module, name)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES or any(name in names for names in _NAMES.values()):
        _load()
        return globals()[name]
    raise AttributeError(f"module 'onebyone' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "numpy"})


if "torch" in sys.modules:  # a torch user: the op is registered on import, as always
    _load()

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "CONVENTION",
    "LAYOUTS",
    "BackendUnavailableError",
    "CompressReport",
    "Cost",
    "EngineUnavailableError",
    "MachinePeak",
    "OptimizeReport",
    "PassReport",
    "Profile",
    "VerificationError",
    "VerifyReport",
    "__version__",
    "compress",
    "conv1x1",
    "conv_cost",
    "convert_weight",
    "create_model",
    "decompositions",
    "deploy",
    "fold_batchnorm",
    "fuse_epilogues",
    "list_models",
    "load_compressed",
    "machine_peak",
    "merge_pointwise",
    "models",
    "nn",
    "optimize",
    "profile",
    "save_compressed",
    "to_channels_last",
    "transforms",
    "verify",
]
