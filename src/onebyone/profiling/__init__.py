"""Exact cost accounting of a whole model: ``profile(model, input)`` and the roofline.

``peak`` holds a machine's roof (set, cached or measured once), ``counters``
turn one call into its ``Cost``, ``report`` holds the result (``Layer``,
``Profile``, JSON, CSV) and ``recorder`` runs the model and records every call
(``profile``).
"""

from onebyone.profiling.counters import CATEGORIES
from onebyone.profiling.peak import (
    ENV_GBPS,
    ENV_GFLOPS,
    ORIGINS,
    MachinePeak,
    cached_peak,
    describe_peak,
    machine_key,
    machine_peak,
    peak_cache_path,
)
from onebyone.profiling.recorder import profile
from onebyone.profiling.report import BOUNDS, CSV_COLUMNS, Layer, Profile

__all__ = [
    "BOUNDS",
    "CATEGORIES",
    "CSV_COLUMNS",
    "ENV_GBPS",
    "ENV_GFLOPS",
    "ORIGINS",
    "Layer",
    "MachinePeak",
    "Profile",
    "cached_peak",
    "describe_peak",
    "machine_key",
    "machine_peak",
    "peak_cache_path",
    "profile",
]
