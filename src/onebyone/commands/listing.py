"""``onebyone list [--source SOURCE] [--filter PATTERN]``: the names ``MODEL`` can take.

Built-in models (``onebyone.list_models()``) by default; ``--source timm`` lists
``timm.list_models(PATTERN)`` and ``--source torchvision``
``torchvision.models.list_models()``, each name printed as ``MODEL`` takes it
(``timm:resnet50``), one per line so the output can be piped.
"""

from __future__ import annotations

import argparse
import fnmatch

from onebyone.commands import SUMMARIES

__all__ = ["SOURCES", "names", "register", "run"]

SOURCES = ("onebyone", "timm", "torchvision")
"""Where names come from: the built-in models, or an installed package's."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help=SUMMARIES["list"],
        description="List the model names analyze and optimize accept as MODEL, one per line.",
    )
    p.add_argument("--source", default="onebyone", choices=SOURCES,
                   help="onebyone (the built-in models, default), timm or torchvision "
                   "(needs the package: pip install 'onebyone[models]')")  # fmt: skip
    p.add_argument("--filter", metavar="PATTERN", default=None,
                   help="only names matching PATTERN (shell-style wildcards, such as "
                   "'*mobilenet*'; a plain word matches names containing it)")  # fmt: skip
    p.set_defaults(run=run)


def _pattern(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    return text if any(c in text for c in "*?[") else f"*{text}*"


def names(source: str, pattern: str | None = None) -> list[str]:
    """The ``MODEL`` names of ``source`` matching ``pattern`` (``fnmatch``, case-insensitive).

    Raises:
        ImportError: ``timm`` or ``torchvision`` is not installed (the message
            names the pip install).

    Example:
        >>> names("onebyone", "*squeeze*")
        ['squeezenet1_0', 'squeezenet1_1']
    """
    if source == "onebyone":
        from onebyone.models import list_models

        found = list(list_models())
    else:
        from onebyone.models.external import import_timm, import_torchvision

        try:
            if source == "timm":
                found = [f"timm:{name}" for name in import_timm().list_models()]
            else:
                models = import_torchvision().models
                found = [f"torchvision:{name}" for name in models.list_models()]
        except ImportError as exc:
            raise ImportError(
                f"--source {source} needs {source} ({exc}): pip install 'onebyone[models]'"
            ) from exc
    glob = _pattern(pattern)
    if glob is None:
        return found
    prefix = "" if source == "onebyone" else f"{source}:"
    return [n for n in found if fnmatch.fnmatch(n.removeprefix(prefix).lower(), glob.lower())]


def run(args: argparse.Namespace) -> int:
    found = names(args.source, args.filter)
    if not found:
        raise ValueError(
            f"Invalid value for argument `--filter`. Expected a pattern matching a "
            f"{args.source} model name. Received --filter={args.filter!r}."
        )
    print("\n".join(found))
    return 0
