"""The `microtask` command line: one entry point, one module per subcommand in `commands/`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand modules keep their top-level imports light; heavy ones happen in `execute`.
COMMANDS: dict[str, str] = {
    "run": "Run a MicrotaskJob on this machine (local processes as the nodes).",
    "validate": "Check MicrotaskJob files; print every problem with its field path.",
    "plan": "Print, as YAML, the Kubernetes Jobs the operator would create first.",
    "crd": "Print the MicrotaskJob CustomResourceDefinition.",
    "simulate": "Simulate a MicrotaskJob on a described cluster (capacity planning, tuning).",
    "operator": "Run the operator against the cluster of the current kubeconfig.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microtask",
        description="Split one big batch job into many small, retried, rebalanced microtasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"microtask_operator.commands.{name.replace('-', '_')}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(handler=module.execute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
