"""Depth: several 1x1 filters in parallel give several output maps.

Seed 000's "depth criteria": with ``K`` filters of depth ``C`` the layer's
weight is a ``(K, C)`` matrix and the output has ``K`` maps. Each output map is
exactly what that filter alone would produce: the filters do not interact.
The input here is the seed's three 6x6 maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onebyone import _checks
from onebyone.explain.worked import SEED_KERNEL, SEED_MAPS
from onebyone.numpy import conv1x1

__all__ = ["DEFAULT_FILTERS", "DepthExample", "depth_example"]

DEFAULT_FILTERS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    (
        "the seed's kernel",
        (float(SEED_KERNEL[0, 0]), float(SEED_KERNEL[0, 1]), float(SEED_KERNEL[0, 2])),
    ),
    ("map 1 minus map 3", (1.0, 0.0, -1.0)),
    ("mean of the maps", (1 / 3, 1 / 3, 1 / 3)),
)
"""Three filters over the seed's three maps: its own kernel, a difference, an average."""


@dataclass(frozen=True)
class DepthExample:
    """The maps, the ``(K, C)`` filter bank, and the ``K`` output maps."""

    maps: np.ndarray  # (C, H, W)
    names: list[str]
    filters: np.ndarray  # (K, C)
    outputs: np.ndarray  # (K, H, W): all filters in one conv1x1 call
    one_at_a_time: np.ndarray  # (K, H, W): each filter in its own conv1x1 call

    def params(self, depth: int) -> int:
        """Weights of a layer with the first ``depth`` filters (no bias): ``depth x C``."""
        return int(self.filters[:depth].size)


def depth_example(
    filters: Sequence[tuple[str, Sequence[float]]] = DEFAULT_FILTERS,
) -> DepthExample:
    """Apply ``K`` named 1x1 filters to the seed's three 6x6 maps, together and one by one.

    Args:
        filters: ``(name, weights)`` pairs, each with one weight per input map (3).

    Shape:
        ``(3, 6, 6)`` maps and a ``(K, 3)`` filter bank -> ``(K, 6, 6)``.

    Example:
        >>> depth_example().outputs.shape
        (3, 6, 6)
    """
    if not isinstance(filters, Sequence) or len(filters) == 0:
        raise _checks.invalid("filters", "a non-empty sequence of (name, weights) pairs", filters)
    c = SEED_MAPS.shape[0]
    for item in filters:
        if not (isinstance(item, Sequence) and len(item) == 2 and len(item[1]) == c):
            raise _checks.invalid(
                "filters", f"(name, weights) pairs with {c} weights (one per input map)", item
            )
    bank = np.array([list(w) for _, w in filters], dtype=np.float64)  # (K, C)
    together = conv1x1(SEED_MAPS, bank)  # (C, H, W) -> (K, H, W)
    alone = np.concatenate([conv1x1(SEED_MAPS, bank[k : k + 1]) for k in range(len(bank))])
    return DepthExample(
        maps=SEED_MAPS,
        names=[str(name) for name, _ in filters],
        filters=bank,
        outputs=together,
        one_at_a_time=alone,
    )
