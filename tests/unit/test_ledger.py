"""The ledger's incremental bookkeeping against a plain recomputation, step by step.

Chunks are made tiny here, so that sets of a few dozen ranges take the incremental paths
(edits of a few chunks, bisection) that sets of hundreds of thousands of ranges take for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

from core_driver import Driver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_operator.core import retries
from microtask_operator.core.ledger import Counts, Ledger
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState, RetryBatch
from microtask_operator.core.types import CoreSpec, RetryPolicy, ShardPhase
from microtask_runner import indexset
from microtask_runner.indexset import IndexSet

SPAN = 400


@contextmanager
def tiny_chunks() -> Iterator[None]:
    with (
        mock.patch.object(indexset, "_CHUNK", 2),
        mock.patch.object(indexset, "_CHUNKED_COMPACT_MIN_RANGES", 8),
    ):
        yield


sets = st.lists(st.tuples(st.integers(0, SPAN), st.integers(1, 6)), max_size=40).map(
    lambda parts: IndexSet.from_ranges((start, start + size) for start, size in parts)
)
ops = st.one_of(
    st.tuples(st.just("succeed"), sets, st.integers(1, 3)),
    st.tuples(st.just("fail"), sets),
    st.tuples(st.just("queue"), sets, st.integers(1, 3), st.integers(0, 5)),
    st.tuples(st.just("retry_later"), sets, st.integers(1, 3), st.integers(0, 5)),
    st.tuples(st.just("unqueue"), sets),
    st.tuples(st.just("purge")),
    st.tuples(st.just("take_ready"), st.integers(0, 5), st.integers(1, 30), st.integers(1, 4)),
    st.tuples(st.just("drop_queue")),
    st.tuples(st.just("launched"), st.integers(-50, 50)),
)


def queued_of(batches: tuple[RetryBatch, ...]) -> IndexSet:
    return IndexSet.from_ranges(r for b in batches for r in b.indexes.ranges)


def first_fresh_plainly(
    universe: IndexSet, final: IndexSet, queued: IndexSet, in_flight: IndexSet, count: int
) -> IndexSet:
    return (universe - final - queued - in_flight).take(count)[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    succeeded=sets,
    failed=sets,
    queued=sets,
    steps=st.lists(ops, max_size=30),
    universe=sets,
    in_flight=sets,
    wanted=st.integers(0, 60),
)
def test_incremental_sets_are_those_recomputed_from_scratch(
    succeeded: IndexSet,
    failed: IndexSet,
    queued: IndexSet,
    steps: list[tuple[object, ...]],
    universe: IndexSet,
    in_flight: IndexSet,
    wanted: int,
) -> None:
    with tiny_chunks():
        # Any starting point, even one where queued work is already final.
        retry = retries.add_batch((), 1, 0.0, queued)
        state = CoreState(succeeded=succeeded, failed=failed - succeeded, retry=retry)
        ledger = Ledger.from_state(state)
        # The plain model: the same sets, changed by recomputing them whole.
        good, bad, batches = succeeded, failed - succeeded, retry
        counts = Counts()
        attempts = 0
        for step in steps:
            name = step[0]
            if name == "succeed":
                ok, attempt = step[1], step[2]
                assert isinstance(ok, IndexSet) and isinstance(attempt, int)
                again = len(ok - good) if attempt > 1 else 0
                counts = replace(
                    counts,
                    succeeded=counts.succeeded + len(ok - (good | bad)),
                    succeeded_after_retry=counts.succeeded_after_retry + again,
                )
                good, bad = good | ok, bad - ok
                ledger = ledger.succeed(ok, attempt)
            elif name == "fail":
                assert isinstance(step[1], IndexSet)
                lost = step[1] - (good | bad)
                counts = replace(counts, failed=counts.failed + len(lost))
                bad = bad | lost
                ledger = ledger.fail(lost)
            elif name in ("queue", "retry_later"):
                indexes, spent, when = step[1], step[2], step[3]
                assert isinstance(indexes, IndexSet) and isinstance(spent, int)
                assert isinstance(when, int)
                batches = retries.add_batch(batches, spent, float(when), indexes)
                if name == "queue":
                    ledger = ledger.queue(spent, float(when), indexes)
                else:
                    counts = replace(counts, retried=counts.retried + len(indexes))
                    ledger = ledger.retry_later(spent, float(when), indexes)
            elif name == "unqueue":
                assert isinstance(step[1], IndexSet)
                batches = retries.without(batches, step[1])
                ledger = ledger.unqueue(step[1])
            elif name == "purge":
                # As the planner did before: the queue cut by everything final.
                batches = retries.without(batches, good | bad)
                ledger = ledger.purge()
            elif name == "take_ready":
                now, size, count = step[1], step[2], step[3]
                assert isinstance(now, int) and isinstance(size, int) and isinstance(count, int)
                expected, batches = plain_take_ready(batches, float(now), size, count)
                ready, ledger = ledger.take_ready(float(now), size, count)
                assert ready == expected
            elif name == "drop_queue":
                batches = ()
                ledger = ledger.drop_queue()
            elif name == "launched":
                assert isinstance(step[1], int)
                attempts += step[1]
                counts = replace(counts, attempts=counts.attempts + step[1])
                ledger = ledger.launched(step[1])
            final = good | bad
            plain_queued = queued_of(batches)
            assert ledger.succeeded == good
            assert ledger.failed == bad
            assert queued_of(ledger.retry) == plain_queued
            assert [(b.attempts, b.not_before) for b in ledger.retry] == [
                (b.attempts, b.not_before) for b in batches
            ]
            assert [b.indexes for b in ledger.retry] == [b.indexes for b in batches]
            assert ledger.final == final
            assert ledger.queued == plain_queued
            assert ledger.covered == final | plain_queued
            assert ledger.stale == final & plain_queued
            assert ledger.counts == counts
            assert ledger.attempts == attempts
            assert ledger.first_fresh(universe, in_flight, wanted) == first_fresh_plainly(
                universe, final, plain_queued, in_flight, wanted
            )
            assert ledger.all_fresh(universe, in_flight) == (
                universe - final - plain_queued - in_flight
            )


def plain_take_ready(
    batches: tuple[RetryBatch, ...], now: float, size: int, count: int
) -> tuple[list[tuple[int, IndexSet]], tuple[RetryBatch, ...]]:
    """retries.take_ready as it was: one merged set per attempt count, cut in order."""
    due: dict[int, IndexSet] = {}
    for batch in batches:
        if batch.not_before <= now:
            due[batch.attempts] = due.get(batch.attempts, IndexSet.EMPTY) | batch.indexes
    shards: list[tuple[int, IndexSet]] = []
    taken = IndexSet.EMPTY
    for attempts in sorted(due):
        pool = due[attempts]
        while pool and len(shards) < count:
            chunk, pool = pool.take(size)
            shards.append((attempts, chunk))
            taken = taken | chunk
    return shards, retries.without(batches, taken)


def test_a_state_from_the_decision_that_made_it_hands_its_derived_sets_on() -> None:
    succeeded = IndexSet.from_range(0, 10)
    ledger = Ledger.of(succeeded, IndexSet.EMPTY, ()).succeed(IndexSet.from_range(20, 30), 1)
    state = CoreState(succeeded=ledger.succeeded, failed=ledger.failed, derived=ledger)
    again = Ledger.from_state(state)
    assert again.final is ledger.final and again.covered is ledger.covered
    assert again.counts == Counts()
    # A state whose sets are other objects (read back from the status) is derived afresh.
    read_back = CoreState.from_status(state.to_status())
    fresh = Ledger.from_state(read_back)
    assert fresh.final is not ledger.final and fresh.final == ledger.final
    # The derived sets never make two states unequal.
    assert replace(state, derived=None) == state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    total=st.integers(1, 200),
    per_shard=st.integers(1, 30),
    parallelism=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    events=st.lists(st.sampled_from(["finish", "lose", "crash", "idle"]), max_size=40),
)
def test_each_decision_is_the_one_made_from_scratch(
    total: int, per_shard: int, parallelism: int, seed: int, events: list[str]
) -> None:
    """Scattered outcomes, losses and crashes: handing the derived sets on changes nothing."""
    spec = CoreSpec(
        total=total,
        microtasks_per_shard=per_shard,
        parallelism=parallelism,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=1, max_failed_fraction=0.5),
    )

    def outcome(index: int, attempt: int) -> int:
        return 1 if (index * 2654435761 + attempt * 40503 + seed) % 7 == 0 else 0

    with tiny_chunks():
        d = Driver(spec)
        decision = d.step()
        script = iter(events)
        for _ in range(300):
            if decision.done:
                break
            running = d.running()
            event = next(script, "finish")
            if running:
                target = running[seed % len(running)]
                if event == "finish":
                    d.finish_all(outcome)
                elif event == "lose":
                    d.set(target.shard_id, phase=ShardPhase.LOST, failure_reason="NodeLost")
                elif event == "crash":
                    d.set(target.shard_id, phase=ShardPhase.FAILED, exit_code=137)
            d.now += 2.0
            observed = list(d.shards.values())
            scratch = plan(spec, replace(d.state, derived=None), observed, d.cluster, d.now)
            decision = d.step()
            assert decision.actions == scratch.actions
            assert decision.state == scratch.state
            assert decision.status == scratch.status
            assert decision.deltas == scratch.deltas
            kept = decision.state.derived
            assert isinstance(kept, Ledger)
            plain = Ledger.of(decision.state.succeeded, decision.state.failed, decision.state.retry)
            for name in ("final", "queued", "covered", "stale"):
                assert getattr(kept, name) == getattr(plain, name)
