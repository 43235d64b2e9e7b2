"""``onebyone explore [--no-open]``: write the explorer page to a temporary folder and open it."""

from __future__ import annotations

import argparse
import tempfile
import webbrowser

from onebyone.commands import SUMMARIES
from onebyone.explain import write_explorer

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explore",
        help=SUMMARIES["explore"],
        description="Write the explorer page (the same as 'onebyone explain --html DIR') to a "
        "new temporary folder, print its path and open it in the default browser.",
    )
    p.add_argument("--no-open", action="store_true", help="only write the page and print its path")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = tempfile.mkdtemp(prefix="onebyone-explorer-")
    page = write_explorer(folder)
    print(page)
    if not args.no_open and not webbrowser.open(page.as_uri()):
        print("no browser could be started; open the path above in one")
    return 0
