"""What every cluster command shares: kubectl's `-n/--context` options, its name, its errors.

Installed as `kubectl-microtask`, the command line is a kubectl plugin (`kubectl microtask get`);
help and hints then name it the way the user typed it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .errors import CliError

PLUGIN_EXECUTABLE = "kubectl-microtask"


def program_name(argv0: str | None = None) -> str:
    """`kubectl microtask` when run as the kubectl plugin, else `microtask`."""
    base = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    if base.startswith(PLUGIN_EXECUTABLE):  # also kubectl-microtask.exe, kubectl-microtask.py
        return "kubectl microtask"
    return "microtask"


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """`-n/--namespace` and `--context`, as kubectl has them."""
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="the namespace (default: the namespace of the kubeconfig's context, else 'default')",
    )
    parser.add_argument(
        "--context",
        metavar="CONTEXT",
        help="the kubeconfig context to use (default: the current context)",
    )


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)
    sys.stderr.flush()


def guarded(body: Callable[[], int]) -> int:
    """Run a command: a refused or unreachable cluster is a message and exit 1, not a trace."""
    from .config import KubeconfigError

    try:
        return body()
    except CliError as error:
        print_lines(error.lines)
        return error.code
    except KubeconfigError as error:
        print_lines([f"error: {error}"])
        return 1
