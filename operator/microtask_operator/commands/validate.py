"""`microtask validate FILE...`: check MicrotaskJob files, print every problem, exit 0 or 2.

Each problem is printed on stderr as `FILE: doc N (name): field.path: message`; each valid file
gets `FILE: ok (...)` on stdout. Hostile input (binary data, huge files, YAML bombs) gives a
problem like any other, never a traceback.

A job whose items come from a ConfigMap (`configMapRef`) needs that ConfigMap in the same file:
`microtask run` and `microtask simulate` read it from there, so a file without it cannot run as
is and `validate` says so.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microtask_operator.api.loading import LoadResult, Problem

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


def missing_config_maps(result: LoadResult) -> list[Problem]:
    """A problem for each job whose configMapRef names a ConfigMap the file does not hold."""
    from microtask_operator.api.loading import Problem

    problems: list[Problem] = []
    for loaded in result.jobs:
        ref = loaded.job.spec.items.config_map_ref
        if ref is None or result.config_map_data(loaded) is not None:
            continue
        problems.append(
            Problem(
                f"ConfigMap {ref.name!r} is not in this file; `microtask run` and `microtask "
                "simulate` read it from the same file (add it as another YAML document)",
                "spec.items.configMapRef",
                loaded.document.index,
                loaded.document.name,
                result.source,
            )
        )
    return problems


def execute(args: argparse.Namespace) -> int:
    from microtask_operator.api.loading import load_file

    status = 0
    for path in args.files:
        try:
            result = load_file(path)
        except Exception as exc:  # the promise: a message, never a traceback
            print(f"{path}: cannot validate: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        problems = [*result.problems, *missing_config_maps(result)]
        for problem in problems:
            print(problem, file=sys.stderr, flush=True)
        if problems:
            status = EXIT_INVALID
        elif not args.quiet:
            print(
                f"{result.source}: ok ({_summary(len(result.jobs), len(result.config_maps))})",
                flush=True,
            )
    return status
