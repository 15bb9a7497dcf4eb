"""The ledger of outcomes: what succeeded, failed for good, waits for a retry, and attempts.

One decision changes a few shards' worth of these sets, which may hold hundreds of thousands of
ranges (scattered failures over ten million microtasks). So the ledger keeps, beside them, the
sets the decision asks about again and again, each updated by what changed instead of rebuilt:

* `final`: succeeded or failed for good;
* `queued`: in some retry batch;
* `covered`: final or queued, i.e. everything but fresh work and work in flight, so fresh work
  is found by a walk over its gaps (`first_fresh`);
* `stale`: queued yet final (a late success of work queued for a retry): dropped from the queue
  at the next `purge`, as if the queue were cut by `final` then.

Every transition returns a new ledger (`dataclasses.replace`), the counters and their deltas for
this decision moving together. The derived sets are kept on the CoreState the decision returns
(`CoreState.derived`), so the next decision starts from them when its state is that one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from itertools import chain

from microtask_runner.indexset import MAX_INDEX, IndexSet

from . import retries
from .state import CoreState, RetryBatch

# Past every index (`MAX_INDEX` + 1 is the end of the largest range).
_BEYOND = MAX_INDEX + 2


@dataclass(frozen=True)
class Counts:
    """What one decision did to the ledger's counters."""

    succeeded: int = 0  # microtasks that became final by succeeding
    failed: int = 0  # microtasks that failed for good
    retried: int = 0  # failed attempts queued for a retry
    attempts: int = 0  # attempts launched, less those that turned out not to have run
    succeeded_after_retry: int = 0


