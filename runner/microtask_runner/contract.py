"""The runner's contract with whatever starts it: environment, result store layout, delimiters.

The operator (a shard's pod), the local executor (a shard's process) and the result readers
(`microtask results`, `microtask logs`) all import these names from here, so the contract is
spelled out once. Standard library only, like the rest of the runner.
"""

from __future__ import annotations

import enum

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from typing import Any

#: Patterns of the readers below, compiled on first use: the runner itself never reads them,
#: and ``re`` is slow to import.
_PATTERNS = {
    "records": (
        r"^(?P<first>\d{12})-(?P<job>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)-(?P<shard>\d+)"
        r"(\.a(?P<attempt>\d+))?\.jsonl$"
    ),
    "begin": r"^::microtask:: index=(?P<index>\d+) attempt=(?P<attempt>\d+) begin$",
    "end": (
        r"^::microtask:: index=(?P<index>\d+) attempt=(?P<attempt>\d+) end exit=(?P<exit>\d+)"
        r" seconds=(?P<seconds>[0-9.]+)$"
    ),
}
_COMPILED: dict[str, re.Pattern[str]] = {}


def _pattern(name: str) -> re.Pattern[str]:
    compiled = _COMPILED.get(name)
    if compiled is None:
        import re

        compiled = _COMPILED[name] = re.compile(_PATTERNS[name])
    return compiled


def warm() -> None:
    """Compile every pattern now (a process that forks runners does it once for all)."""
    for name in _PATTERNS:
        _pattern(name)


# ------------------------------------------------------------------ environment

ENV_INDEXES = "MICROTASK_INDEXES"
ENV_ITEMS = "MICROTASK_ITEMS"
ENV_TIMEOUT_SECONDS = "MICROTASK_TIMEOUT_SECONDS"
ENV_CALLABLE = "MICROTASK_CALLABLE"
ENV_REPORT_PATH = "MICROTASK_REPORT_PATH"
ENV_JOB = "MICROTASK_JOB"
ENV_SHARD = "MICROTASK_SHARD"
ENV_ATTEMPT = "MICROTASK_ATTEMPT"
ENV_POOL = "MICROTASK_POOL"
#: The node the shard runs on (the downward API's spec.nodeName on a cluster).
ENV_NODE = "MICROTASK_NODE"
#: The result store's root: an absolute directory, or ``s3://bucket/prefix``. Unset: no records.
ENV_OUTPUT_URL = "MICROTASK_OUTPUT_URL"
#: S3-compatible endpoint (e.g. a MinIO server); unset: AWS's own.
ENV_S3_ENDPOINT = "MICROTASK_S3_ENDPOINT"
#: "false" (any case): the runner keeps no copy of the shard's log in the store (the local
#: executor already writes the runner's output there).
ENV_LOG_COPY = "MICROTASK_LOG_COPY"
#: "false" (any case): a directory store's records are not synced to disk at a shard's end. The
#: local executor sets it: its own files live on the same local disk and a killed runner loses
#: nothing the kernel holds; the sync is for network volumes on a cluster.
ENV_STORE_SYNC = "MICROTASK_STORE_SYNC"
#: Set: the pod retries its own failed microtasks once, this many seconds after each failed, at
#: the end of the shard (``retries_in_pod`` says when); unset: the operator retries them.
ENV_RETRY_AFTER_SECONDS = "MICROTASK_RETRY_AFTER_SECONDS"
#: Comma-separated exit codes the pod never retries itself (the operator would not either).
ENV_NO_RETRY_EXIT_CODES = "MICROTASK_NO_RETRY_EXIT_CODES"
#: Set per microtask in command mode: a path the command may write its result to.
ENV_RESULT_FILE = "MICROTASK_OUTPUT"
ENV_INDEX = "MICROTASK_INDEX"
ENV_ITEM = "MICROTASK_ITEM"


def retries_in_pod(succeeded: int, failed: int) -> bool:
    """Whether a pod retries its failed microtasks itself: no more failed than succeeded.

    A pod whose microtasks mostly fail (a broken node, a broken program) leaves its failures to
    the operator, which judges the node by them and places the retries elsewhere.
    """
    return 0 < failed <= succeeded


