"""When shards cannot be made (launches held) or their pods are refused for good."""

from __future__ import annotations

from core_driver import Driver, creates, ok
from microtask_operator.core import conditions
from microtask_operator.core.planner import MAX_REFUSAL_CHARS, plan
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    DeleteShard,
    Event,
    RetryPolicy,
    ShardPhase,
    SpeculationPolicy,
)

REFUSAL = (
    'pods "mtj-s0-abcde" is forbidden: violates PodSecurity "restricted:latest": '
    'privileged (container "worker" must not set securityContext.privileged=true)'
)


def held(d: Driver, dt: float = 1.0):  # type: ignore[no-untyped-def]
    """One step of a body that cannot make shards for now."""
    d.now += dt
    decision = plan(d.spec, d.state, list(d.shards.values()), d.cluster, d.now, launch=False)
    d.apply(decision)
    return decision


# -- launches held ---------------------------------------------------------------------------------


def test_held_launches_still_harvest_and_create_nothing() -> None:
    spec = CoreSpec(
        total=40, microtasks_per_shard=10, parallelism=2, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if i == 3 else 0)
    d.set(1, phase=ShardPhase.LOST, failure_reason="Evicted")
    decision = held(d, 5)  # a retry is due, fresh work waits, a lost shard's work is back
    assert creates(decision.actions) == []
    assert decision.status["succeeded"] == 9
    assert decision.state.rebalances == {"pod_disrupted": 1}
    assert str(decision.state.retired) == "0-1"  # (shard 0's Job kept for debugging)
    assert decision.phase == "Running"
    assert decision.state.attempts == 10  # the lost shard ran nothing
    # Launches allowed again: everything that waited goes out.
    resumed = d.step(1)
    plans = [c.plan for c in creates(resumed.actions)]
    assert [(str(p.indexes), p.attempt) for p in plans] == [("3", 2), ("10-19", 1)]


def test_held_launches_make_no_copy_and_no_move() -> None:
    spec = CoreSpec(
        total=20,
        microtasks_per_shard=10,
        parallelism=2,
        accelerator=Accelerator.AUTO,
        fallback_after_seconds=10,
        speculation=SpeculationPolicy(enabled=True, slowdown_factor=2, min_samples=1),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, ok)
    d.set(1, phase=ShardPhase.PENDING, pending_reason="Unschedulable", pending_since=d.now)
    d.set(1, started_at=None, node=None)
    decision = held(d, 100)  # shard 1 is overdue for a fallback (and slow)
    assert creates(decision.actions) == []
    assert 1 in d.shards and d.state.rebalances == {}
    assert d.state.gpu_fallback_until is None
    moved = d.step(1)
    assert [c.plan.shard_id for c in creates(moved.actions)] == [2]
    assert moved.state.rebalances == {"unschedulable_fallback": 1}


def test_held_launches_do_not_start_the_job() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    decision = held(d, 0)
    assert creates(decision.actions) == []
    assert decision.phase == "Pending"
    assert decision.state.start_time is None
    assert not any(isinstance(a, Event) and a.reason == "Started" for a in decision.actions)


def test_held_launches_still_finish_a_job_that_is_done() -> None:
    d = Driver(CoreSpec(total=20, microtasks_per_shard=10, parallelism=2))
    d.step()
    d.finish_all(ok)
    decision = held(d)
    assert decision.done and decision.phase == "Succeeded"


# -- pods refused for good -------------------------------------------------------------------------


def test_pods_refused_for_good_fail_the_job_at_once() -> None:
    spec = CoreSpec(total=40, microtasks_per_shard=10, parallelism=3)
    d = Driver(spec)
    d.step()
    d.finish(0, ok)
    d.set(1, phase=ShardPhase.PENDING, started_at=None, node=None, refusal=REFUSAL)
    decision = d.step(1)
    assert decision.done and decision.phase == "Failed"
    assert creates(decision.actions) == []
    # Shard 0 was harvested first; the others are cancelled.
    assert decision.status["succeeded"] == 10
    deleted = {a.shard_id: a.reason for a in decision.actions if isinstance(a, DeleteShard)}
    assert deleted == {0: "harvested", 1: "refused", 2: "refused"}
    # Never ran: the refused shard's ten and the ten never launched (shard 2 was running).
    assert decision.status["notRun"] == 20
    assert decision.state.attempts == 20  # shard 1's launch ran nothing
    failed = conditions.get_condition(decision.state.conditions, conditions.FAILED)
    assert failed is not None and failed.status == "True"
    assert failed.reason == conditions.REASON_PODS_REFUSED
    assert REFUSAL in failed.message
    assert decision.status["message"] == failed.message
    assert failed.message.endswith(", 20 microtasks never ran")
    [event] = [a for a in decision.actions if isinstance(a, Event) and a.reason == "PodsRefused"]
    assert event.warning and REFUSAL in event.message
    assert decision.status["failed"] == 0  # refused, not failed: nothing ran to fail
    # Planned again once finished, the job keeps the reason it failed for.
    again = d.step(2)
    failed = conditions.get_condition(again.state.conditions, conditions.FAILED)
    assert failed is not None and failed.reason == conditions.REASON_PODS_REFUSED
    assert again.status["message"] == decision.status["message"]


def test_a_long_refusal_is_quoted_within_bounds() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    d.set(0, phase=ShardPhase.PENDING, started_at=None, refusal="forbidden: " + "x" * 5000)
    decision = d.step(1)
    assert decision.phase == "Failed"
    assert MAX_REFUSAL_CHARS <= len(decision.status["message"]) <= MAX_REFUSAL_CHARS + 200
    assert decision.status["message"].count("x") < MAX_REFUSAL_CHARS
