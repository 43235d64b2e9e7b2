"""``onebyone ...``: the command-line interface.

Each subcommand lives in ``onebyone.commands.<name>`` with ``register(subparsers)``
and ``run(args) -> int``, and calls one public function of the library. Only
the module of the subcommand that runs is imported (``--help`` imports none,
so it starts without loading torch). Every
failure becomes one line on stderr and a non-zero exit, never a traceback: 2
for bad input (``ValueError``, ``TypeError``, ``KeyError``), 1 for anything
else. ``ONEBYONE_DEBUG=1`` in the environment prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Sequence

from onebyone import __version__
from onebyone.commands import MODULES, SUMMARIES

COMMANDS: tuple[str, ...] = tuple(SUMMARIES)
"""The subcommands, in ``--help`` order."""

EXIT_USAGE = 2
EXIT_FAILURE = 1
DEBUG_VARIABLE = "ONEBYONE_DEBUG"
"""Set to 1 to see the traceback of a failure besides its one-line message."""
_EXPECTED = (ValueError, TypeError, OSError, RuntimeError, KeyError, ImportError)
"""Failures whose message says it all; any other type is named in the line."""
OPTION_NAMES: dict[str, str] = {
    "model": "MODEL",
    "example_input": "--input",
    "input_shape_or_example": "--input",
    "tolerance": "--tolerance",
    "precision": "--precision",
    "engine": "--engine",
    "epochs": "--epochs",
    "nproc_per_node": "--nproc-per-node",
}
"""The library's argument names and the options that set them: errors name the option."""


def option_names(line: str) -> str:
    """``line`` with the library's argument names replaced by the CLI options that set them.

    Example:
        >>> option_names("Invalid value for argument `tolerance`. Received tolerance=2.0.")
        'Invalid value for argument `--tolerance`. Received --tolerance=2.0.'
    """
    for name, option in OPTION_NAMES.items():
        line = line.replace(f"`{name}`", f"`{option}`")
        line = re.sub(rf"(?<![\w.`-]){name}=", f"{option}=", line)
    return line


def error_line(exc: Exception) -> str:
    """One line for ``exc``: its message's first line (with its type if unexpected)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return f"KeyError: {exc.args[0]!r}"
    return lines[0] if isinstance(exc, _EXPECTED) else f"{type(exc).__name__}: {lines[0]}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``command``'s own options are registered (its module
    imported), every other subcommand only by name and summary."""
    parser = argparse.ArgumentParser(
        prog="onebyone",
        description="1x1 (pointwise) convolutions: op, models, costs, transforms, explanations.",
    )
    parser.add_argument("--version", action="version", version=f"onebyone {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if name == command:
            module = importlib.import_module(f"onebyone.commands.{MODULES.get(name, name)}")
            module.register(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(words))
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args))
    except Exception as exc:  # KeyboardInterrupt and SystemExit are not Exceptions
        debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
        if debug:
            traceback.print_exc()
        expected = debug or isinstance(exc, _EXPECTED)
        hint = "" if expected else f" (run with {DEBUG_VARIABLE}=1 for the traceback)"
        line = option_names(error_line(exc))
        print(f"onebyone {args.command}: error: {line}{hint}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError, KeyError)) else EXIT_FAILURE
    except KeyboardInterrupt:
        print("onebyone: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
