"""One module per ``onebyone`` subcommand: ``register(subparsers)`` and ``run(args)``."""
