"""onebyone: 1x1 (pointwise) convolutions made first-class.

>>> import torch, onebyone as obo
>>> obo.conv1x1(torch.randn(1, 64, 8, 8), torch.randn(32, 64)).shape
torch.Size([1, 32, 8, 8])
"""

from importlib.metadata import PackageNotFoundError, version

# onebyone.numpy (the NumPy op) is imported but left out of __all__: `from
# onebyone import *` must not rebind the name `numpy`.
from onebyone import deploy, models, nn, transforms
from onebyone import numpy as numpy
from onebyone.activations import ACTIVATIONS
from onebyone.cost import CONVENTION, Cost, conv_cost
from onebyone.deploy import EngineUnavailableError, OptimizeReport, optimize
from onebyone.functional import BACKENDS, BackendUnavailableError, conv1x1, decompositions
from onebyone.models import create_model, list_models
from onebyone.profiling import MachinePeak, Profile, machine_peak, profile
from onebyone.transforms import (
    PassReport,
    VerificationError,
    VerifyReport,
    fold_batchnorm,
    fuse_epilogues,
    merge_pointwise,
    to_channels_last,
    verify,
)
from onebyone.transforms.compress import (
    CompressReport,
    compress,
    load_compressed,
    save_compressed,
)
from onebyone.weights import LAYOUTS, convert_weight

try:
    __version__ = version("onebyone")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

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
