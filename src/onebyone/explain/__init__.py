"""Explanations: the seed documents' worked examples, computed by the library."""

from onebyone.explain.worked import (
    SEED_KERNEL,
    SEED_MAPS,
    SEED_PRINTED_OUTPUT,
    WorkedExample,
    worked_example,
)

__all__ = ["SEED_KERNEL", "SEED_MAPS", "SEED_PRINTED_OUTPUT", "WorkedExample", "worked_example"]
