"""The shard's report while it runs: outcomes so far, and the microtask running now.

The report file is the pod's termination message: whatever moment the runner dies at, the file
must hold a report that charges the right microtask (``cur``) and claims nothing that is not
done. Encoding the whole report before every microtask costs far more than a short microtask,
so the runner writes a *live* report (``report.encode_live``) now and then, and in between
only moves two fixed-width numbers inside it:

* ``cur``, before every microtask, with a store into a shared memory map of the file (no system
  call; the page cache keeps it when the process is killed);
* ``okto``, the end of the run of consecutive successes since the last encoding, with one
  ``pwrite`` (atomic towards a kill) whenever the runner claims more finished microtasks.

A claim comes only after the records of those microtasks are in the store, so a killed runner
never reports a success whose record is lost. Claims go through ``pwrite`` because a torn claim
could claim too much; the store of ``cur`` takes a few instructions, and a kill landing exactly
inside them (not inside a microtask, where OOM kills and crashes happen) could leave a mix of
two indexes: the price of not making a system call per microtask.
"""

from __future__ import annotations

import math
import os
import stat
import time

from .console import log
from .indexset import IndexSet
from .report import (
    LIVE_NUMBER_CHARS,
    MAX_REPORT_BYTES,
    LiveReport,
    Report,
    encode_live,
    live_number,
)

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap

__all__ = ["Outcomes", "Progress", "ReportFile"]

#: Encodes cheaper than this are redone whenever the outcomes change in a way the live run
#: cannot say (a failure, a gap); costlier ones (huge, scattered reports) at most once per
#: 10x their cost, so reporting never takes more than ~10% of the shard's time.
_CHEAP_ENCODE_SECONDS = 0.001
_ENCODE_TIME_RATIO = 10.0
#: Even a run of successes is encoded in full this often, so counts and durations keep up.
_REFRESH_SECONDS = 1.0


