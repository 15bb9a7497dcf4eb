"""The last long shard of a job, split across the slots its end leaves idle (core/splitting.py)."""

from __future__ import annotations

from dataclasses import replace

from microtask_operator.core import planner
from microtask_operator.core.state import CoreState, PoolDurations
from microtask_operator.core.types import (
    Accelerator,
    ClusterView,
    CoreSpec,
    ObservedShard,
    Pool,
    Progress,
    Reason,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet

NOW = 1000.0
NODES = frozenset(f"cpu-{i}" for i in range(10))
CLUSTER = ClusterView(ready_nodes={Pool.CPU: NODES}, slots=dict.fromkeys(NODES, 1))
SPEC = CoreSpec(
    total=100,
    microtasks_per_shard=10,
    target_shard_seconds=60.0,
    parallelism=10,
    accelerator=Accelerator.CPU,
    speculation=SpeculationPolicy(enabled=True),
)
# 1 s a microtask on the CPU pool, pods start in 2 s; 0-79 are done, 80-99 run in shard 9.
STATE = CoreState(
    succeeded=IndexSet.from_range(0, 80),
    next_shard=10,
    attempts=100,
    durations={Pool.CPU: PoolDurations(shards=9, microtasks=80, seconds=80.0, startup_seconds=2.0)},
    start_time=0.0,
)
LAST = IndexSet.from_range(80, 100)


def last_shard(progress: Progress | None, **changes: object) -> ObservedShard:
    shard = ObservedShard(
        shard_id=9,
        indexes=LAST,
        attempt=1,
        pool=Pool.CPU,
        created_at=NOW - 40.0,
        phase=ShardPhase.RUNNING,
        node="cpu-9",
        started_at=NOW - 40.0,
        progress=progress,
    )
    return replace(shard, **changes)  # type: ignore[arg-type]


def decide(*shards: ObservedShard, spec: CoreSpec = SPEC) -> planner.Decision:
    return planner.plan(spec, STATE, list(shards), CLUSTER, NOW)


def test_a_shard_far_from_its_end_is_split_over_the_idle_slots() -> None:
    # 2 of 20 done in 38 s: at that pace (judged as if 2 more had run at the usual 1 s),
    # 180 s to go; spread over the 10 idle slots, the 20 microtasks take a few seconds.
    decision = decide(last_shard(Progress(done=2, seconds=38.0)))
    assert [d.shard_id for d in decision.deletes] == [9]
    assert decision.deletes[0].reason == Reason.STRAGGLER
    made = [c.plan for c in decision.creates]
    assert len(made) > 1
    covered = IndexSet.EMPTY
    for plan in made:
        assert plan.copy_of is None and plan.attempt == 1
        assert covered.isdisjoint(plan.indexes)
        covered = covered | plan.indexes
    assert covered == LAST
    assert decision.state.rebalances == {"straggler": 1}
    # The 3 it ran (2 done, 1 under way) stay counted; the 17 it never reached are no attempts
    # there, and the relaunch counts all 20 once more.
    assert decision.state.attempts == 100 - 17 + 20
    assert any("relaunched over the free slots" in e.message for e in decision.events)


def test_a_shard_near_its_end_runs_on() -> None:
    # 17 of 20 done at the usual pace: 3 s to go, sooner than any relaunch would end.
    decision = decide(last_shard(Progress(done=17, seconds=17.0)))
    assert not decision.deletes and not decision.creates


def test_an_end_the_progress_does_not_show_is_not_judged() -> None:
    # No progress seen (the operator's case: a copy on a free slot is its move): it runs on.
    assert not decide(last_shard(None)).deletes
    # Nothing done yet, but its first microtask has run for 30 s where one takes 1 s.
    assert [d.shard_id for d in decide(last_shard(Progress(done=0, seconds=30.0))).deletes] == [9]
    # Its pod still starting: nothing to judge it by.
    assert not decide(last_shard(Progress(done=0, seconds=0.0))).deletes


def other_shard(progress: Progress) -> ObservedShard:
    return replace(
        last_shard(progress), shard_id=8, indexes=IndexSet.from_range(60, 80), node="cpu-8"
    )


def test_groups_that_hold_the_end_together_are_split_together() -> None:
    state = replace(STATE, succeeded=IndexSet.from_range(0, 60))
    slow = Progress(done=1, seconds=10.0)
    shards = [last_shard(slow), other_shard(slow)]
    decision = planner.plan(SPEC, state, shards, CLUSTER, NOW)
    assert sorted(d.shard_id for d in decision.deletes) == [8, 9]
    covered = IndexSet.from_ranges(r for c in decision.creates for r in c.plan.indexes.ranges)
    assert covered == IndexSet.from_range(60, 100)


def test_not_when_the_free_slots_would_not_end_it_far_sooner() -> None:
    # Three slots, two busy: the one free slot would take 40 s for both shards' work, and 20 s
    # for one of them while the other still needs its 76 s.
    nodes = frozenset({"cpu-7", "cpu-8", "cpu-9"})
    cluster = ClusterView(ready_nodes={Pool.CPU: nodes}, slots=dict.fromkeys(nodes, 1))
    state = replace(STATE, succeeded=IndexSet.from_range(0, 60))
    slow = Progress(done=1, seconds=10.0)
    decision = planner.plan(SPEC, state, [last_shard(slow), other_shard(slow)], cluster, NOW)
    assert not decision.deletes


def test_an_explicit_shard_size_keeps_shards_whole() -> None:
    spec = replace(SPEC, target_shard_seconds=None)
    assert not decide(last_shard(Progress(done=2, seconds=38.0)), spec=spec).deletes


def test_without_speculation_nothing_is_split() -> None:
    spec = replace(SPEC, speculation=SpeculationPolicy(enabled=False))
    assert not decide(last_shard(Progress(done=2, seconds=38.0)), spec=spec).deletes


def test_a_copy_and_its_original_are_split_together() -> None:
    original = last_shard(Progress(done=2, seconds=38.0))
    copy = replace(
        last_shard(Progress(done=5, seconds=150.0)),
        shard_id=10,
        copy_of=9,
        node="cpu-0",
        started_at=NOW - 31.0,
    )
    state = replace(STATE, next_shard=11)
    decision = planner.plan(SPEC, state, [original, copy], CLUSTER, NOW)
    assert sorted(d.shard_id for d in decision.deletes) == [9, 10]
    covered = IndexSet.from_ranges(r for c in decision.creates for r in c.plan.indexes.ranges)
    assert covered == LAST
    # The original ran 3 (the copy's 6 were never counted): its 17 others are no attempts.
    assert decision.state.attempts == 100 - 17 + 20


# -- stragglers caught early, while work waits for slots -------------------------------------

#: 200 microtasks: 0-79 done, shard 9 (80-99) and shards 10-18 (100-189) run on the 10 slots,
#: 190-199 wait for one.
BUSY_SPEC = replace(SPEC, total=200)
BUSY_STATE = replace(STATE, next_shard=19, attempts=190)


def busy_window(straggler: ObservedShard) -> list[ObservedShard]:
    others = [
        replace(
            last_shard(Progress(done=5, seconds=5.0)),
            shard_id=10 + i,
            indexes=IndexSet.from_range(100 + 10 * i, 110 + 10 * i),
            node=f"cpu-{i}",
            started_at=NOW - 7.0,
        )
        for i in range(9)
    ]
    return [straggler, *others]


def test_a_straggler_caught_early_gives_its_work_back_while_work_waits() -> None:
    # 2 of 20 in 38 s where one takes 1 s: a copy would hold all 20 on one slot, and wait for
    # that slot behind the 10 microtasks already waiting.
    observed = busy_window(last_shard(Progress(done=2, seconds=38.0)))
    decision = planner.plan(BUSY_SPEC, BUSY_STATE, observed, CLUSTER, NOW)
    assert [(d.shard_id, d.reason) for d in decision.deletes] == [(9, Reason.STRAGGLER)]
    assert not decision.creates  # no copy; the work goes to the next free slots
    assert decision.state.speculative_copies == 0
    assert decision.state.rebalances == {"straggler": 1}
    # The 3 it ran stay counted; the 17 it never reached are no attempts (yet).
    assert decision.state.attempts == 190 - 17
    assert any("20 microtasks given back" in e.message for e in decision.events)
    # The one it was on (82) may be slow by nature: it runs again as a retry, due at once.
    assert [(b.attempts, b.not_before, b.indexes) for b in decision.state.retry] == [
        (1, NOW, IndexSet.from_range(82, 83))
    ]
    # Next, its slot free: its work goes out again, sized anew, first attempts as first attempts.
    rest = busy_window(last_shard(None))[1:]
    placed = planner.plan(BUSY_SPEC, decision.state, rest, CLUSTER, NOW + 1.0)
    by_attempt: dict[int, IndexSet] = {}
    for create in placed.creates:
        assert create.plan.copy_of is None
        by_attempt[create.plan.attempt] = (
            by_attempt.get(create.plan.attempt, IndexSet.EMPTY) | create.plan.indexes
        )
    assert by_attempt.get(2, IndexSet.EMPTY) <= IndexSet.from_range(82, 83)
    assert by_attempt.get(1, IndexSet.EMPTY) <= IndexSet.from_range(80, 100) | IndexSet.from_range(
        190, 200
    )
    assert by_attempt


def test_a_retry_is_never_given_back_so_a_slow_microtask_cannot_be_given_back_forever() -> None:
    # The same straggler on its second attempt: copied, as before.
    observed = busy_window(last_shard(Progress(done=2, seconds=38.0), attempt=2))
    decision = planner.plan(BUSY_SPEC, BUSY_STATE, observed, CLUSTER, NOW)
    assert not decision.deletes
    assert [c.plan.copy_of for c in decision.creates] == [9]
    # Nor where a microtask runs only once: a copy interrupts nothing.
    once = replace(BUSY_SPEC, retry=replace(BUSY_SPEC.retry, max_attempts=1))
    observed = busy_window(last_shard(Progress(done=2, seconds=38.0)))
    assert not planner.plan(once, BUSY_STATE, observed, CLUSTER, NOW).deletes


def test_a_straggler_that_did_much_of_its_work_is_copied() -> None:
    # 12 of 20 done, but at 13 s a microtask: the copy holds its work.
    observed = busy_window(last_shard(Progress(done=12, seconds=156.0), started_at=NOW - 158.0))
    decision = planner.plan(BUSY_SPEC, BUSY_STATE, observed, CLUSTER, NOW)
    assert not decision.deletes
    assert [c.plan.copy_of for c in decision.creates] == [9]


def test_with_an_explicit_shard_size_a_straggler_is_copied() -> None:
    spec = replace(BUSY_SPEC, target_shard_seconds=None)
    observed = busy_window(last_shard(Progress(done=2, seconds=38.0)))
    decision = planner.plan(spec, BUSY_STATE, observed, CLUSTER, NOW)
    assert not decision.deletes
    assert [c.plan.copy_of for c in decision.creates] == [9]