# ------------------------------------------------------------------ result store

#: The largest result a microtask may give back (a return value's JSON, or the file at
#: $MICROTASK_OUTPUT); bigger results belong in the user's own storage, referenced by the result.
MAX_RESULT_BYTES = 1024 * 1024
#: Error tails in records are cut to this many characters.
MAX_RECORD_ERROR_CHARS = 2000

#: Keys of a record, in the order the runner writes them (one JSON object per line).
RECORD_KEYS = (
    "v",
    "index",
    "attempt",
    "job",
    "shard",
    "pool",
    "node",
    "start",
    "seconds",
    "exitCode",
    "outcome",
    "exception",
    "error",
    "result",
)

#: The key of a *span* record, right after ``index``: one line for the consecutive quick
#: successes ``index`` to ``last`` (inclusive), each of which has this record but for its index
#: (no result, under half a millisecond; ``start`` is when the first of them started).
RECORD_LAST = "last"


def expand_record(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The records a parsed record line stands for: itself, or each record of a span."""
    last = fields.get(RECORD_LAST)
    if last is None:
        return [fields]
    first = fields["index"]
    single = {k: v for k, v in fields.items() if k != RECORD_LAST}
    return [{**single, "index": index} for index in range(first, last + 1)]


class Outcome(enum.StrEnum):
    """A record's ``outcome``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Ran out of the per-microtask timeout (exit code 124, set by the runner).
    TIMEOUT = "timeout"


RECORDS_DIR = "records"
LOGS_DIR = "logs"
RECORD_VERSION = 1
#: Zero-padding of the first index in record file names, so names sort in index order.
INDEX_DIGITS = 12


def records_name(first_index: int, job: str, shard: int, again: int | None = None) -> str:
    """The records file of one shard attempt, relative to the store root.

    ``again``: the attempt of the pod's own retries (``MICROTASK_RETRY_AFTER_SECONDS``), whose
    records go to a file of their own, ``...-<shard>.a<attempt>.jsonl`` named by the first
    index retried: a file's records ascend by index, and the retries come after the rest.
    """
    suffix = "" if again is None else f".a{again}"
    return f"{RECORDS_DIR}/{first_index:0{INDEX_DIGITS}d}-{job}-{shard}{suffix}.jsonl"


def log_name(job: str, shard: int) -> str:
    """The log copy of one shard attempt, relative to the store root."""
    return f"{LOGS_DIR}/{job}-{shard}.log"


def parse_records_name(name: str) -> tuple[int, str, int] | None:
    """(first index, job, shard) of a records file's base name; None if it is not one."""
    match = _pattern("records").match(name)
    if match is None:
        return None
    return int(match["first"]), match["job"], int(match["shard"])


# ------------------------------------------------------------------ log delimiters

DELIMITER_PREFIX = "::microtask::"


def begin_line(index: int, attempt: int) -> str:
    """The line the runner writes before a microtask's own output (no newline)."""
    return f"{DELIMITER_PREFIX} index={index} attempt={attempt} begin"


def end_line(index: int, attempt: int, exit_code: int, seconds: float) -> str:
    """The line the runner writes after a microtask's own output (no newline)."""
    return (
        f"{DELIMITER_PREFIX} index={index} attempt={attempt} end exit={exit_code}"
        f" seconds={max(seconds, 0.0):.3f}"
    )


def parse_begin(line: str) -> tuple[int, int] | None:
    """(index, attempt) of a begin line, else None."""
    match = _pattern("begin").match(line.rstrip("\r\n"))
    return (int(match["index"]), int(match["attempt"])) if match else None


def parse_end(line: str) -> tuple[int, int, int] | None:
    """(index, attempt, exit code) of an end line, else None."""
    match = _pattern("end").match(line.rstrip("\r\n"))
    return (int(match["index"]), int(match["attempt"]), int(match["exit"])) if match else None