class ReportFile:
    """The termination-message file, rewritten in place.

    Kubernetes bind-mounts /dev/termination-log, so it cannot be replaced by a
    rename. Instead every report is written at offset 0 with one ``pwrite`` and
    padded with spaces to the previous length (JSON ignores trailing
    whitespace): the file is never truncated between reports, so a kill at any
    moment leaves the previous or the next report, never an empty file. Live
    reports fill ``MAX_REPORT_BYTES``, and the file is mapped so that ``cur``
    moves without a system call; the final report is written without padding.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._opened = False
        self._regular = True
        self._length = 0
        self._warned = False
        self._live: LiveReport | None = None
        #: the live report as the file holds it now
        self._image = bytearray()
        self._map: mmap.mmap | None = None
        #: where ``cur`` is in the map (None: not mapped)
        self._cur_at: int | None = None

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log(f"cannot write the report to {self.path}: {exc.strerror or exc}")

    def _open(self) -> None:
        self._opened = True
        fd: int | None = None
        for mode in (os.O_RDWR, os.O_WRONLY):  # a map needs read access; pwrite does not
            try:
                fd = os.open(self.path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)
                break
            except OSError as exc:
                error = exc
        if fd is None:
            self._warn(error)
            return
        try:
            self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if self._regular:
                # Whatever was there belongs to no run of ours.
                os.ftruncate(fd, 0)
        except OSError as exc:
            self._warn(exc)
        self._fd = fd

    def _put(self, data: bytes) -> bool:
        """Replace the file's report with ``data`` (one write); False if that failed."""
        if not self._opened:
            self._open()
        if self._fd is None:
            return False
        try:
            if not self._regular:
                # A pipe or terminal (debugging): each report on its own line.
                os.write(self._fd, data + b"\n")
                return True
            if len(data) < self._length:
                data += b" " * (self._length - len(data))
            written = os.pwrite(self._fd, data, 0)
            while written < len(data):  # regular files write fully; be safe anyway
                written += os.pwrite(self._fd, data[written:], written)
            self._length = len(data)
            return True
        except OSError as exc:
            self._warn(exc)
            return False

    def _unmap(self) -> None:
        self._cur_at = None
        if self._map is not None:
            self._map.close()
            self._map = None

    def write(self, text: str) -> None:
        """Replace the file's report with ``text`` (a final report: nothing moves in it)."""
        self._live = None
        self._unmap()
        data = text.encode("utf-8")
        if self._put(data) and self._regular and self._fd is not None and self._length > len(data):
            try:
                os.ftruncate(self._fd, len(data))  # the padding was only for the kill-safety
                self._length = len(data)
            except OSError as exc:
                self._warn(exc)

    def write_live(self, live: LiveReport) -> None:
        """Replace the file's report with a live one, whose numbers then move in place."""
        data = live.data + b" " * (MAX_REPORT_BYTES - len(live.data))
        self._live = None
        self._cur_at = None
        if not self._put(data):
            return
        self._live = live
        self._image = bytearray(data)
        if self._map is None and self._regular and self._fd is not None:
            try:
                import mmap

                self._map = mmap.mmap(self._fd, MAX_REPORT_BYTES)
            except (OSError, ValueError):
                self._map = None  # a file system without shared maps: pwrite instead
        self._cur_at = live.cur_at if self._map is not None else None

    def set_current(self, index: int | None) -> None:
        """Name the microtask running now (None: none) in the live report."""
        if self._map is not None and self._cur_at is not None:
            # Before every microtask: one store into the page cache, nothing more.
            at = self._cur_at
            self._map[at : at + LIVE_NUMBER_CHARS] = live_number(index)
            return
        live = self._live
        if live is None:
            return
        at = live.cur_at
        number = live_number(index)
        self._image[at : at + LIVE_NUMBER_CHARS] = number
        self._patch(at, number)

    def current_slot(self) -> tuple[mmap.mmap | None, int]:
        """Where ``cur`` is in the map, for the runner's loop to store into (None: no map).

        Valid until the next ``write``/``write_live``: ``b"%20d" % index`` goes at the offset.
        """
        if self._map is None or self._cur_at is None:
            return None, 0
        return self._map, self._cur_at

    def set_claim(self, end: int) -> None:
        """Claim the live run's successes up to ``end`` (exclusive)."""
        live = self._live
        if live is None:
            return
        at = live.okto_at
        number = live_number(end)
        self._image[at : at + LIVE_NUMBER_CHARS] = number
        # Always one pwrite: a kill cannot tear it, and a torn claim could claim too much.
        self._patch(at, number)

    def _patch(self, at: int, number: bytes) -> None:
        if self._fd is None:
            return
        try:
            if self._regular:
                os.pwrite(self._fd, number, at)
            else:
                os.write(self._fd, bytes(self._image).rstrip() + b"\n")
        except OSError as exc:
            self._warn(exc)

    def text(self) -> str | None:
        """The live report as the file holds it now (None: not live)."""
        if self._live is None:
            return None
        if self._map is not None:
            return self._map[:].decode("utf-8")
        return self._image.decode("utf-8")

    def close(self) -> None:
        """Close the file (the report stays)."""
        self._unmap()
        self._live = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Outcomes:
    """Outcomes of the finished microtasks, built up one at a time (or a run at a time)."""

    def __init__(self) -> None:
        # exit code (0 = success) -> half-open ranges, appended in run order
        self._ranges: dict[int, list[tuple[int, int]]] = {}
        self._sets: dict[int, IndexSet] = {}
        #: exit code of the first run -> indexes that failed and ran again (``retake``)
        self._retried: dict[int, list[int]] = {}
        self.errors: dict[int, str] = {}
        self.count = 0
        self.failures = 0
        self.seconds_total = 0.0
        self.seconds_max = 0.0
        #: the latest outcomes, if they are successes of consecutive indexes: [start, end)
        self.run_start = 0
        self.run_end = -1

    def add(self, index: int, code: int, seconds: float, error: str | None) -> None:
        """Record one finished microtask (its error text is kept if first of its code)."""
        if code == 0:
            self.add_run(index, index + 1, seconds, seconds)
            return
        self._extend(code, index, index + 1)
        self.run_start = self.run_end = -1
        self.count += 1
        self.seconds_total += seconds
        self.seconds_max = max(self.seconds_max, seconds)
        self.failures += 1
        if code not in self.errors and error:
            self.errors[code] = error

    def add_run(self, start: int, end: int, seconds_total: float, seconds_max: float) -> None:
        """Record the successes of ``start..end-1``, which took that long in all and at most."""
        if end <= start:
            return
        self._extend(0, start, end)
        if start != self.run_end:
            self.run_start = start
        self.run_end = end
        self.count += end - start
        self.seconds_total += seconds_total
        self.seconds_max = max(self.seconds_max, seconds_max)

    def retake(self, index: int, first: int, code: int, seconds: float, error: str | None) -> None:
        """``index``, which failed with ``first``, ran again in this pod and ended with ``code``."""
        ranges = self._ranges[first]
        kept: list[tuple[int, int]] = []
        for start, end in ranges:
            if start <= index < end:
                kept.extend(
                    part for part in ((start, index), (index + 1, end)) if part[0] < part[1]
                )
            else:
                kept.append((start, end))
        if kept:
            self._ranges[first] = kept
        else:
            del self._ranges[first]
        self._sets.pop(first, None)
        self._retried.setdefault(first, []).append(index)
        self.failures -= 1
        self.count -= 1  # ``add`` counts it again, with the second run's time on top
        self.add(index, code, seconds, error)
        # Not a run a live report could claim: the report must be encoded again.
        self.run_start = self.run_end = -1

    def retried(self) -> dict[int, IndexSet]:
        """Exit code of the first run -> indexes that failed with it and ran again."""
        return {
            code: IndexSet.from_indexes(sorted(ix)) for code, ix in sorted(self._retried.items())
        }

    def _extend(self, code: int, start: int, end: int) -> None:
        ranges = self._ranges.setdefault(code, [])
        # Indexes run in increasing order, so extending the last range is the
        # usual case and costs O(1); anything else is normalized later.
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
        self._sets.pop(code, None)

    def _set(self, code: int) -> IndexSet:
        cached = self._sets.get(code)
        if cached is None:
            cached = IndexSet.from_ranges(self._ranges.get(code, ()))
            self._sets[code] = cached
        return cached

    def codes(self) -> dict[int, int]:
        """Exit code -> number of microtasks that failed with it."""
        return {
            code: sum(end - start for start, end in ranges)
            for code, ranges in sorted(self._ranges.items())
            if code != 0
        }

    def report(self, current: int | None, runner_error: str | None = None) -> Report:
        """The report of everything finished so far."""
        return Report(
            succeeded=self._set(0),
            failed={code: self._set(code) for code in self._ranges if code != 0},
            errors=dict(self.errors),
            current=current,
            seconds_total=self.seconds_total,
            seconds_max=self.seconds_max,
            count=self.count,
            runner_error=runner_error,
            retried=self.retried(),
        )