@dataclass(frozen=True)
class Ledger:
    succeeded: IndexSet
    failed: IndexSet
    retry: tuple[RetryBatch, ...]
    attempts: int
    succeeded_after_retry: int
    final: IndexSet
    queued: IndexSet
    covered: IndexSet
    stale: IndexSet
    counts: Counts = Counts()

    @classmethod
    def of(cls, succeeded: IndexSet, failed: IndexSet, retry: tuple[RetryBatch, ...]) -> Ledger:
        """A ledger computed from scratch (O(ranges)): no decision left its derived sets."""
        final = succeeded | failed
        queued = IndexSet.from_ranges(r for b in retry for r in b.indexes.ranges)
        return cls(
            succeeded=succeeded,
            failed=failed,
            retry=retry,
            attempts=0,
            succeeded_after_retry=0,
            final=final,
            queued=queued,
            covered=final | queued,
            stale=final & queued,
        )

    @classmethod
    def from_state(cls, state: CoreState) -> Ledger:
        """The ledger of `state`, reusing the derived sets of the decision that made it."""
        kept = state.derived
        if not (
            isinstance(kept, Ledger)
            and kept.succeeded is state.succeeded
            and kept.failed is state.failed
            and kept.retry is state.retry
        ):
            kept = cls.of(state.succeeded, state.failed, state.retry)
        return replace(
            kept,
            attempts=state.attempts,
            succeeded_after_retry=state.succeeded_after_retry,
            counts=Counts(),
        )

    # -- outcomes --------------------------------------------------------------------------

    def succeed(self, ok: IndexSet, attempt: int) -> Ledger:
        """Microtasks reported done; a late success (speculative copy) beats a failure."""
        counts = self.counts
        newly = len(ok - self.final)
        again = len(ok - self.succeeded) if attempt > 1 else 0
        counts = replace(
            counts,
            succeeded=counts.succeeded + newly,
            succeeded_after_retry=counts.succeeded_after_retry + again,
        )
        done = replace(
            self,
            succeeded=self.succeeded | ok,
            failed=self.failed - ok,
            succeeded_after_retry=self.succeeded_after_retry + again,
            counts=counts,
        )
        return done._finalized(ok)

    def fail(self, indexes: IndexSet) -> Ledger:
        """Microtasks failed for good (none of them final yet)."""
        counts = replace(self.counts, failed=self.counts.failed + len(indexes))
        return replace(self, failed=self.failed | indexes, counts=counts)._finalized(indexes)

    def _finalized(self, indexes: IndexSet) -> Ledger:
        """`indexes` became final (the derived sets follow)."""
        return replace(
            self,
            final=self.final | indexes,
            covered=self.covered | indexes,
            stale=self.stale | (indexes & self.queued),
        )

    # -- the retry queue -------------------------------------------------------------------

    def retry_later(self, attempts: int, not_before: float, indexes: IndexSet) -> Ledger:
        """Failed attempts of microtasks that may run again after their backoff."""
        counts = replace(self.counts, retried=self.counts.retried + len(indexes))
        return replace(self.queue(attempts, not_before, indexes), counts=counts)

    def queue(self, attempts: int, not_before: float, indexes: IndexSet) -> Ledger:
        """Queue `indexes`, each having spent `attempts` (no attempt charged for it here)."""
        if not indexes:
            return self
        return replace(
            self,
            retry=retries.add_batch(self.retry, attempts, not_before, indexes),
            queued=self.queued | indexes,
            covered=self.covered | indexes,
            stale=self.stale | (indexes & self.final),
        )

    def unqueue(self, indexes: IndexSet) -> Ledger:
        """The queue without `indexes` (in flight now, or final)."""
        removed = indexes & self.queued
        if not removed:
            return self
        return replace(
            self,
            retry=retries.without(self.retry, removed),
            queued=self.queued - removed,
            covered=self.covered - (removed - self.final),
            stale=self.stale - removed,
        )

    def purge(self) -> Ledger:
        """Drop from the queue what became final."""
        return replace(self.unqueue(self.stale), stale=IndexSet.EMPTY)

    def drop_queue(self) -> Ledger:
        return replace(
            self, retry=(), queued=IndexSet.EMPTY, covered=self.final, stale=IndexSet.EMPTY
        )

    def take_ready(
        self, now: float, size: int, count: int
    ) -> tuple[list[tuple[int, IndexSet]], Ledger]:
        """Up to `count` retry shards of at most `size` microtasks due by `now` (see retries)."""
        ready, rest = retries.take_ready(self.retry, now, size, count)
        if not ready:
            return ready, self
        taken = IndexSet.from_ranges(r for _, chunk in ready for r in chunk.ranges)
        return ready, replace(
            self,
            retry=rest,
            queued=self.queued - taken,
            covered=self.covered - (taken - self.final),
            stale=self.stale - taken,
        )

    # -- attempts --------------------------------------------------------------------------

    def launched(self, count: int) -> Ledger:
        """Attempts launched by this decision (negative: launched ones that did not run)."""
        counts = replace(self.counts, attempts=self.counts.attempts + count)
        return replace(self, attempts=self.attempts + count, counts=counts)

    def ran_again(self, count: int) -> Ledger:
        """Failed attempts their pods retried themselves: attempts, and retries, both."""
        launched = self.launched(count)
        return replace(
            launched, counts=replace(launched.counts, retried=self.counts.retried + count)
        )

    def recount(self, count: int) -> Ledger:
        """Attempts of an earlier decision found miscounted (its status write was lost)."""
        return replace(self, attempts=self.attempts + count)

    # -- fresh work ------------------------------------------------------------------------

    def first_fresh(self, universe: IndexSet, in_flight: IndexSet, count: int) -> IndexSet:
        """The first `count` microtasks of `universe` neither accounted for nor in flight.

        A walk over the gaps of `covered` (final or queued) and `in_flight`: it costs the gaps
        crossed (work in flight, fresh work taken), however large the sets.
        """
        found: list[tuple[int, int]] = []
        need = count
        cursor = universe.first()
        if cursor is None or need <= 0:
            return IndexSet.EMPTY
        # The gaps between what is covered or in flight, from the universe's start, each cut
        # to the universe.
        blocked = heapq.merge(self.covered.iter_from(cursor), in_flight.iter_from(cursor))
        for start, end in chain(blocked, ((_BEYOND, _BEYOND),)):
            if start > cursor:
                for lo, hi in universe.iter_from(cursor):
                    if lo >= start:
                        break
                    fresh_lo = max(lo, cursor)
                    taken = min(hi, start, fresh_lo + need)
                    found.append((fresh_lo, taken))
                    need -= taken - fresh_lo
                    if need == 0:
                        return IndexSet.from_ranges(found)
            cursor = max(cursor, end)
            if cursor >= _BEYOND:
                break
        return IndexSet.from_ranges(found)

    def all_fresh(self, universe: IndexSet, in_flight: IndexSet) -> IndexSet:
        """Every microtask not launched yet (or given back unrun): O(ranges), once at the end."""
        return universe - self.covered - in_flight
