"""The one rule for every file and folder onebyone writes.

A writer declares its outputs (``output_file``, ``output_folder``), which are
checked before any work, and writes them at the end with ``staged``, all or
nothing. The rule:

- the path is not empty; its folder exists and this process can create files
  in it (tried, not guessed from permission bits);
- a file's extension is the one the writer writes: left out, it is added
  (``--plot fig`` writes ``fig.png``); another one is refused;
- an existing folder is fine; an existing *file* that would be written (the
  file itself, or a file of the same name in an output folder) is kept unless
  ``force``;
- every result goes to a temporary name in the target's folder, and only when
  every output of the command is complete are they renamed into place. On any
  failure every temporary is removed, every output created so far is removed
  and every file replaced so far is put back: nothing partial is left;
- files are created with mode ``0o600`` and folders ``0o700``, narrowed further
  by the process's umask, never widened: a serving process or another user
  cannot read them. An output may declare other modes (the explorer page,
  which is meant to be served, does);
- error messages name the targets, never a temporary.

Nothing here imports anything above the ground floor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from onebyone import _checks

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "Output",
    "check_all",
    "output_file",
    "output_folder",
    "staged",
    "write_bytes",
    "write_file",
    "write_folder",
]

FILE_MODE = 0o600
"""Mode of every file written (before the umask narrows it)."""
FOLDER_MODE = 0o700
"""Mode of every folder created (before the umask narrows it)."""
_TEMP = ".partial"
"""Marks the temporary names (they start with a dot and hold this)."""


@dataclass(frozen=True)
class Output:
    """A checked output: a file, or a folder and the names of the files it will hold.

    Attributes:
        argument: the option or argument naming it (``"--json"``), for errors.
        path: the path that is written (the extension added where it was left out).
        force: whether existing files may be replaced.
        names: for a folder, the files the writer puts in it; ``None`` for a file.
        modes: ``(file mode, folder mode)`` before the umask.
        parents: create missing parent folders (library writers; commands say no).
    """

    argument: str
    path: Path
    force: bool = False
    names: tuple[str, ...] | None = None
    modes: tuple[int, int] = (FILE_MODE, FOLDER_MODE)
    parents: bool = False

    @property
    def folder(self) -> bool:
        """Whether the output is a folder."""
        return self.names is not None

    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """``staged([self])`` for one output: yields its temporary path.

        Example:
            >>> import tempfile
            >>> out = output_file("--json", tempfile.mkdtemp() + "/r", ".json")
            >>> with out.staging() as temp:
            ...     _ = temp.write_text("{}")
            >>> out.path.read_text()
            '{}'
        """
        return _single(self)

    def check(self) -> None:
        """Refuse the output now if writing it at the end could not succeed.

        Raises:
            ValueError: a missing or unwritable parent folder, a folder where a
                file is expected or the reverse, or an existing file without ``force``.
        """
        what = "a folder" if self.folder else "a file"
        parent = _existing_ancestor(self.path.parent) if self.parents else self.path.parent
        if not parent.is_dir():
            found = "is a file" if parent.exists() else "does not exist"
            raise _checks.invalid(
                self.argument, f"{what} in an existing folder ({parent} {found})",
                str(self.path),
            )  # fmt: skip
        if self.folder:
            if self.path.exists() and not self.path.is_dir():
                raise _checks.invalid(self.argument, "a folder, not a file", str(self.path))
        elif self.path.is_dir():
            raise _checks.invalid(self.argument, "a file, not a folder", str(self.path))
        writable = self.path if self.folder and self.path.is_dir() else parent
        reason = _cannot_write(writable)
        if reason:
            raise _checks.invalid(
                self.argument, f"{what} in a folder this process can write ({writable}: {reason})",
                str(self.path),
            )  # fmt: skip
        if self.force:
            return
        if not self.folder and self.path.exists():
            raise _checks.invalid(
                self.argument, "a file that does not exist yet (or --force to replace it)",
                str(self.path),
            )  # fmt: skip
        taken = [name for name in self.names or () if (self.path / name).exists()]
        if taken:
            raise _checks.invalid(
                self.argument, f"a folder without {', '.join(taken)} in it (or --force to "
                "replace them)", str(self.path),
            )  # fmt: skip


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write(folder: Path) -> str:
    """Why no file can be created in ``folder`` (empty when one can): tried, then removed."""
    try:
        handle, name = tempfile.mkstemp(prefix=".onebyone-", suffix=_TEMP, dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(handle)
    os.unlink(name)
    return ""


def _nonempty(argument: str, value: object, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise _checks.invalid(argument, what, value, kind=TypeError)
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise _checks.invalid(argument, what, value)
    return text


def output_file(argument: str, value: object, suffix: str, *, force: bool = False) -> Output:
    """Check a file a command will write, before any work; returns where it goes.

    Args:
        argument: the option (``"--plot"``), named in errors.
        value: the path the user gave.
        suffix: the extension written (``".png"``); added when left out.
        force: replace an existing file.

    Raises:
        ValueError: an empty path, a folder, another extension, a missing or
            unwritable parent folder, or an existing file without ``force``.

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


