"""`microtask crd`: print the MicrotaskJob CustomResourceDefinition (generated from the API model).

`deploy/crd.yaml` is this output: `microtask crd > deploy/crd.yaml`.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", metavar="PATH", help="write to PATH instead of standard output"
    )


def execute(args: argparse.Namespace) -> int:
    from microtask_operator.api.crd import render_crd_yaml

    text = render_crd_yaml()
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            print(f"microtask crd: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
