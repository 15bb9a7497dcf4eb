"""`microtask logs JOB --index N`: what microtask N printed, cut out of its shard's log.

The attempt shown is the one `microtask results` shows for N (its last successful attempt, else
its last one), or ``--attempt K``; when N ran several times, stderr lists the attempts. The log
is the shard's pod's while the pod exists (a cluster), else the copy in the result store (for a
local run: the run folder's logs/). Exit 0 when the output was found (even cut short, which is
said on stderr); 1 when N has no record (stderr says why: outside the job, not run yet, still
running) or its log is not there.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import TYPE_CHECKING

from .results import add_target_arguments, guarded, open_target

if TYPE_CHECKING:
    from ..results.records import Record
    from ..results.target import Target

PROG = "microtask logs"
#: Attempts listed on stderr at most.
_LISTED = 10
_READ_SIZE = 64 * 1024


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "--index", type=_non_negative, required=True, metavar="N", help="the microtask's index"
    )
    parser.add_argument(
        "--attempt",
        type=_non_negative,
        metavar="K",
        help="which attempt (default: the one `microtask results` shows, normally the last)",
    )
    parser.add_argument(
        "--with-delimiters",
        action="store_true",
        help="keep the runner's ::microtask:: begin and end lines around the output",
    )


def error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _describe(record: Record) -> str:
    from ..results.records import records_file

    fields = record.fields
    shown = f"attempt {record.attempt} ({record.outcome}"
    if not record.succeeded and fields.get("exitCode") is not None:
        shown += f", exit {fields['exitCode']}"
    file = records_file(record.file)
    return shown + (f", shard {file.shard} of {file.job})" if file else ")")


def _choose(records: list[Record], index: int, attempt: int | None) -> Record | str:
    """The record to show, or why there is none."""
    if attempt is None:
        chosen = records[-1]  # records come in rank order: the last is the final one
    else:
        matching = [r for r in records if r.attempt == attempt]
        if not matching:
            attempts = ", ".join(str(n) for n in sorted({r.attempt for r in records}))
            return f"microtask {index} has no attempt {attempt} (its attempts: {attempts})"
        chosen = matching[-1]
    if len(records) > 1:
        in_order = sorted(records, key=lambda r: (r.attempt, r.start))
        listed = "; ".join(_describe(r) for r in in_order[:_LISTED])
        more = f"; and {len(records) - _LISTED} more" if len(records) > _LISTED else ""
        note(
            f"microtask {index} ran {len(records)} times: {listed}{more}. "
            f"Showing attempt {chosen.attempt}"
            + ("" if attempt is not None else " (--attempt K for another)")
        )
    return chosen


def _show(target: Target, record: Record, *, with_delimiters: bool) -> int:
    from ..results.logcut import cut, split_lines
    from ..results.records import records_file
    from ..results.target import TargetError

    file = records_file(record.file)
    assert file is not None  # records come from files with such names
    index, attempt = record.index, record.attempt
    out = sys.stdout.buffer
    looked: list[str] = []
    opened = False
    for source in target.log_sources(file.job, file.shard):
        try:
            stream = source.open()
        except TargetError as problem:
            # A pod log the API server cannot fetch from the node: the store's copy may do.
            looked.append(f"{source.description} (unreadable: {problem})")
            continue
        if stream is None:
            looked.append(f"{source.description} (not there)")
            continue
        opened = True
        try:
            chunks = iter(functools.partial(stream.read, _READ_SIZE), b"")
            found = cut(
                split_lines(chunks),
                index=index,
                attempt=attempt,
                write=out.write,
                with_delimiters=with_delimiters,
            )
        finally:
            stream.close()
        if not found.found:
            looked.append(f"{source.description} (no output of it)")
            continue
        out.flush()
        if not found.ended:
            note(
                f"the log ends before microtask {index} (attempt {attempt}) finished: "
                "its output was cut short (the shard was killed, or is still running)"
            )
        elif found.lines == 0:
            note(f"microtask {index} (attempt {attempt}) printed nothing")
        return 0
    shard = f"shard {file.shard} of job {file.job!r}"
    if not opened:
        return error(f"no log of {shard} (microtask {index}'s); looked in: " + "; ".join(looked))
    return error(
        f"the output of microtask {index} (attempt {attempt}) is not in the log of {shard}; "
        "looked in: " + "; ".join(looked)
    )


def execute(args: argparse.Namespace) -> int:
    return guarded(PROG, lambda: _print(args))


def _print(args: argparse.Namespace) -> int:
    from ..results.merge import records_of

    target = open_target(args)
    records = records_of(target.store, args.index, warn=note)
    if not records:
        if target.status is None:
            return error(
                f"no record of microtask {args.index} in {target.description}: it is not "
                "part of the job, has not run yet, or is still running"
            )
        return error(target.status.explain_missing(args.index))
    chosen = _choose(records, args.index, args.attempt)
    if isinstance(chosen, str):
        return error(chosen)
    return _show(target, chosen, with_delimiters=args.with_delimiters)
