"""`microtask validate FILE...`: check MicrotaskJob files, print every problem, exit 0 or 2.

Each problem is printed as `FILE: doc N (name): field.path: message`. Hostile input (binary data,
huge files, YAML bombs) gives a problem like any other, never a traceback.
"""

from __future__ import annotations

import argparse

EXIT_INVALID = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="YAML file with MicrotaskJobs ('-': stdin)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print problems only, nothing for valid files"
    )


def _summary(jobs: int, config_maps: int) -> str:
    parts = [f"{jobs} MicrotaskJob{'s' if jobs != 1 else ''}"]
    if config_maps:
        parts.append(f"{config_maps} ConfigMap{'s' if config_maps != 1 else ''}")
    return ", ".join(parts)


def execute(args: argparse.Namespace) -> int:
    from microtask_operator.api.loading import load_file

    status = 0
    for path in args.files:
        try:
            result = load_file(path)
        except Exception as exc:  # the promise: a message, never a traceback
            print(f"{path}: cannot validate: {type(exc).__name__}: {exc}", flush=True)
            status = EXIT_INVALID
            continue
        for problem in result.problems:
            print(problem)
        if result.problems:
            status = EXIT_INVALID
        elif not args.quiet:
            print(f"{result.source}: ok ({_summary(len(result.jobs), len(result.config_maps))})")
    return status
