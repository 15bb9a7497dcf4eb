"""Result records and the runner's use of the result store.

One JSON line per microtask the runner ran, appended to ``records_name(...)`` after the
microtask ended, and (optionally) a copy of the shard's log in ``log_name(...)``. Both are
best-effort: a store that fails gets one warning, and the shard goes on without it; the
termination-message report stays the operator's source of truth.

Records are kept in memory and handed to the sink in batches (``ResultStore.push``): the runner
pushes before every microtask while microtasks are slow, and every few milliseconds when they
come fast; the report claims a microtask only after its record was pushed.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable

from .contract import MAX_RECORD_ERROR_CHARS, RECORD_LAST, RECORD_VERSION, Outcome
from .output import Sink
from .results import Finished, tail
from .values import Value

__all__ = ["RecordFormat", "ResultStore", "ShardInfo", "format_record"]


class ShardInfo(Value):
    """Who runs the microtasks: the same for every record of a shard attempt."""

    _fields = ("job", "shard", "attempt", "pool", "node")
    job: str | None
    shard: int | None
    attempt: int
    pool: str | None
    node: str | None

    def __init__(
        self,
        job: str | None = None,
        shard: int | None = None,
        attempt: int = 1,
        pool: str | None = None,
        node: str | None = None,
    ) -> None:
        self._set(job=job, shard=shard, attempt=attempt, pool=pool, node=node)


def _outcome(finished: Finished) -> Outcome:
    if finished.code == 0:
        return Outcome.SUCCEEDED
    return Outcome.TIMEOUT if finished.timed_out else Outcome.FAILED


def _number(value: float) -> str:
    """A duration or time as records write it: milliseconds, as JSON would write the float."""
    return repr(round(value, 3))


def format_record(
    info: ShardInfo, *, index: int, start: float, seconds: float, finished: Finished
) -> bytes:
    """The record line of one finished microtask (keys in ``contract.RECORD_KEYS`` order)."""
    import json  # only for the uncommon records: RecordFormat writes the common one itself

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


class RecordFormat:
    """``format_record`` for one shard, with the common case (a success) from a template.

    Byte for byte what ``format_record`` writes; the fields that are the same for every record
    of the shard are encoded once.
    """

    def __init__(self, info: ShardInfo) -> None:
        import json

        self.info = info
        probe = format_record(
            info, index=0, start=0.0, seconds=0.0, finished=Finished(0, result="0")
        ).decode()
        # {"v":1,"index":0,<shard part>"start":0.0,"seconds":0.0,<success part>"result":0}
        head = json.dumps({"v": RECORD_VERSION, "index": 0}, separators=(",", ":"))[:-2]
        self._head = head
        after_index = len(head) + 1
        self._shard = probe[after_index : probe.index('"start":')]
        self._success = probe[probe.index(',"exitCode":') : probe.index('"result":')]
        #: the record's text after the index, for quick successes (no result, under half a
        #: millisecond), for the start time (in ms) it was made for: consecutive ones share it
        self._quick = (-1.0, "")

    def __call__(self, index: int, start: float, seconds: float, finished: Finished) -> str:
        """The record line of one finished microtask."""
        if finished.code != 0 or finished.exception is not None:
            return format_record(
                self.info, index=index, start=start, seconds=seconds, finished=finished
            ).decode()
        if finished.result is None and seconds < 0.0005:
            return self.quick(index, start)
        result = "null" if finished.result is None else finished.result
        return (
            f'{self._head}{index}{self._shard}"start":{_number(start)},'
            f'"seconds":{_number(max(seconds, 0.0))}{self._success}"result":{result}}}\n'
        )

    def quick(self, index: int, start: float) -> str:
        """The record of a success without a result that took under half a millisecond."""
        rounded = round(start, 3)
        quick = self._quick
        if rounded != quick[0]:
            rest = f'{self._shard}"start":{rounded!r},"seconds":0.0{self._success}"result":null}}\n'
            quick = self._quick = (rounded, rest)
        return f"{self._head}{index}{quick[1]}"

    def quick_span(self, first: int, last: int, start: float) -> str:
        """One record for the quick successes ``first`` to ``last`` (inclusive), the first of
        which started at ``start``: ``quick(first, start)`` with ``"last":LAST`` after the
        index (``contract.RECORD_LAST``); a single microtask gets its plain record."""
        if last <= first:
            return self.quick(first, start)
        rest = self.quick(0, start)[len(self._head) + 1 :]
        return f'{self._head}{first},"{RECORD_LAST}":{last}{rest}'


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
        lock: _thread.RLock | None = None,
    ) -> None:
        self.sink = sink
        self.description = description
        self.records = records
        self.log = log
        self.warn = warn
        self.lock = lock if lock is not None else _thread.RLock()
        self.failed = False
        self.closed = False
        #: records not pushed to the sink yet, and their size
        self._pending: list[str] = []
        self.pending_bytes = 0

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

    def record(self, line: str) -> None:
        """Add one record line (kept until ``push``)."""
        self._pending.append(line)
        self.pending_bytes += len(line)

    def push(self) -> None:
        """Hand the records kept so far to the sink."""
        if self._pending:
            lines = self._pending
            self._pending = []
            self.pending_bytes = 0
            self._call(lambda: self.sink.append(self.records, "".join(lines).encode()))

    def copy_log(self, data: bytes) -> None:
        """Append output to the log copy (nothing if the copy is off)."""
        if self.log is not None:
            log = self.log
            self._call(lambda: self.sink.append(log, data))

    def flush(self, *, final: bool) -> None:
        """Push the records, and make them and the log durable (the sink may put it off unless
        final)."""
        self.push()
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
