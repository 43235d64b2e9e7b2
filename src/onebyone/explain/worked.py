"""Seed 000's "math view": three 6x6 feature maps, a 1x1 kernel of depth 1.

The inputs and the printed output are the seed's own numbers; the output the
learner sees is computed by ``onebyone.numpy.conv1x1``, and every place where
the seed's printed map disagrees with the computation is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onebyone.numpy import conv1x1

__all__ = ["SEED_KERNEL", "SEED_MAPS", "SEED_PRINTED_OUTPUT", "WorkedExample", "worked_example"]

SEED_MAPS = np.array(
    [
        [[1, 2, 3, 2, 2, 3], [4, 5, 6, 2, 2, 3], [2, 1, 7, 2, 1, 3],
         [3, 2, 4, 2, 2, 3], [3, 2, 4, 2, 2, 3], [3, 2, 4, 2, 2, 3]],
        [[3, 2, 4, 3, 2, 2], [3, 2, 4, 3, 2, 2], [1, 2, 3, 3, 2, 2],
         [4, 5, 6, 3, 2, 2], [3, 2, 4, 3, 2, 2], [2, 1, 7, 2, 1, 3]],
        [[1, 2, 3, 3, 2, 2], [3, 2, 4, 3, 2, 2], [3, 2, 4, 3, 2, 2],
         [4, 5, 6, 3, 2, 2], [3, 2, 4, 3, 2, 2], [2, 1, 7, 2, 1, 3]],
    ],
    dtype=np.float64,
)  # fmt: skip
"""The seed's three 6x6 feature maps, ``(C=3, H=6, W=6)``."""

SEED_KERNEL = np.array([[0.1, 0.2, 0.4]])
"""The seed's 1x1 kernel of depth 1: one filter over three channels, ``(K=1, C=3)``."""

SEED_PRINTED_OUTPUT = np.array(
    [
        [1.1, 1.4, 2.3, 2.0, 1.4, 1.5],
        [2.2, 1.7, 3.0, 2.0, 1.4, 1.5],
        [1.6, 1.3, 2.9, 2.0, 1.3, 1.5],
        [2.7, 3.2, 4.0, 2.0, 1.4, 1.5],
        [2.1, 1.4, 2.8, 2.0, 1.4, 1.5],
        [1.5, 0.8, 0.6, 1.4, 0.8, 2.1],
    ]
)
"""The output map ``T`` exactly as the seed prints it."""


@dataclass(frozen=True)
class WorkedExample:
    """The computed example and how it compares with the seed's printed map."""

    maps: np.ndarray  # (3, 6, 6)
    kernel: np.ndarray  # (1, 3)
    output: np.ndarray  # (6, 6), computed
    printed: np.ndarray  # (6, 6), as the seed prints it
    mismatches: list[tuple[int, int]]  # (row, col) where printed != computed (to 1 decimal)

    def spelled_sum(self, row: int, col: int) -> str:
        """One output pixel's weighted sum written out: ``1*0.1 + 3*0.2 + 1*0.4 = 1.10``."""
        terms = " + ".join(
            f"{self.maps[c, row, col]:g}*{self.kernel[0, c]:g}" for c in range(self.maps.shape[0])
        )
        return f"{terms} = {self.output[row, col]:.2f}"


def worked_example() -> WorkedExample:
    """Compute seed 000's worked example with ``onebyone.numpy.conv1x1``.

    Shape:
        ``(3, 6, 6)`` maps and a ``(1, 3)`` kernel -> a ``(6, 6)`` output map.
    """
    out = conv1x1(SEED_MAPS, SEED_KERNEL)[0]  # (1, 6, 6) -> (6, 6)
    rounded = np.round(out, 1)
    rows, cols = np.nonzero(~np.isclose(rounded, SEED_PRINTED_OUTPUT))
    return WorkedExample(
        maps=SEED_MAPS,
        kernel=SEED_KERNEL,
        output=out,
        printed=SEED_PRINTED_OUTPUT,
        mismatches=[(int(r), int(c)) for r, c in zip(rows, cols, strict=True)],
    )
