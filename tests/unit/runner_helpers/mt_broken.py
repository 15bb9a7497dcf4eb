"""A module that cannot be imported (for the runner's bad-input tests)."""

raise RuntimeError("this module is broken on purpose")