class Progress:
    """Keeps the report file up to date with the outcomes, cheaply (see the module doc)."""

    def __init__(self, outcomes: Outcomes, file: ReportFile) -> None:
        self.outcomes = outcomes
        self.file = file
        self._last_cost = 0.0
        self._last_full = -math.inf
        #: the live report's run starts here (None: no live report, or its run cannot grow)
        self._run_from: int | None = None
        self._claimed = 0
        #: how many outcomes the live report's full part holds
        self._count_at = 0
        #: outcomes changed in a way the live run cannot say (a failure, a gap, a refresh)
        self.stale = False

    def write(self, current: int | None, *, final: bool = False) -> None:
        """Rewrite the report; ``current`` is the microtask about to run (None: none).

        Cheap whatever the outcomes: a full encoding only when it is due (see ``refresh``),
        otherwise the finished successes are claimed and ``cur`` moves.
        """
        if final:
            self._run_from = None
            self.file.write(self.outcomes.report(None).encode())
            return
        self.claim()
        if not self.refresh(current):
            self.file.set_current(current)

    def due(self, now: float) -> bool:
        """Whether a full encoding is due: outcomes the live run cannot say, or time to refresh."""
        since = now - self._last_full
        if (
            since < _ENCODE_TIME_RATIO * self._last_cost
            and self._last_cost >= _CHEAP_ENCODE_SECONDS
        ):
            return False
        if self.stale or since >= _REFRESH_SECONDS:
            return True
        # A live report without a run (outcomes cut to fit) says nothing new by itself.
        return self._run_from is None and self.outcomes.count != self._count_at

    def refresh(self, current: int | None, *, force: bool = False) -> bool:
        """Encode the whole report, if due (or ``force``); True if it was written."""
        now = time.perf_counter()
        if not force and not self.due(now):
            return False
        outcomes = self.outcomes
        report = outcomes.report(current)
        if current is None:
            self._run_from = None
            self.file.write(report.encode())
        else:
            # Successes from the next microtask on are claimed in place (``claim``).
            live = encode_live(report, current)
            self._run_from = current if live.can_run else None
            self._claimed = current
            self._count_at = outcomes.count
            self.file.write_live(live)
        done = time.perf_counter()
        self._last_cost = done - now
        self._last_full = done
        self.stale = False
        return True

    def claim(self) -> None:
        """Claim, in the live report, the successes finished since it was encoded."""
        run_from = self._run_from
        if run_from is None:
            return
        outcomes = self.outcomes
        new = outcomes.count - self._count_at
        if new == 0:
            return
        end = outcomes.run_end
        if outcomes.run_start <= run_from and end - run_from == new:
            # Everything finished since the encoding is one run of successes from run_from.
            if end > self._claimed:
                self._claimed = end
                self.file.set_claim(end)
        else:
            # A failure or a gap: only a new encoding can say it.
            self.stale = True

    def set_current(self, index: int | None) -> None:
        """Name the microtask about to run (no claim, no encoding)."""
        self.file.set_current(index)
