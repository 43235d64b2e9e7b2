"""int8 building blocks: the user's data as calibration and held-out batches, the three
engines' post-training quantisers (NNCF on OpenVINO, ONNX Runtime's ``quantize_static``,
PT2E on the torch engine), and the accuracy budget a lossy candidate is held to.

Each builder takes what its float32 engine takes and returns a module called like the
original model; none of them quantises by itself: the libraries made for it do.
"""

from onebyone.deploy.quantize.budget import (
    DEFAULT_MAX_DROP,
    AccuracyReport,
    accuracy_report,
    check_max_drop,
    measure,
)
from onebyone.deploy.quantize.data import Batch, SplitData, reference_outputs, split_data

__all__ = [
    "DEFAULT_MAX_DROP",
    "AccuracyReport",
    "Batch",
    "SplitData",
    "accuracy_report",
    "check_max_drop",
    "measure",
    "reference_outputs",
    "split_data",
]
