"""``onebyone ...``: the command-line interface.

Each subcommand lives in ``onebyone.commands.<name>`` with ``register(subparsers)``
and ``run(args) -> int``, and calls one public function of the library. Errors
from bad input become one line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from onebyone import __version__

COMMANDS: tuple[str, ...] = ("demo", "analyze", "explain", "explore", "optimize")
"""Subcommand modules under ``onebyone.commands``, in ``--help`` order."""

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="onebyone",
        description="1x1 (pointwise) convolutions: op, models, costs, transforms, explanations.",
    )
    parser.add_argument("--version", action="version", version=f"onebyone {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"onebyone.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args))
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"onebyone {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError, KeyError)) else 1
    except KeyboardInterrupt:
        print("onebyone: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
