"""Writing an artifact atomically: into a temporary file or folder beside the target, then
renamed, so a failure leaves nothing behind and an existing target is replaced only when
the new one is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_file", "write_folder"]


def write_file(target: Path, data: bytes) -> Path:
    """Write ``data`` at ``target`` atomically."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return target


def write_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """Make the folder ``target`` atomically: ``fill`` writes into a temporary folder that
    then replaces ``target``."""
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        fill(temp)
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            os.replace(target, old)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target
