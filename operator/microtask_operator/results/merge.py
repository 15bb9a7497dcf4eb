"""The records of a result store as ONE stream in index order, in bounded memory.

A store holds one records file per shard attempt, named by the first index it covers, so the
listing (sorted by name) is sorted by first index. The merge walks the listing lazily and opens a
file only when the merge position reaches its first index; a heap holds the current record of
each open file, and a file is closed at its end. Open files (and memory) stay proportional to
the shards that overlap the merge position: one for a first run, a few more for retry shards
that pack scattered indexes. Nothing is ever loaded whole.

For each index the final record is the last successful attempt (the highest attempt; ties: the
latest start), or, when no attempt succeeded, the last failed one (``Record.rank``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

from microtask_runner.contract import RECORDS_DIR
from microtask_runner.indexset import IndexSet

from .records import Record, RecordsFile, RecordsReader, records_file
from .stores import Store, StoreError

__all__ = ["Merge", "final_failures", "list_records_files", "records_of"]

Warn = Callable[[str], None]


def list_records_files(store: Store) -> Iterator[RecordsFile]:
    """The store's records files in first-index order, read lazily from its sorted listing."""
    previous: RecordsFile | None = None
    for name in store.list(f"{RECORDS_DIR}/"):
        file = records_file(name)
        if file is None:
            continue
        if previous is not None and file.first < previous.first:
            # Names are zero-padded, so a store that lists in name order lists in index order.
            raise StoreError(
                f"{store.url}: the store listed {file.name} after {previous.name}, "
                "not in name order; cannot merge its records"
            )
        previous = file
        yield file


class Merge:
    """Iterate to get the final record of every index of the store, in index order.

    ``files_opened`` and ``most_open`` tell what it cost; ``incomplete`` is set when a records
    file could not be read (each was reported through ``warn``).
    """

    def __init__(self, store: Store, *, warn: Warn) -> None:
        self.store = store
        self.warn = warn
        self.files_opened = 0
        self.most_open = 0
        self.incomplete = False

    def __iter__(self) -> Iterator[Record]:
        files = list_records_files(self.store)
        pending = next(files, None)
        # (index, sequence, record, reader): one entry per open file, its current record
        heap: list[tuple[int, int, Record, RecordsReader]] = []
        sequence = 0

        def advance(reader: RecordsReader) -> None:
            nonlocal sequence
            record = reader.next()
            if record is None:
                self.incomplete |= reader.unreadable
                return
            heapq.heappush(heap, (record.index, sequence, record, reader))
            sequence += 1

        try:
            while True:
                # Open every file that starts at or before the next index to emit: no record
                # of a file not yet open can come before it.
                while pending is not None and (not heap or pending.first <= heap[0][0]):
                    reader = RecordsReader(pending, self.store.open, self.warn)
                    pending = next(files, None)
                    if not reader.open():
                        self.incomplete = True
                        continue
                    self.files_opened += 1
                    advance(reader)
                    self.most_open = max(self.most_open, len(heap))
                if not heap:
                    return
                index, _, best, reader = heapq.heappop(heap)
                advance(reader)
                while heap and heap[0][0] == index:
                    _, _, other, other_reader = heapq.heappop(heap)
                    if other.rank() > best.rank():
                        best = other
                    advance(other_reader)
                yield best
        finally:
            for _, _, _, reader in heap:
                reader.close()


def records_of(store: Store, index: int, *, warn: Warn) -> list[Record]:
    """Every record of one index (all its attempts, in any job of the store), in rank order.

    Reads only the files whose first index is at most ``index``, each only up to ``index``.
    """
    found: list[Record] = []
    for file in list_records_files(store):
        if file.first > index:
            break
        reader = RecordsReader(file, store.open, warn)
        if not reader.open():
            continue
        try:
            while (record := reader.next()) is not None and record.index <= index:
                if record.index == index:
                    found.append(record)
                    break
        finally:
            reader.close()
    found.sort(key=Record.rank)
    return found


def final_failures(merged: Iterable[Record], never_ran: IndexSet | None) -> Iterator[Record | int]:
    """The final records that failed, and (as plain ints) the indexes that never ran.

    ``never_ran`` holds the candidates (the job's indexes minus the succeeded ones, from the
    status); an index with a record ran, so it is dropped from them. Index order throughout.
    """
    candidates = iter(never_ran or ())
    candidate = next(candidates, None)
    for record in merged:
        while candidate is not None and candidate < record.index:
            yield candidate
            candidate = next(candidates, None)
        if candidate == record.index:
            candidate = next(candidates, None)
        if not record.succeeded:
            yield record
    while candidate is not None:
        yield candidate
        candidate = next(candidates, None)
