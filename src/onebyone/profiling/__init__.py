"""Exact cost accounting of a whole model: ``profile(model, input)`` and the roofline.

``peak`` measures a machine's roof, ``counters`` turn one call into its
``Cost``, ``report`` holds the result (``Layer``, ``Profile``, JSON, CSV) and
``recorder`` runs the model and records every call (``profile``).
"""

from onebyone.profiling.counters import CATEGORIES
from onebyone.profiling.peak import MachinePeak, machine_peak
from onebyone.profiling.recorder import profile
from onebyone.profiling.report import BOUNDS, CSV_COLUMNS, Layer, Profile

__all__ = [
    "BOUNDS",
    "CATEGORIES",
    "CSV_COLUMNS",
    "Layer",
    "MachinePeak",
    "Profile",
    "machine_peak",
    "profile",
]
