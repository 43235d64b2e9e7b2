"""One rule for every file or folder a command writes.

A command checks each of its outputs with ``output_file`` or ``output_folder``
before any work starts, and writes it at the end through the returned
``Output``, which does so atomically. The rule:

- the path is not empty, and its folder exists (nothing is created above it);
- an existing target is kept unless ``--force``;
- a file's extension is the one the command writes: left out, it is added
  (``--plot fig`` writes ``fig.png``); another one is refused. The path the
  command prints is always ``Output.path``, the one written;
- the result goes to a temporary file or folder next to the target, then
  ``os.replace`` puts it in place: on any failure the temporary is removed and
  an existing target is left as it was;
- a command that fails after its checks writes nothing: it writes only once
  its work has succeeded (``Output.staging`` discards the temporary when the
  block raises, e.g. when a verification of the written file fails).

A folder is replaced as a whole when it does not exist yet; with ``--force``
on an existing folder the new files are moved into it, replacing files of the
same names and leaving any other file in it alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from onebyone import _checks

__all__ = ["Output", "output_file", "output_folder"]


@dataclass(frozen=True)
class Output:
    """A checked output path; ``staging`` and the ``write_*`` methods put results there.

    Attributes:
        argument: the option naming it (``"--json"``), for error messages.
        path: the path that is written (the extension added where it was left out).
        force: whether an existing target may be replaced.
        folder: a folder (``True``) or a file.
    """

    argument: str
    path: Path
    force: bool
    folder: bool = False

    def check(self) -> None:
        """Refuse the target if it exists without ``force`` or its folder is gone."""
        parent = self.path.parent
        if not parent.is_dir():
            what = "a folder" if self.folder else "a file"
            raise _checks.invalid(
                self.argument, f"{what} in an existing folder ({parent} does not exist)",
                str(self.path),
            )  # fmt: skip
        if self.folder:
            if self.path.exists() and not self.path.is_dir():
                raise _checks.invalid(self.argument, "a folder, not a file", str(self.path))
        elif self.path.is_dir():
            raise _checks.invalid(self.argument, "a file, not a folder", str(self.path))
        if self.path.exists() and not self.force:
            what = "folder" if self.folder else "file"
            raise _checks.invalid(
                self.argument, f"a {what} that does not exist yet (or --force to replace it)",
                str(self.path),
            )  # fmt: skip

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield a temporary path next to the target; move it there when the block succeeds.

        The temporary is a file path (not yet created) for a file output and an
        empty folder for a folder output. When the block raises, it is removed
        and the target is untouched.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> out = output_file("--json", str(Path(tempfile.mkdtemp()) / "r"), ".json")
            >>> with out.staging() as temp:
            ...     _ = temp.write_text("{}")
            >>> out.path.name, out.path.read_text()
            ('r.json', '{}')
        """
        self.check()  # again: the work may have taken a while
        parent = self.path.parent
        if self.folder:
            base = self.path if self.path.is_dir() else parent
            temp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=base))
        else:
            handle, name = tempfile.mkstemp(
                prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}", dir=parent
            )
            os.close(handle)
            temp = Path(name)
        try:
            yield temp
            self._commit(temp)
        finally:
            _remove(temp)

    def _commit(self, temp: Path) -> None:
        if not self.folder:
            os.replace(temp, self.path)
        elif temp.parent == self.path:  # --force on an existing folder: move the files in
            for entry in sorted(temp.iterdir()):
                os.replace(entry, self.path / entry.name)
        else:
            os.replace(temp, self.path)

    def write_with(self, writer: Callable[[Path], object]) -> Path:
        """Call ``writer(temporary)`` and put what it wrote at ``path``; returns ``path``."""
        with self.staging() as temp:
            writer(temp)
        return self.path

    def write_bytes(self, data: bytes) -> Path:
        """Write ``data`` to the file atomically; returns ``path``."""
        return self.write_with(lambda temp: _write_synced(temp, data))

    def write_text(self, text: str) -> Path:
        """Write ``text`` (UTF-8) to the file atomically; returns ``path``."""
        return self.write_bytes(text.encode("utf-8"))


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _remove(temp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp)
        else:
            temp.unlink()


def _nonempty(argument: str, value: object, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise _checks.invalid(argument, what, value, kind=TypeError)
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise _checks.invalid(argument, what, value)
    return text


def output_file(argument: str, value: object, suffix: str, *, force: bool = False) -> Output:
    """Check a file the command will write, before any work; returns where it goes.

    Args:
        argument: the option (``"--plot"``), named in errors.
        value: the path the user gave.
        suffix: the extension the command writes (``".png"``); added when left out.
        force: replace an existing file.

    Raises:
        ValueError: an empty path, a folder, another extension, a missing parent
            folder, or an existing file without ``force``.

    Example:
        >>> import os, tempfile
        >>> out = output_file("--plot", os.path.join(tempfile.mkdtemp(), "fig"), ".png")
        >>> out.path.name
        'fig.png'
    """
    text = _nonempty(argument, value, f"a file name ending in {suffix}")
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise _checks.invalid(argument, f"a file name ending in {suffix}, not a folder", text)
    path = Path(text)
    if not path.suffix:
        path = path.with_name(path.name + suffix)
    elif path.suffix.lower() != suffix:
        raise _checks.invalid(argument, f"a file name ending in {suffix} (or no extension)", text)
    out = Output(argument, path, force)
    out.check()
    return out


def output_folder(argument: str, value: object, *, force: bool = False) -> Output:
    """Check a folder the command will write, before any work; returns where it goes.

    Args:
        argument: the option (``"--save-figures"``), named in errors.
        value: the path the user gave.
        force: write into an existing folder (files of the same names are replaced).

    Raises:
        ValueError: an empty path, an existing file, a missing parent folder,
            or an existing folder without ``force``.

    Example:
        >>> import os, tempfile
        >>> out = output_folder("--out", os.path.join(tempfile.mkdtemp(), "tour"))
        >>> out.path.name
        'tour'
    """
    out = Output(argument, Path(_nonempty(argument, value, "a folder name")), force, folder=True)
    out.check()
    return out
