"""Read a PNG's size from its header, checking that it is a PNG at all."""

from __future__ import annotations

import struct
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the IHDR chunk; fails unless the file starts like a PNG."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == SIGNATURE, f"{path} does not start with the PNG signature"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def assert_sensible_png(path: Path, min_side: int = 300, max_side: int = 4000) -> None:
    """A PNG big enough to read and small enough to open: each side within the bounds."""
    width, height = png_size(path)
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    assert Path(path).stat().st_size > 10_000  # a drawn figure, not an empty canvas
