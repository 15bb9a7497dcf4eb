"""`microtask results JOB`: every microtask's final record, merged into one stream in index order.

JOB is a job file that `microtask run` ran (its run folder is the store), or the name of a
MicrotaskJob on the cluster of the current kubeconfig (its ``status.output.url`` is the store);
``--store URL`` reads any store root. For each index the final record is its last successful
attempt, or its last failed one when none succeeded. ``--failed`` keeps the failures, and adds
the indexes that never ran (outcome ``notRun``) when the job's status is known.

Memory stays bounded at any size: records files are opened as the merge reaches them.
Exit 0; 1 when the job cannot be found or has no records (a message on stderr).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..results.target import Target

PROG = "microtask results"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """JOB and the options that say where it is (shared with `microtask logs`)."""
    parser.add_argument(
        "job",
        metavar="JOB",
        nargs="?",
        help="a job file of a local run, or the name of a MicrotaskJob on the cluster",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="read this result store root instead: a folder, or s3://bucket/prefix/JOB",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="the local run's folder, as given to `microtask run --output` "
        "(default: microtask-runs/JOB)",
    )
    parser.add_argument("--name", help="which MicrotaskJob of the job file, when it holds several")
    parser.add_argument(
        "-n", "--namespace", help="the MicrotaskJob's namespace (default: the context's)"
    )
    parser.add_argument("--context", help="the kubeconfig context (default: the current one)")
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="S3 endpoint to use, e.g. a port-forwarded MinIO (default: spec.output.s3.endpoint, "
        "or $AWS_ENDPOINT_URL with --store)",
    )


def open_target(args: argparse.Namespace) -> Target:
    """The job the target arguments name (TargetError when it cannot be found or read)."""
    from ..results.target import resolve_target

    return resolve_target(
        args.job,
        store=args.store,
        output=args.output,
        name=args.name,
        namespace=args.namespace,
        context=args.context,
        endpoint=args.endpoint,
    )


def guarded(prog: str, body: Callable[[], int]) -> int:
    """Run a reading command's body: every failure becomes one line on stderr and exit 1."""
    from ..results.stores import StoreError
    from ..results.target import TargetError

    def error(message: str) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return 1

    try:
        return body()
    except TargetError as problem:
        return error(str(problem))
    except StoreError as problem:
        return error(f"cannot read the result store: {problem}")
    except BrokenPipeError:
        silence_stdout()
        return 0
    except Exception as problem:  # the promise: a message, never a traceback
        return error(f"{type(problem).__name__}: {problem}")


def configure(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "-o",
        dest="format",
        choices=("jsonl", "csv", "json"),
        default="jsonl",
        help="jsonl: the records as stored, one per line (default); csv: a table; json: one array",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--failed",
        action="store_true",
        help="only the indexes whose final attempt failed, and those that never ran",
    )
    what.add_argument(
        "--results-only",
        action="store_true",
        help="only the result values, one compact JSON value per line (null: none)",
    )


def error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def execute(args: argparse.Namespace) -> int:
    if args.results_only and args.format != "jsonl":
        return error("--results-only prints one JSON value per line; it takes no -o")
    return guarded(PROG, lambda: _print(args))


def _print(args: argparse.Namespace) -> int:
    from ..results.formats import Format, open_writer
    from ..results.merge import Merge, final_failures

    target = open_target(args)
    merge = Merge(target.store, warn=warn)
    merged = iter(merge)
    first = next(merged, None)
    if first is None:
        if merge.incomplete:
            return error(f"the records of {target.description} could not be read")
        where = f" ({target.store.url})" if target.store.url not in target.description else ""
        return error(
            f"no records in {target.description}{where}: no microtask has finished there yet"
        )
    kind = Format.RESULTS if args.results_only else Format(args.format)
    writer = open_writer(kind, sys.stdout.buffer)
    stream = itertools.chain([first], merged)
    if not args.failed:
        for record in stream:
            writer.record(record)
    else:
        never_ran = target.status.never_ran_candidates() if target.status else None
        if never_ran is None:
            warn(
                "note: the job's status is not known here, so indexes that never ran are not listed"
            )
        listed = 0
        for item in final_failures(stream, never_ran):
            listed += 1
            if isinstance(item, int):
                writer.not_run(item)
            else:
                writer.record(item)
        if not listed:
            warn(
                f"no microtask of {target.description} failed"
                + (" or is left to run" if never_ran is not None else "")
            )
    writer.close()
    if merge.incomplete:
        return error("some records files could not be read; the output lacks their records")
    return 0


def silence_stdout() -> None:
    """After the reader went away (`| head`): no second error when Python flushes at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
