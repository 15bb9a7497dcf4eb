"""Regression tests of races found in review: vanished Jobs, lost status writes after a move,
and a dying straggler beside its healthy copy."""

from __future__ import annotations

from core_driver import TEN, TWO_CPU_ONE_GPU, Driver, creates
from microtask_operator.core.conditions import Phase
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    DeleteShard,
    ObservedShard,
    Pool,
    RetryPolicy,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

CPU = TWO_CPU_ONE_GPU


def test_a_job_that_vanishes_unseen_comes_back_at_its_attempt_level() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=1),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1)  # attempt 1 fails
    d.step(1)
    d.step(2)  # attempt 2 launched
    [second] = [s for s in d.shards.values() if s.attempt == 2]
    assert second.indexes == TEN
    # Someone deletes the Job; the watch never showed a deletion.
    del d.shards[second.shard_id]
    decision = d.step(1)
    [again] = creates(decision.actions)
    assert again.plan.attempt == 2  # not back to 1: maxAttempts still holds
    assert decision.state.attempts == 20
    assert any(getattr(a, "reason", "") == "ShardVanished" for a in decision.actions)


def test_a_fallback_whose_status_write_was_lost_is_not_moved_twice() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        accelerator=Accelerator.AUTO,
        fallback_after_seconds=10,
    )
    state = CoreState(
        next_shard=1, attempts=10, phase=Phase.RUNNING, start_time=0.0, in_flight={1: TEN}
    )
    pending_gpu = ObservedShard(
        0,
        TEN,
        1,
        Pool.GPU,
        0.0,
        ShardPhase.PENDING,
        pending_reason="Unschedulable",
        pending_since=0.0,
    )
    first = plan(spec, state, [pending_gpu], CPU, 20.0)
    [moved] = creates(first.actions)
    assert moved.plan.pool == Pool.CPU
    # The status write failed: the old state comes back, and now the CPU shard exists too.
    cpu_shard = moved.plan.as_pending(20.0, reason="Created")
    second = plan(spec, state, [pending_gpu, cpu_shard], CPU, 21.0)
    assert creates(second.actions) == []
    assert DeleteShard(0, "fallback") in second.actions
    assert second.status["shardsInFlight"] == 1


def test_a_lost_retry_shard_relaunched_before_a_lost_status_write_is_not_doubled() -> None:
    spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=2)
    state = CoreState(
        next_shard=1, attempts=20, phase=Phase.RUNNING, start_time=0.0, in_flight={2: TEN}
    )
    lost = ObservedShard(0, TEN, 2, Pool.CPU, 0.0, ShardPhase.LOST, node="a", started_at=1.0)
    first = plan(spec, state, [lost], CPU, 5.0)
    [relaunch] = creates(first.actions)
    assert relaunch.plan.attempt == 2
    again = plan(spec, state, [lost, relaunch.plan.as_pending(5.0)], CPU, 6.0)
    assert creates(again.actions) == []
    assert again.status["queued"] == 0


def test_a_dying_straggler_does_not_kill_its_healthy_copy() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=2,
        retry=RetryPolicy(max_attempts=1),
        speculation=SpeculationPolicy(enabled=True),
    )
    state = CoreState(
        next_shard=2, attempts=10, phase=Phase.RUNNING, start_time=0.0, in_flight={1: TEN}
    )
    original = ObservedShard(
        0,
        TEN,
        1,
        Pool.CPU,
        0.0,
        ShardPhase.FAILED,
        node="a",
        started_at=0.0,
        finished_at=100.0,
        exit_code=137,
        failure_reason="OOMKilled",
        report=Report(succeeded=IndexSet.from_range(0, 3), current=3),
    )
    copy = ObservedShard(
        1, TEN, 1, Pool.CPU, 50.0, ShardPhase.RUNNING, copy_of=0, node="b", started_at=50.0
    )
    decision = plan(spec, state, [original, copy], CPU, 100.0)
    assert decision.phase == "Running"
    assert decision.status["failedIndexes"] == ""
    assert decision.status["succeededIndexes"] == "0-2"  # what the straggler finished counts
    deleted = {a.shard_id for a in decision.actions if isinstance(a, DeleteShard)}
    assert deleted == {0}  # the copy runs on
