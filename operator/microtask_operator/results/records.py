"""Records as the readers see them: one parsed line, and a cursor over one records file.

A records file is ``records/<12-digit first index>-<job>-<shard>.jsonl`` (one per shard attempt,
layout in ``microtask_runner.contract``); its lines are in increasing index order, none below
the first index of its name. A line that breaks these rules (not JSON, not a record, out of
order, cut short by a killed writer) is skipped, and the file's skipped lines are reported in
one warning when it is closed.

A *span* record (``"last"`` after ``"index"``: quick successes written as one line) is read as
the records it stands for, one per index, each with the line a single record would have, so
nothing downstream knows spans exist.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from microtask_runner.contract import RECORD_LAST, RECORDS_DIR, Outcome, parse_records_name

from .stores import StoreError

__all__ = ["Record", "RecordsFile", "RecordsReader", "parse_record", "records_file"]

#: Line numbers named in a file's warning at most; the rest are counted.
_SHOWN_LINES = 5


@dataclass(slots=True)
class Record:
    """One record line: the fields the merge needs, the parsed object, the line as stored."""

    index: int
    attempt: int
    succeeded: bool
    start: float
    fields: dict[str, Any]
    #: the line as stored, without its line end (``-o jsonl`` writes it back unchanged)
    text: bytes
    #: the records file it comes from (store-relative) and its 1-based line number
    file: str = ""
    line: int = 0

    @property
    def outcome(self) -> str:
        return str(self.fields.get("outcome"))

    def rank(self) -> tuple[bool, int, float, str, int]:
        """Larger wins for its index: a success, then the highest attempt, then the latest start.

        Records equal on all three (a copy that started in the same millisecond) are ordered by
        file name and line, so the choice never depends on the order files were read in.
        """
        return (self.succeeded, self.attempt, self.start, self.file, self.line)


_decode = json.JSONDecoder().raw_decode
_SUCCEEDED = str(Outcome.SUCCEEDED)


def parse_record(text: bytes) -> Record:
    """The record of one line (without its line end); ValueError says what is wrong with it."""
    try:
        line = text.decode()
        # raw_decode of str: json.loads without its encoding sniffing, a third faster here
        fields, end = _decode(line)
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError
        raise ValueError(f"not JSON ({error})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if end != len(line) and line[end:].strip():
        raise ValueError(f"not JSON (extra data after character {end})")
    if type(fields) is not dict:
        raise ValueError("not a JSON object")
    # type() checks: bool is an int to Python, not to a reader of the record
    index = fields.get("index")
    if type(index) is not int or index < 0:
        raise ValueError("no valid index")
    attempt = fields.get("attempt")
    if type(attempt) is not int or attempt < 1:
        raise ValueError("no valid attempt")
    outcome = fields.get("outcome")
    if type(outcome) is not str:
        raise ValueError("no outcome")
    start = fields.get("start", 0.0)
    if start is None:
        start = 0.0
    elif type(start) is not float and type(start) is not int:
        raise ValueError("start is not a number")
    last = fields.get(RECORD_LAST)
    if last is not None and (type(last) is not int or last < index):
        raise ValueError("no valid last index")
    return Record(index, attempt, outcome == _SUCCEEDED, float(start), fields, text)


class _Span:
    """The records of a span record not given out yet, made one at a time."""

    __slots__ = ("fields", "head", "last", "next", "record", "tail")

    def __init__(self, record: Record, last: int) -> None:
        self.record = record
        self.next = record.index
        self.last = last
        self.fields = {k: v for k, v in record.fields.items() if k != RECORD_LAST}
        # The line of one of them: the span's with its own index and no "last" (the runner
        # writes `"index":I,"last":L,` together; any other layout is encoded again).
        written = f'"index":{record.index},"{RECORD_LAST}":{last},'.encode()
        at = record.text.find(written)
        if at >= 0:
            self.head: bytes | None = record.text[: at + len('"index":')]
            self.tail = b"," + record.text[at + len(written) :]
        else:
            self.head, self.tail = None, b""

    def take(self) -> Record:
        index = self.next
        self.next += 1
        fields = dict(self.fields)
        fields["index"] = index
        if self.head is not None:
            text = b"%s%d%s" % (self.head, index, self.tail)
        else:
            text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
        span = self.record
        return Record(
            index, span.attempt, span.succeeded, span.start, fields, text, span.file, span.line
        )


@dataclass(frozen=True, order=True)
class RecordsFile:
    """A records file of the store, ordered by its first index (then job, shard)."""

    first: int
    job: str
    shard: int
    name: str = field(compare=False)


def records_file(name: str) -> RecordsFile | None:
    """The records file a store-relative name is, or None for any other name."""
    directory, _, base = name.rpartition("/")
    if directory != RECORDS_DIR:
        return None
    parsed = parse_records_name(base)
    if parsed is None:
        return None
    first, job, shard = parsed
    return RecordsFile(first, job, shard, name)


class RecordsReader:
    """The valid records of one file, in increasing index order; the stream is opened lazily.

    ``next()`` gives the next valid record, or None at the end of the file, when the stream is
    closed. Bad lines are counted and reported through ``warn`` in one message at close.
    A file that cannot be opened or read is reported at once and counts as ended early
    (``unreadable`` is set).
    """

    __slots__ = (
        "_bad",
        "_bad_count",
        "_first_bad_reason",
        "_last_index",
        "_line",
        "_span",
        "_stream",
        "file",
        "opener",
        "unreadable",
        "warn",
    )

    def __init__(
        self,
        file: RecordsFile,
        opener: Callable[[str], IO[bytes]],
        warn: Callable[[str], None],
    ) -> None:
        self.file = file
        self.opener = opener
        self.warn = warn
        self.unreadable = False
        self._stream: IO[bytes] | None = None
        self._line = 0
        self._last_index = file.first - 1
        #: the rest of the span record being read, if any
        self._span: _Span | None = None
        #: the first bad lines' numbers (a few: the warning names them), and how many in all
        self._bad: list[int] = []
        self._bad_count = 0
        self._first_bad_reason = ""

    def open(self) -> bool:
        """Open the stream; False (and a warning) when the store cannot give it."""
        try:
            self._stream = self.opener(self.file.name)
        except (OSError, StoreError) as error:
            self._fail(error)
            return False
        return True

    def _fail(self, error: Exception) -> None:
        self.unreadable = True
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.warn(f"warning: cannot read {self.file.name}: {text}; its records are left out")

    def _skip(self, reason: str) -> None:
        if not self._bad:
            self._first_bad_reason = reason
        if len(self._bad) < _SHOWN_LINES:
            self._bad.append(self._line)
        self._bad_count += 1

    def next(self) -> Record | None:
        span = self._span
        if span is not None:
            record = span.take()
            if span.next > span.last:
                self._span = None
            return record
        stream = self._stream
        if stream is None:
            return None
        while True:
            try:
                raw = stream.readline()
            except (OSError, StoreError) as error:
                self._fail(error)
                self.close()
                return None
            if not raw:
                self.close()
                return None
            self._line += 1
            complete = raw.endswith(b"\n")
            text = raw.rstrip(b"\r\n")
            if not text:
                continue
            try:
                record = parse_record(text)
            except ValueError as error:
                reason = str(error)
                if not complete:
                    reason = f"cut short, the file may still be being written ({reason})"
                self._skip(reason)
                continue
            if record.index <= self._last_index:
                self._skip(
                    f"index {record.index} is below the file's first index {self.file.first}"
                    if record.index < self.file.first
                    else f"index {record.index} is out of order (after {self._last_index})"
                )
                continue
            record.file = self.file.name
            record.line = self._line
            last = record.fields.get(RECORD_LAST)
            if last is not None:
                self._last_index = last
                span = _Span(record, last)
                record = span.take()
                if span.next <= last:
                    self._span = span
                return record
            self._last_index = record.index
            return record

    def close(self) -> None:
        """Close the stream (idempotent) and report the skipped lines, once."""
        stream, self._stream = self._stream, None
        self._span = None
        if stream is not None:
            with contextlib.suppress(OSError, StoreError):
                stream.close()
        if self._bad:
            lines, count, self._bad = self._bad, self._bad_count, []
            self.warn(_skipped_message(self.file.name, lines, count, self._first_bad_reason))


def _skipped_message(name: str, lines: list[int], count: int, reason: str) -> str:
    if count == 1:
        return f"warning: {name} line {lines[0]}: {reason}; skipped it"
    shown = ", ".join(str(n) for n in lines)
    more = f" and {count - len(lines)} more" if count > len(lines) else ""
    return (
        f"warning: {name}: skipped {count} lines that are not valid records "
        f"(lines {shown}{more}; line {lines[0]}: {reason})"
    )
