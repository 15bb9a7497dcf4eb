"""Subcommands of the `microtask` CLI: each has `configure(parser)` and `execute(args) -> int`."""
