"""The `microtask` command line: one entry point, one module per subcommand in `commands/`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from microtask_operator.kubecli.options import program_name

# Subcommand modules keep their top-level imports light; heavy ones happen in `execute`.
COMMANDS: dict[str, str] = {
    "run": "Run a MicrotaskJob on this machine (local processes as the nodes).",
    "rerun": "Run again what did not succeed, into the same results (a local run or a cluster's).",
    "results": "Print every microtask's result of a job, merged in index order.",
    "logs": "Print what one microtask printed, cut out of its shard's log.",
    "indexes": "Decode an index set (0-9,17 or the packed z:... form): ranges, count, list.",
    "submit": "Create a MicrotaskJob (and its ConfigMap) on the cluster.",
    "get": "Show MicrotaskJobs of the cluster and their progress.",
    "watch": "Follow a MicrotaskJob on the cluster until it ends.",
    "delete": "Delete a MicrotaskJob from the cluster (with its Jobs and pods).",
    "validate": "Check MicrotaskJob files; print every problem with its field path.",
    "plan": "Print, as YAML, the Kubernetes Jobs the operator would create first.",
    "crd": "Print the MicrotaskJob CustomResourceDefinition.",
    "simulate": "Simulate a MicrotaskJob on a described cluster (capacity planning, tuning).",
    "operator": "Run the operator against the cluster of the current kubeconfig.",
}
# Where a subcommand's module may live: `configure(parser)` and `execute(args) -> int`.
PACKAGES = ("microtask_operator.commands", "microtask_operator.kubecli")


def version() -> str:
    """The installed distribution's version (the runner's when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("microtask")
    except PackageNotFoundError:
        from microtask_runner import __version__

        return __version__


def command_module(name: str) -> object:
    """The module implementing a subcommand (a missing one is a packaging bug: say so)."""
    for package in PACKAGES:
        path = f"{package}.{name.replace('-', '_')}"
        if importlib.util.find_spec(path) is None:
            continue
        module = importlib.import_module(path)
        if hasattr(module, "configure") and hasattr(module, "execute"):
            return module
    raise ImportError(f"no module implements `microtask {name}` in {', '.join(PACKAGES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),  # `kubectl microtask` when run as the kubectl plugin
        description="Split one big batch job into many small, retried, rebalanced microtasks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = command_module(name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)  # type: ignore[attr-defined]
        command_parser.set_defaults(handler=module.execute)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `microtask ... | head`: the reader left; nothing more to say, and no traceback.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
