"""One microtask's output, cut out of its shard's log between the runner's delimiter lines.

The runner runs a shard's microtasks one after another and frames each one's output:

    ::microtask:: index=17 attempt=2 begin
    ...what microtask 17 printed...
    ::microtask:: index=17 attempt=2 end exit=0 seconds=0.520

(``microtask_runner.contract``). The cut streams: lines are written as they are read, and
reading stops at the end delimiter. Output is bytes as the microtask printed them, whatever its
encoding. A log that stops between the two lines (a killed shard, one still running) gives
what is there, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from microtask_runner.contract import DELIMITER_PREFIX, parse_begin, parse_end

__all__ = ["Cut", "cut", "split_lines"]

_PREFIX = DELIMITER_PREFIX.encode()


@dataclass
class Cut:
    """What a cut found."""

    #: the begin delimiter of the microtask's attempt was in the log
    found: bool = False
    #: its end delimiter too (False with ``found``: the output was cut short)
    ended: bool = False
    #: the exit code on the end delimiter
    exit_code: int | None = None
    #: lines of the microtask's own output written (delimiters not counted)
    lines: int = 0
    #: the last byte written was a line end (or nothing was written)
    ends_with_newline: bool = True


def _delimiter(line: bytes) -> str | None:
    return line.decode("utf-8", "replace") if line.startswith(_PREFIX) else None


def cut(
    lines: Iterable[bytes],
    *,
    index: int,
    attempt: int,
    write: Callable[[bytes], object],
    with_delimiters: bool = False,
) -> Cut:
    """Write the lines of ``index``'s ``attempt`` found in ``lines`` (each with its line end)."""
    result = Cut()

    def emit(line: bytes) -> None:
        write(line)
        result.ends_with_newline = line.endswith(b"\n")

    for line in lines:
        text = _delimiter(line)
        if not result.found:
            if text is not None and parse_begin(text) == (index, attempt):
                result.found = True
                if with_delimiters:
                    emit(line)
            continue
        if text is not None:
            end = parse_end(text)
            if end is not None and end[:2] == (index, attempt):
                result.ended = True
                result.exit_code = end[2]
                if with_delimiters:
                    emit(line)
                return result
            if end is not None or parse_begin(text) is not None:
                # Another microtask's delimiter before ours ended: the shard was killed and its
                # log goes on with a later run (a restarted pod appending to the same copy).
                return result
        result.lines += 1
        emit(line)
    return result


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (each with its line end; the last one perhaps without) of a stream of chunks."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending.append(chunk[start : end + 1])
            yield b"".join(pending)
            pending.clear()
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)
