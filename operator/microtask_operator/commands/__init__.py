"""Subcommands of the `microtask` CLI: each module has `configure(parser)` and `execute(args) -> int`."""
