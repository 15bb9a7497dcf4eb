"""Result records and the runner's use of the result store.

One JSON line per microtask the runner ran, appended to ``records_name(...)`` right after the
microtask ended, and (optionally) a copy of the shard's log in ``log_name(...)``. Both are
best-effort: a store that fails gets one warning, and the shard goes on without it; the
termination-message report stays the operator's source of truth.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .contract import MAX_RECORD_ERROR_CHARS, RECORD_VERSION, Outcome
from .output import Sink
from .results import Finished, tail

__all__ = ["ResultStore", "ShardInfo", "format_record"]


@dataclass(frozen=True)
class ShardInfo:
    """Who runs the microtasks: the same for every record of a shard attempt."""

    job: str | None = None
    shard: int | None = None
    attempt: int = 1
    pool: str | None = None
    node: str | None = None


def _outcome(finished: Finished) -> Outcome:
    if finished.code == 0:
        return Outcome.SUCCEEDED
    return Outcome.TIMEOUT if finished.timed_out else Outcome.FAILED


def format_record(
    info: ShardInfo, *, index: int, start: float, seconds: float, finished: Finished
) -> bytes:
    """The record line of one finished microtask (keys in ``contract.RECORD_KEYS`` order)."""
    error = finished.detail if finished.code != 0 else None
    head = {
        "v": RECORD_VERSION,
        "index": index,
        "attempt": info.attempt,
        "job": info.job,
        "shard": info.shard,
        "pool": info.pool,
        "node": info.node,
        "start": round(start, 3),
        "seconds": round(max(seconds, 0.0), 3),
        "exitCode": finished.code,
        "outcome": str(_outcome(finished)),
        "exception": finished.exception,
        "error": None if error is None else tail(error, MAX_RECORD_ERROR_CHARS),
    }
    # The result is already JSON: splice it in rather than decode and encode it again.
    text = json.dumps(head, separators=(",", ":"))
    result = "null" if finished.result is None else finished.result
    return f'{text[:-1]},"result":{result}}}\n'.encode()


class ResultStore:
    """Records and the log copy of one shard attempt, written to a sink.

    ``lock`` serialises every call to the sink; the runner passes its console's lock, so that
    the thread that copies captured output and the main thread share one lock and cannot
    deadlock. The first failure disables the store and logs one warning through ``warn``.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        description: str,
        records: str,
        log: str | None,
        warn: Callable[[str], None],
        lock: threading.RLock | None = None,
    ) -> None:
        self.sink = sink
        self.description = description
        self.records = records
        self.log = log
        self.warn = warn
        self.lock = lock if lock is not None else threading.RLock()
        self.failed = False
        self.closed = False

    def _call(self, action: Callable[[], None]) -> None:
        with self.lock:
            if self.failed or self.closed:
                return
            try:
                action()
                return
            except Exception as exc:
                # Disabled first: the warning itself is copied to the log, back through here.
                self.failed = True
                message = f"{type(exc).__name__}: {exc}"
        self.warn(
            f"warning: cannot write to the result store {self.description}: {message}; "
            "this shard's records and log copy stop here (the report is not affected)"
        )

    def record(self, line: bytes) -> None:
        """Append one record line."""
        self._call(lambda: self.sink.append(self.records, line))

    def copy_log(self, data: bytes) -> None:
        """Append output to the log copy (nothing if the copy is off)."""
        if self.log is not None:
            log = self.log
            self._call(lambda: self.sink.append(log, data))

    def flush(self, *, final: bool) -> None:
        """Make the records and log so far durable (the sink may put it off unless final)."""
        self._call(lambda: self.sink.flush(final))

    def close(self) -> None:
        """Flush everything and let go of the sink; idempotent."""
        self.flush(final=True)
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.sink.close()
                return
            except Exception as exc:
                first = not self.failed
                self.failed = True
                message = f"{type(exc).__name__}: {exc}"
        if first:
            self.warn(f"warning: cannot close the result store {self.description}: {message}")
