"""How `microtask results` writes the merged stream: JSON lines, a JSON array, CSV, bare results.

Every writer streams: one record in, its bytes out, nothing kept (the JSON array too is written
piece by piece). An index that never ran (``--failed``) is written as a row of its own with the
outcome ``notRun``.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from typing import IO, Any, Protocol

from .records import Record

__all__ = ["CSV_COLUMNS", "NOT_RUN", "Format", "Writer", "compact_json", "open_writer"]

#: The outcome written for an index of the job that has no record and did not succeed.
NOT_RUN = "notRun"

CSV_COLUMNS = (
    "index",
    "attempt",
    "outcome",
    "exitCode",
    "seconds",
    "node",
    "pool",
    "job",
    "shard",
    "result",
    "error",
)


class Format(enum.StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    JSON = "json"
    #: the result values alone, one compact JSON value per line (``--results-only``)
    RESULTS = "results"


#: One encoder for every value: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: Lone surrogates (escaped in a record, decoded by the reader) become ``\udXXX`` again, which
#: is the JSON escape they came from.
_ERRORS = "backslashreplace"


def compact_json(value: Any) -> str:
    """One line of JSON, as the runner writes results (encode it with ``errors=_ERRORS``)."""
    return _ENCODER.encode(value)


def _not_run_line(index: int) -> bytes:
    return f'{{"index":{index},"outcome":"{NOT_RUN}"}}'.encode()


class Writer(Protocol):
    def record(self, record: Record) -> None:
        """Write a final record."""
        ...

    def not_run(self, index: int) -> None:
        """Write an index that never ran."""
        ...

    def close(self) -> None:
        """Finish the output (a JSON array's bracket) and flush it; the stream stays open."""
        ...


class JsonLinesWriter:
    """Each record line exactly as stored."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def record(self, record: Record) -> None:
        self.out.write(record.text + b"\n")

    def not_run(self, index: int) -> None:
        self.out.write(_not_run_line(index) + b"\n")

    def close(self) -> None:
        self.out.flush()


class JsonArrayWriter:
    """A JSON array, one record per line, written as the records come."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.separator = b"[\n"

    def _item(self, text: bytes) -> None:
        self.out.write(self.separator + text)
        self.separator = b",\n"

    def record(self, record: Record) -> None:
        self._item(record.text)

    def not_run(self, index: int) -> None:
        self._item(_not_run_line(index))

    def close(self) -> None:
        self.out.write(b"[]\n" if self.separator == b"[\n" else b"\n]\n")
        self.out.flush()


def _cell(value: Any) -> Any:
    return "" if value is None else value


class CsvWriter:
    """``CSV_COLUMNS``, a header line first; the result as compact JSON (empty when none)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.text = io.TextIOWrapper(out, encoding="utf-8", errors=_ERRORS, newline="")
        self.rows = csv.writer(self.text)
        self.rows.writerow(CSV_COLUMNS)

    def record(self, record: Record) -> None:
        fields = record.fields
        result = fields.get("result")
        self.rows.writerow(
            (
                record.index,
                record.attempt,
                record.outcome,
                _cell(fields.get("exitCode")),
                _cell(fields.get("seconds")),
                _cell(fields.get("node")),
                _cell(fields.get("pool")),
                _cell(fields.get("job")),
                _cell(fields.get("shard")),
                "" if result is None else compact_json(result),
                _cell(fields.get("error")),
            )
        )

    def not_run(self, index: int) -> None:
        self.rows.writerow((index, "", NOT_RUN, "", "", "", "", "", "", "", ""))

    def close(self) -> None:
        self.text.flush()
        # Leave the caller's stream open: the wrapper would close it when collected.
        self.text.detach()


class ResultsWriter:
    """The result of each record alone, compact JSON, one per line (``null`` when it has none)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def record(self, record: Record) -> None:
        self.out.write(compact_json(record.fields.get("result")).encode(errors=_ERRORS) + b"\n")

    def not_run(self, index: int) -> None:
        self.out.write(b"null\n")

    def close(self) -> None:
        self.out.flush()


def open_writer(kind: Format, out: IO[bytes]) -> Writer:
    """The writer of a format, writing to a binary stream."""
    if kind is Format.CSV:
        return CsvWriter(out)
    if kind is Format.JSON:
        return JsonArrayWriter(out)
    if kind is Format.RESULTS:
        return ResultsWriter(out)
    return JsonLinesWriter(out)
