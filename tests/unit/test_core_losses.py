"""Table tests of lost shards: the reason each loss counts under, and the attempts it leaves.

A shard the infrastructure took away (its node, its Job, its pod) spends no retry budget. What it
ran counts: its successes, and the microtask it was running when it was taken away, which ran (its
relaunch is one more run) although it spends no attempt of its own.
"""

from __future__ import annotations

import pytest
from core_driver import TEN, TWO_CPU_ONE_GPU, Driver, creates, ok
from microtask_operator.core import lost
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    DeleteShard,
    Event,
    ObservedShard,
    Pool,
    Reason,
    RetryPolicy,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

CPU = TWO_CPU_ONE_GPU


def rebalance_events(actions: list[object]) -> list[str]:
    return [a.message for a in actions if isinstance(a, Event) and a.reason == "Rebalanced"]


def partial(done: int, current: int | None, start: int = 0) -> Report:
    """The report of a pod taken away after `done` microtasks from `start`, running `current`."""
    return Report(
        succeeded=IndexSet.from_range(start, start + done),
        current=current,
        count=done,
        seconds_total=float(done),
    )


# -- the reason a loss counts under ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure_reason", "reason"),
    [
        ("NodeDeleted", "node_lost"),
        ("NodeLost", "node_lost"),
        ("ContainerStatusUnknown", "node_lost"),
        ("DeletionByTaintManager", "node_lost"),
        ("DeletionByPodGC", "node_lost"),
        ("Shutdown", "node_lost"),
        ("NodeShutdown", "node_lost"),
        ("TerminationByKubelet", "node_lost"),
        ("JobDeleted", "job_deleted"),
        ("PodDeleted", "pod_disrupted"),
        ("Evicted", "pod_disrupted"),
        ("EvictionByEvictionAPI", "pod_disrupted"),
        ("PreemptionByScheduler", "pod_disrupted"),
        ("PreemptionByKubeScheduler", "pod_disrupted"),
        ("Preempting", "pod_disrupted"),
        ("PreemptionBySomethingNew", "pod_disrupted"),
        (None, "pod_disrupted"),
    ],
)
def test_a_lost_shard_is_rebalanced_under_the_reason_of_its_loss(
    failure_reason: str | None, reason: str
) -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    d.set(0, phase=ShardPhase.LOST, failure_reason=failure_reason)
    decision = d.step(1)
    assert decision.state.rebalances == {reason: 1}
    assert decision.deltas.rebalances == {Reason(reason): 1}
    assert DeleteShard(0, reason) in decision.actions
    [message] = rebalance_events(decision.actions)
    assert message.startswith(f"{reason}: ")
    assert f"({failure_reason or 'lost'})" in message
    assert message.endswith("; 10 microtasks relaunched")
    [again] = creates(decision.actions)
    assert (str(again.plan.indexes), again.plan.attempt) == ("0-9", 1)


def test_every_reason_of_the_table_is_a_rebalance_reason() -> None:
    assert set(lost.LOST_REASONS.values()) == {
        Reason.NODE_LOST,
        Reason.JOB_DELETED,
        Reason.POD_DISRUPTED,
    }
    assert lost.rebalance_reason(lost.NODE_NOT_READY) == Reason.NODE_LOST
    assert lost.rebalance_reason(lost.JOB_VANISHED) == Reason.JOB_DELETED


def test_the_messages_name_what_was_lost() -> None:
    d = Driver(CoreSpec(total=30, microtasks_per_shard=10, parallelism=3))
    d.step()
    d.set(0, phase=ShardPhase.LOST, failure_reason="JobDeleted")
    d.set(1, phase=ShardPhase.LOST, failure_reason="Evicted", report=partial(4, None, 10))
    d.set(2, phase=ShardPhase.LOST, failure_reason="NodeDeleted")
    one, two = d.shards[1].node, d.shards[2].node
    messages = rebalance_events(d.step(1).actions)
    assert messages == [
        "job_deleted: the Job of shard 0 was deleted by someone else (JobDeleted); "
        "10 microtasks relaunched",
        f"pod_disrupted: the pod of shard 1 on node {one} was taken away (Evicted); "
        "6 microtasks relaunched",
        f"node_lost: shard 2 lost with node {two} (NodeDeleted); 10 microtasks relaunched",
    ]


def test_a_node_not_ready_past_the_grace_is_a_lost_node() -> None:
    spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=1, node_lost_grace_seconds=30)
    d = Driver(spec)
    d.step()
    d.set(0, node_lost_since=d.now)
    node = d.shards[0].node
    decision = d.step(30)
    assert decision.state.rebalances == {"node_lost": 1}
    [message] = rebalance_events(decision.actions)
    assert message.startswith(f"node_lost: shard 0 lost with node {node} (NodeNotReady); ")


