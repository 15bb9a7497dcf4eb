"""Shared pieces of the results tests: hand-made store folders, record lines, a counting store.

Record lines are made by the runner's own ``format_record``, so the readers are tested against
what the runner writes. No tests here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from microtask_operator.results.stores import DirectoryStore
from microtask_runner.contract import begin_line, end_line, log_name, records_name
from microtask_runner.records import ShardInfo, format_record
from microtask_runner.results import Finished

START = 1_764_770_000.0


@dataclass(frozen=True)
class Rec:
    """One record to write: what the tests vary."""

    index: int
    attempt: int = 1
    outcome: str = "succeeded"
    start: float = START
    result: Any = None
    exit_code: int | None = None
    error: str | None = None


def record_line(rec: Rec, *, job: str = "job", shard: int = 0, pool: str = "cpu") -> bytes:
    """The runner's line for ``rec`` (with its newline)."""
    if rec.outcome == "succeeded":
        encoded = None if rec.result is None else json.dumps(rec.result, separators=(",", ":"))
        finished = Finished(0, result=encoded)
    else:
        code = (
            rec.exit_code if rec.exit_code is not None else (124 if rec.outcome == "timeout" else 1)
        )
        text = rec.error if rec.error is not None else f"boom {rec.index}"
        finished = Finished.failure(rec.index, code, text, timed_out=rec.outcome == "timeout")
    info = ShardInfo(job=job, shard=shard, attempt=rec.attempt, pool=pool, node="node-a")
    return format_record(info, index=rec.index, start=rec.start, seconds=0.5, finished=finished)


def write_records(
    root: Path,
    records: Iterable[Rec],
    *,
    job: str = "job",
    shard: int = 0,
    first: int | None = None,
    extra: bytes = b"",
) -> str:
    """A records file of ``records`` (in the order given) under ``root``; its store name."""
    records = list(records)
    if first is None:
        first = min((r.index for r in records), default=0)
    name = records_name(first, job, shard)
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(record_line(r, job=job, shard=shard) for r in records) + extra
    path.write_bytes(data)
    return name


def microtask_output(index: int, attempt: int, lines: Iterable[str], exit_code: int = 0) -> str:
    """A microtask's part of a shard log, delimiters included."""
    body = "".join(f"{line}\n" for line in lines)
    return f"{begin_line(index, attempt)}\n{body}{end_line(index, attempt, exit_code, 0.5)}\n"


def write_log(root: Path, text: str, *, job: str = "job", shard: int = 0) -> Path:
    path = root / log_name(job, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_run_state(root: Path, *, job: str = "job", universe: str | None, **status: Any) -> None:
    """A local run's run.json with the given status keys."""
    root.mkdir(parents=True, exist_ok=True)
    state = {
        "version": 1,
        "job": job,
        "file": "job.yaml",
        "specDigest": "x",
        "universe": universe,
        "status": status,
        "nextShard": 0,
        "finished": True,
        "interrupted": False,
    }
    (root / "run.json").write_text(json.dumps(state))


class _Tracked(io.RawIOBase):
    """A stream that tells its store when it is closed."""

    def __init__(self, inner: IO[bytes], store: CountingStore) -> None:
        self.inner = inner
        self.store = store

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
            self.store.now_open -= 1
        super().close()


class CountingStore:
    """A store that counts its opens and how many streams are open at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.opened: list[str] = []
        self.now_open = 0
        self.most_open = 0

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)

    def exists(self, name: str) -> bool:
        return bool(self.inner.exists(name))

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)

    def open(self, name: str) -> IO[bytes]:
        stream = self.inner.open(name)
        self.opened.append(name)
        self.now_open += 1
        self.most_open = max(self.most_open, self.now_open)
        return io.BufferedReader(_Tracked(stream, self))


def directory_store(root: Path) -> Any:
    return DirectoryStore(str(root))