def output_folder(
    argument: str,
    value: object,
    names: Sequence[str],
    *,
    force: bool = False,
    modes: tuple[int, int] = (FILE_MODE, FOLDER_MODE),
) -> Output:
    """Check a folder a command will write the files ``names`` into; returns where it goes.

    The folder may exist already: files of other names in it are left alone.

    Args:
        argument: the option (``"--save-figures"``), named in errors.
        value: the path the user gave.
        names: the files the command will write into it.
        force: replace files of those names that exist already.
        modes: ``(file mode, folder mode)`` before the umask.

    Raises:
        ValueError: an empty path, an existing file, a missing or unwritable
            parent folder, or one of ``names`` existing without ``force``.

    Example:
        >>> import os, tempfile
        >>> out = output_folder("--out", os.path.join(tempfile.mkdtemp(), "tour"), ["a.png"])
        >>> out.path.name
        'tour'
    """
    path = Path(_nonempty(argument, value, "a folder name"))
    out = Output(argument, path, force, tuple(names), modes)
    out.check()
    return out


def check_all(outputs: Sequence[Output]) -> None:
    """Check every output, and that no two of them name the same file.

    Two folder outputs may share a folder when their file names differ.
    """
    seen: dict[Path, Output] = {}
    for out in outputs:
        out.check()
        files = [out.path / n for n in out.names] if out.names is not None else [out.path]
        for file in files:
            key = Path(os.path.abspath(file))
            if key in seen:
                raise _checks.invalid(
                    out.argument, f"a path {seen[key].argument} does not write", str(file)
                )
            seen[key] = out
    folders = {Path(os.path.abspath(o.path)) for o in outputs if o.folder}
    for out in outputs:
        if not out.folder and Path(os.path.abspath(out.path)) in folders:
            raise _checks.invalid(out.argument, "a path no other output writes", str(out.path))


# ---------------------------------------------------------------- writing


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # read it by setting it (where /proc cannot tell), then put it back
    os.umask(mask)
    return mask


def _set_modes(path: Path, modes: tuple[int, int], umask: int) -> None:
    file_mode, folder_mode = (mode & ~umask for mode in modes)
    if not path.is_dir():
        path.chmod(file_mode)
        return
    path.chmod(folder_mode)
    for root, folders, files in os.walk(path):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def _temporary(out: Output, created: list[Path]) -> Path:
    """A new temporary next to (or, for an existing folder, inside) the target."""
    parent = out.path.parent
    if out.parents and not parent.is_dir():
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir(mode=out.modes[1])
            created.append(folder)
    if out.folder:
        base = out.path if out.path.is_dir() else parent
        return Path(tempfile.mkdtemp(prefix=f".{out.path.name}.", suffix=_TEMP, dir=base))
    handle, name = tempfile.mkstemp(
        prefix=f".{out.path.stem}.", suffix=f"{_TEMP}{out.path.suffix}", dir=parent
    )
    os.close(handle)
    return Path(name)


