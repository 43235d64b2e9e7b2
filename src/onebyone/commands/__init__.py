"""One module per ``onebyone`` subcommand: ``register(subparsers)`` and ``run(args)``.

This package imports nothing heavy: ``onebyone --help`` reads ``SUMMARIES`` and
imports a subcommand's module (and torch with it) only when that subcommand runs.
"""

SUMMARIES: dict[str, str] = {
    "demo": "a tour of 1x1 convolutions, computed by the library",
    "analyze": "exact parameters, MACs, FLOPs, bytes and roofline of every layer of a model",
    "explain": "the seeds' worked examples, computed step by step, with figures",
    "explore": "open the explorer page: change a weight and watch the output map change",
    "optimize": "make a model faster on the engines users pick, with outputs verified equal",
    "compress": "split a model's convolutions into bottlenecks to meet a MAC budget (lossy)",
    "list": "the models MODEL can name: built-in ones, or timm's and torchvision's",
}
"""Each subcommand's one-line help, in ``--help`` order."""

MODULES: dict[str, str] = {"list": "listing"}
"""Subcommands whose module has another name (``list`` is a builtin's name)."""