def test_a_job_that_vanished_unseen_counts_as_deleted() -> None:
    spec = CoreSpec(total=20, microtasks_per_shard=10, parallelism=2)
    d = Driver(spec)
    d.step()
    del d.shards[1]  # deleted by someone, and the watch never showed it
    decision = d.step(1)
    assert decision.state.rebalances == {"job_deleted": 1}
    [message] = rebalance_events(decision.actions)
    assert message == (
        "job_deleted: a Job of attempt 1 is gone unseen (JobVanished); 10 microtasks relaunched"
    )
    assert decision.state.attempts == 20  # the vanished launch did not count; its relaunch does


def test_suspending_the_job_moves_nothing_but_a_queue_preempting_it_does() -> None:
    spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=1)
    d = Driver(spec)
    d.step()
    d.spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=1, suspend=True)
    d.set(0, phase=ShardPhase.LOST, failure_reason="Suspended", suspended=True)
    held = d.step(1)
    assert held.phase == "Suspended"
    assert held.state.rebalances == {}
    # A queue (Kueue) suspends the Job on its own: the pod was taken away.
    queued = Driver(spec)
    queued.step()
    queued.set(0, phase=ShardPhase.LOST, failure_reason="Suspended", suspended=True)
    assert queued.step(1).state.rebalances == {"pod_disrupted": 1}


# -- what a loss leaves in `attempts` --------------------------------------------------------------


def test_the_microtask_running_when_the_node_was_lost_counts_as_a_run() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(max_attempts=1)
    )
    d = Driver(spec)
    d.step()
    d.set(0, phase=ShardPhase.LOST, failure_reason="NodeLost", report=partial(3, 3))
    decision = d.step(1)
    [again] = creates(decision.actions)
    # 3 ran (it was running): relaunched at the same attempt, with no retry budget spent.
    assert (str(again.plan.indexes), again.plan.attempt) == ("3-9", 1)
    assert decision.status["failed"] == 0
    assert decision.state.retry == ()
    # Runs: 0-2 once, 3 twice (its relaunch included), 4-9 once (the relaunch).
    assert decision.state.attempts == 11
    end = d.run_to_end(ok)
    assert end.phase == "Succeeded"
    assert end.state.attempts == 11


def test_a_lost_retry_shard_keeps_its_attempt_level_and_counts_what_ran() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1)  # attempt 1 of all ten fails
    d.step(1)
    d.step(2)
    [retry_id] = [i for i in d.shards if i != 0]
    assert d.state.attempts == 20
    d.set(retry_id, phase=ShardPhase.LOST, failure_reason="Evicted", report=partial(5, 5))
    decision = d.step(1)
    [again] = creates(decision.actions)
    assert (str(again.plan.indexes), again.plan.attempt) == ("5-9", 2)
    assert decision.state.attempts == 10 + 6 + 5


def test_a_relaunch_before_a_lost_status_write_counts_once() -> None:
    """The lost shard is seen again beside its relaunch: the same count as the first time."""
    spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=1)
    state = CoreState(
        next_shard=1, attempts=10, phase="Running", start_time=0.0, in_flight={1: TEN}
    )
    gone = ObservedShard(
        0,
        TEN,
        1,
        Pool.CPU,
        0.0,
        ShardPhase.LOST,
        node="a",
        started_at=1.0,
        failure_reason="NodeDeleted",
        report=partial(3, 3),
    )
    first = plan(spec, state, [gone], CPU, 5.0)
    [relaunch] = creates(first.actions)
    assert first.state.attempts == 11
    # The status write failed: the old status comes back, and the relaunch exists.
    again = plan(spec, state, [gone, relaunch.plan.as_pending(5.0)], CPU, 6.0)
    assert creates(again.actions) == []
    assert again.state.attempts == 11
    assert again.status["running"] == 7


def test_a_fallback_before_a_lost_status_write_is_not_an_attempt_twice() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        accelerator=Accelerator.AUTO,
        fallback_after_seconds=10,
    )
    state = CoreState(
        next_shard=1, attempts=10, phase="Running", start_time=0.0, in_flight={1: TEN}
    )
    waiting = ObservedShard(
        0, TEN, 1, Pool.GPU, 0.0, ShardPhase.PENDING, pending_reason="Unschedulable"
    )
    first = plan(spec, state, [waiting], CPU, 20.0)
    [moved] = creates(first.actions)
    assert first.state.attempts == 10  # a move is no attempt
    again = plan(spec, state, [waiting, moved.plan.as_pending(20.0)], CPU, 21.0)
    assert creates(again.actions) == []
    assert again.state.attempts == 10


def test_shards_cancelled_before_their_pods_started_ran_nothing() -> None:
    spec = CoreSpec(
        total=20,
        microtasks_per_shard=10,
        parallelism=2,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2})),
    )
    d = Driver(spec)
    d.step()
    d.set(1, phase=ShardPhase.PENDING, started_at=None, node=None, pending_reason="Unschedulable")
    d.finish(0, lambda i, a: 2 if i == 0 else 0)
    end = d.step(1)
    assert end.phase == "Failed"
    assert DeleteShard(1, "too_many_failures") in end.actions
    assert end.state.attempts == 10
    assert end.status["notRun"] == 0  # launched (their Job existed), so not "never launched"
