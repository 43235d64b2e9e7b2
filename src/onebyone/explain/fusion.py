"""Seed 000's "naive view": two feature maps of a digit fused by a 1x1 convolution.

The seed draws a digit 2 and a digit 3 on a 5x3 grid and splits each into two
feature maps: map 1 holds the horizontal strokes (value ``a`` in rows 0, 2
and 4) and map 2 the vertical strokes (value ``b``). A 1x1 convolution with
weights ``(1, 1)`` adds the two maps pixel by pixel, giving one map that holds
the whole digit. Here the maps are built from the seed's matrices with numeric
``a`` and ``b``, combined by ``onebyone.numpy.conv1x1``, and the pixels that
tell the two digits apart are found by comparing the combined maps.

Indices are ``(row, column)`` from 0, the convention of the seed's worked
example (``T[1,0]`` is row 1, column 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onebyone import _checks
from onebyone.numpy import conv1x1

__all__ = [
    "SEED_CLAIM_PIXEL",
    "SEED_FUSION_MAPS",
    "SEED_FUSION_PRINTED",
    "FusionExample",
    "fusion_example",
]

# The seed's matrices as symbols: "a" and "b" are the stroke values, "0" is background.
SEED_FUSION_MAPS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    2: (
        ("aaa", "000", "aaa", "000", "aaa"),  # feature map 1: horizontal strokes
        ("000", "00b", "000", "b00", "000"),  # feature map 2: vertical strokes
    ),
    3: (
        ("aaa", "000", "aaa", "000", "aaa"),
        ("000", "00b", "000", "00b", "000"),
    ),
}
"""Seed 000's two feature maps (rows of a 5x3 grid) for the digits 2 and 3."""

SEED_FUSION_PRINTED: dict[int, tuple[str, ...]] = {
    2: ("aaa", "00b", "aaa", "b00", "aaa"),
    3: ("aaa", "00b", "aaa", "00b", "aaa"),
}
"""The combined maps exactly as the seed prints them ("Output 1" and "Output 2")."""

SEED_CLAIM_PIXEL = (3, 2)
"""The seed: "a single pixel at location (3,2) contains b or not. If b is present
network will detect it as digit 2; if b is not present ... as 3"."""


def _grid(rows: tuple[str, ...], a: float, b: float) -> np.ndarray:
    values = {"a": a, "b": b, "0": 0.0}
    return np.array([[values[ch] for ch in row] for row in rows], dtype=np.float64)


@dataclass(frozen=True)
class FusionExample:
    """The fused maps of the digits 2 and 3 and the pixels that separate them."""

    a: float
    b: float
    weight: np.ndarray  # (1, 2): the 1x1 kernel over (map 1, map 2)
    maps: dict[int, np.ndarray]  # digit -> (2, 5, 3)
    combined: dict[int, np.ndarray]  # digit -> (5, 3), computed by conv1x1
    printed: dict[int, np.ndarray]  # digit -> (5, 3), the seed's printed output with a, b
    differing: dict[str, list[tuple[int, int]]]  # "map 1" / "map 2" / "combined" -> pixels

    @property
    def difference(self) -> np.ndarray:
        """``combined[2] - combined[3]``, ``(5, 3)``: non-zero only where the digits differ."""
        return self.combined[2] - self.combined[3]

    @property
    def printed_matches(self) -> bool:
        """Whether the seed's printed "Output 1" and "Output 2" equal the computed maps."""
        return all(np.array_equal(self.combined[d], self.printed[d]) for d in (2, 3))

    def digit_with_stroke_at(self, row: int, col: int) -> list[int]:
        """The digits whose combined map is non-zero at ``(row, col)``."""
        return [d for d in (2, 3) if self.combined[d][row, col] != 0]

    def classify(self, fused: np.ndarray) -> int:
        """Tell a combined ``(5, 3)`` map apart from reading its separating pixels.

        The separating pixels are where ``combined[2]`` and ``combined[3]`` differ; the
        map is called the digit whose values there it is closer to.
        """
        pixels = self.differing["combined"]
        if not pixels:
            raise ValueError(
                "Invalid value for argument `self`. Expected combined maps that differ "
                f"somewhere. Received weight={self.weight.ravel().tolist()}, which makes "
                "the combined maps of 2 and 3 equal."
            )
        rows, cols = np.array(pixels).T
        d2 = np.abs(fused[rows, cols] - self.combined[2][rows, cols]).sum()
        d3 = np.abs(fused[rows, cols] - self.combined[3][rows, cols]).sum()
        return 2 if d2 < d3 else 3


def _pixels(mask: np.ndarray) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(mask)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def fusion_example(
    a: float = 1.0, b: float = 2.0, weight: tuple[float, float] = (1.0, 1.0)
) -> FusionExample:
    """Fuse the seed's two feature maps of a 2 and of a 3 with one 1x1 convolution.

    The seed leaves ``a`` and ``b`` symbolic; the defaults ``a=1, b=2`` keep them
    distinct so the combined map still shows which map each stroke came from
    (``a=b=1`` gives a plain binary picture of the digit).

    Args:
        a: value of the horizontal strokes in feature map 1 (non-zero).
        b: value of the vertical strokes in feature map 2 (non-zero).
        weight: the 1x1 kernel's two weights, for map 1 and map 2; the seed's "+"
            is ``(1, 1)``.

    Shape:
        two ``(2, 5, 3)`` inputs (map 1, map 2 of each digit) -> two ``(5, 3)`` maps.

    Example:
        >>> ex = fusion_example()
        >>> ex.differing["combined"]
        [(3, 0), (3, 2)]
    """
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _checks.invalid(name, "a number", value, kind=TypeError)
        if value == 0:
            raise _checks.invalid(name, "a non-zero number", value)
    if (
        not isinstance(weight, (tuple, list))
        or len(weight) != 2
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weight)
    ):
        raise _checks.invalid("weight", "two numbers (for map 1 and map 2)", weight)
    kernel = np.array([weight], dtype=np.float64)  # (K=1, C=2)
    maps = {d: np.stack([_grid(m, a, b) for m in SEED_FUSION_MAPS[d]]) for d in (2, 3)}
    combined = {d: conv1x1(maps[d], kernel)[0] for d in (2, 3)}  # (1, 5, 3) -> (5, 3)
    printed = {d: _grid(SEED_FUSION_PRINTED[d], a, b) for d in (2, 3)}
    differing = {
        "map 1": _pixels(maps[2][0] != maps[3][0]),
        "map 2": _pixels(maps[2][1] != maps[3][1]),
        "combined": _pixels(combined[2] != combined[3]),
    }
    return FusionExample(
        a=float(a),
        b=float(b),
        weight=kernel,
        maps=maps,
        combined=combined,
        printed=printed,
        differing=differing,
    )