class _Commit:
    """Renames temporaries into place, remembering how to undo each step."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.replaced: list[tuple[Path, Path]] = []  # (target, backup of its old content)

    def put(self, temp: Path, target: Path, force: bool, argument: str) -> None:
        if target.is_dir() and not target.is_symlink():
            raise _checks.invalid(argument, "a file, not a folder", str(target))
        if os.path.lexists(target):
            if not force:
                raise _checks.invalid(
                    argument, "a file that does not exist yet (or --force to replace it)",
                    str(target),
                )  # fmt: skip
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old",
                                            dir=target.parent)  # fmt: skip
            os.close(handle)
            backup = Path(name)
            os.replace(target, backup)
            self.replaced.append((target, backup))
            os.replace(temp, target)
            return
        os.replace(temp, target)
        self.created.append(target)

    def output(self, out: Output, temp: Path) -> None:
        if not out.folder:
            self.put(temp, out.path, out.force, out.argument)
        elif not out.path.exists():
            temp.rename(out.path)
            self.created.append(out.path)
        else:
            for entry in sorted(temp.iterdir()):
                self.put(entry, out.path / entry.name, out.force, out.argument)
            temp.rmdir()

    def undo(self) -> None:
        for target in reversed(self.created):
            _remove(target)
        for target, backup in reversed(self.replaced):
            with contextlib.suppress(OSError):
                os.replace(backup, target)

    def done(self) -> None:
        for _, backup in self.replaced:
            _remove(backup)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _without_temporaries(exc: BaseException, names: dict[str, str]) -> BaseException | None:
    """``exc`` with every temporary path in its message replaced by its target, or ``None``
    when it names none."""
    if isinstance(exc, OSError) and exc.strerror is not None:
        files = [None if f is None else str(f) for f in (exc.filename, exc.filename2)]
        first, second = (None if f is None else _rename(f, names) for f in files)
        if [first, second] != files:
            return type(exc)(exc.errno or errno.EIO, exc.strerror, first, None, second)
    text = str(exc)
    clean = _rename(text, names)
    if clean == text:
        return None
    try:
        return type(exc)(clean)
    except Exception:
        return RuntimeError(clean)


def _rename(text: str, names: dict[str, str]) -> str:
    for temp in sorted(names, key=len, reverse=True):
        text = text.replace(temp, names[temp])
    return text


@contextlib.contextmanager
def staged(outputs: Sequence[Output]) -> Iterator[list[Path]]:
    """Yield a temporary path per output; put them all in place when the block succeeds.

    A file output's temporary is an empty file to overwrite; a folder output's
    is an empty folder to fill. When the block or the renaming fails, every
    temporary and every output put in place so far is removed (replaced files
    come back), and the exception is raised again naming the targets instead
    of the temporaries.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> outs = [output_file("--json", folder / "r", ".json"),
        ...         output_folder("--out", folder / "figs", ["a.txt"])]
        >>> with staged(outs) as (json_file, figs):
        ...     _ = json_file.write_text("{}")
        ...     _ = (figs / "a.txt").write_text("a")
        >>> sorted(p.name for p in folder.iterdir())
        ['figs', 'r.json']
        >>> oct((folder / "r.json").stat().st_mode & 0o777)
        '0o600'
    """
    check_all(outputs)  # again: the work may have taken a while
    parents: list[Path] = []
    temps: list[Path] = []
    commit = _Commit()
    try:
        for out in outputs:
            temps.append(_temporary(out, parents))
        yield temps
        umask = _umask()
        for out, temp in zip(outputs, temps, strict=True):
            _set_modes(temp, out.modes, umask)
        for out, temp in zip(outputs, temps, strict=True):
            commit.output(out, temp)
    except BaseException as exc:
        commit.undo()
        for temp in temps:
            _remove(temp)
        for folder in reversed(parents):
            with contextlib.suppress(OSError):
                folder.rmdir()
        names = {str(t): str(o.path) for o, t in zip(outputs, temps, strict=False)}
        names.update({t.name: o.path.name for o, t in zip(outputs, temps, strict=False)})
        clean = _without_temporaries(exc, names) if isinstance(exc, Exception) else None
        if clean is not None:
            raise clean from None
        raise
    commit.done()


@contextlib.contextmanager
def _single(out: Output) -> Iterator[Path]:
    with staged([out]) as (temp,):
        yield temp


def write_file(
    path: str | os.PathLike[str], writer: Callable[[Path], object], *, argument: str = "path"
) -> Path:
    """Call ``writer(temporary file)`` and put what it wrote at ``path`` by the rule
    (replacing an existing file); returns ``path``. Missing parent folders are created.

    Example:
        >>> import os, tempfile
        >>> write_file(os.path.join(tempfile.mkdtemp(), "a.txt"), lambda t: t.write_text("a")).name
        'a.txt'
    """
    out = Output(argument, Path(_nonempty(argument, path, "a file path")), True, parents=True)
    with staged([out]) as (temp,):
        writer(temp)
    return out.path


def write_bytes(path: str | os.PathLike[str], data: bytes, *, argument: str = "path") -> Path:
    """Write ``data`` to the file ``path`` by the rule (replacing an existing file); returns it.

    Missing parent folders are created (mode ``0o700``).

    Example:
        >>> import os, tempfile
        >>> write_bytes(os.path.join(tempfile.mkdtemp(), "a", "b.bin"), b"1").name
        'b.bin'
    """

    def write(temp: Path) -> None:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return write_file(path, write, argument=argument)


def write_folder(
    path: str | os.PathLike[str],
    writer: Callable[[Path], object],
    *,
    argument: str = "folder",
    modes: tuple[int, int] = (FILE_MODE, FOLDER_MODE),
) -> Path:
    """Call ``writer(temporary folder)`` and move what it wrote into the folder ``path``
    by the rule (files of the same names are replaced, others left alone); returns ``path``.

    Example:
        >>> import os, tempfile
        >>> folder = os.path.join(tempfile.mkdtemp(), "ir")
        >>> write_folder(folder, lambda temp: (temp / "model.xml").write_text("<x/>")).name
        'ir'
    """
    out = Output(argument, Path(_nonempty(argument, path, "a folder path")), True, (), modes,
                 parents=True)  # fmt: skip
    with staged([out]) as (temp,):
        writer(temp)
    return out.path
