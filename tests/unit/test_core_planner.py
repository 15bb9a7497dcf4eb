"""Table tests of the core's decisions: launch, harvest, retry, give up, finish, restart safety."""

from __future__ import annotations

import json

from core_driver import Driver, creates, ok, report_for
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    CoreSpec,
    DeleteShard,
    Event,
    ObservedShard,
    Pool,
    RetryPolicy,
    ShardPhase,
    SuspendShard,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report


def test_first_decision_launches_the_window_of_consecutive_shards() -> None:
    d = Driver(CoreSpec(total=1000, microtasks_per_shard=100, parallelism=3))
    decision = d.step()
    plans = [c.plan for c in creates(decision.actions)]
    assert [str(p.indexes) for p in plans] == ["0-99", "100-199", "200-299"]
    assert [p.shard_id for p in plans] == [0, 1, 2]
    assert all(p.attempt == 1 and p.pool == Pool.CPU for p in plans)
    assert decision.status["running"] == 300
    assert decision.status["total"] == 1000
    assert any(isinstance(a, Event) and a.reason == "Started" for a in decision.actions)


def test_a_harvested_shard_is_merged_then_deleted_and_the_window_refilled() -> None:
    d = Driver(CoreSpec(total=1000, microtasks_per_shard=100, parallelism=3))
    d.step()
    d.finish(0, ok)
    decision = d.step(5)
    assert decision.status["succeeded"] == 100
    assert decision.status["succeededIndexes"] == "0-99"
    assert DeleteShard(0, "harvested") in decision.actions
    assert [str(c.plan.indexes) for c in creates(decision.actions)] == ["300-399"]
    assert 0 in decision.state.retired


def test_failed_microtasks_are_retried_alone_after_backoff() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(backoff_seconds=10)
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if i in (3, 7) else 0)
    decision = d.step(1)
    assert decision.status["succeeded"] == 8
    assert decision.status["queued"] == 2
    assert creates(decision.actions) == []  # backoff not over
    assert decision.next_wakeup == d.now + 10
    decision = d.step(10)
    [retry] = creates(decision.actions)
    assert str(retry.plan.indexes) == "3,7"
    assert retry.plan.attempt == 2


def test_backoff_doubles_and_is_capped() -> None:
    from microtask_operator.core.retries import backoff_seconds

    policy = RetryPolicy(backoff_seconds=10, max_backoff_seconds=35)
    assert [backoff_seconds(policy, a) for a in (1, 2, 3, 4, 100)] == [10, 20, 35, 35, 35]


def test_non_retryable_exit_code_fails_at_once_and_fails_the_job_over_the_limit() -> None:
    spec = CoreSpec(
        total=4,
        microtasks_per_shard=4,
        parallelism=1,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2}), max_failed_microtasks=0),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 2 if i == 1 else 0)
    decision = d.step(1)
    assert decision.phase == "Failed"
    assert decision.done
    assert decision.status["failedIndexes"] == "1"
    assert decision.state.attempts == 4
    reasons = [c["reason"] for c in decision.status["conditions"] if c["type"] == "Failed"]
    assert reasons == ["TooManyFailures"]


def test_tolerated_failures_let_the_job_succeed() -> None:
    spec = CoreSpec(
        total=4,
        microtasks_per_shard=4,
        parallelism=1,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2}), max_failed_microtasks=1),
    )
    d = Driver(spec)
    decision = d.run_to_end(lambda i, a: 2 if i == 1 else 0)
    assert decision.phase == "Succeeded"
    assert decision.status["succeeded"] == 3
    assert decision.status["failed"] == 1


def test_attempts_are_capped_by_max_attempts() -> None:
    spec = CoreSpec(
        total=3,
        microtasks_per_shard=3,
        parallelism=2,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=1, max_failed_microtasks=5),
    )
    d = Driver(spec)
    decision = d.run_to_end(lambda i, a: 9 if i == 0 else 0)
    assert decision.phase == "Succeeded"
    assert decision.status["failedIndexes"] == "0"
    attempts_of_0 = [c.plan.attempt for c in d.created if 0 in c.plan.indexes]
    assert attempts_of_0 == [1, 2, 3]


def test_a_pod_killed_mid_shard_charges_only_the_running_microtask() -> None:
    spec = CoreSpec(total=10, microtasks_per_shard=10, parallelism=1)
    d = Driver(spec)
    d.step()
    partial = Report(
        succeeded=IndexSet.from_range(0, 4),
        failed={},
        errors={},
        current=4,
        seconds_total=4,
        seconds_max=1,
        count=4,
    )
    d.set(0, phase=ShardPhase.FAILED, report=partial, exit_code=137, failure_reason="OOMKilled")
    decision = d.step(1)
    assert decision.status["succeededIndexes"] == "0-3"
    [batch] = decision.state.retry
    assert (batch.attempts, str(batch.indexes)) == (1, "4")
    # The rest was never tried: it goes back as first attempts, right away.
    [relaunch] = creates(decision.actions)
    assert str(relaunch.plan.indexes) == "5-9"
    assert relaunch.plan.attempt == 1
    assert decision.state.attempts == 10  # the relaunch replaces launches that never ran


def test_a_pod_without_a_report_charges_every_microtask() -> None:
    spec = CoreSpec(total=5, microtasks_per_shard=5, parallelism=1)
    d = Driver(spec)
    d.step()
    d.set(0, phase=ShardPhase.FAILED, exit_code=127, failure_reason="Error")
    decision = d.step(1)
    [batch] = decision.state.retry
    assert str(batch.indexes) == "0-4" and batch.attempts == 1


def test_a_harvest_is_never_counted_twice_when_the_delete_did_not_happen() -> None:
    d = Driver(CoreSpec(total=200, microtasks_per_shard=100, parallelism=1))
    d.step()
    d.finish(0, ok)
    first = d.step(1)
    assert first.status["succeeded"] == 100
    # The body crashed before deleting shard 0: it is observed again, finished, after restart.
    finished = ObservedShard(
        shard_id=0,
        indexes=IndexSet.from_range(0, 100),
        attempt=1,
        pool=Pool.CPU,
        created_at=0,
        phase=ShardPhase.SUCCEEDED,
        report=report_for(IndexSet.from_range(0, 100), 1, ok),
    )
    d.shards[0] = finished
    state = CoreState.from_status(first.status)
    again = plan(d.spec, state, list(d.shards.values()), d.cluster, d.now + 1)
    assert again.status["succeeded"] == 100
    assert again.deltas.succeeded == 0
    assert DeleteShard(0, "retired") in again.actions
    assert creates(again.actions) == []


def test_a_shard_created_before_a_lost_status_write_is_recognised_not_duplicated() -> None:
    spec = CoreSpec(total=300, microtasks_per_shard=100, parallelism=2)
    d = Driver(spec)
    d.step()
    # Restart from an empty status: the two Jobs exist and must be adopted.
    decision = plan(spec, CoreState.initial(), list(d.shards.values()), d.cluster, d.now + 1)
    assert creates(decision.actions) == []
    assert decision.state.next_shard == 2
    assert decision.status["running"] == 200
    assert decision.state.attempts == 200  # their attempts are counted once, now


def test_retry_batch_in_flight_after_restart_is_not_launched_twice() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=2, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if i == 5 and a == 1 else 0)
    before_retry = d.step(1)
    d.step(5)  # the retry shard for index 5 is created...
    retry_shard = max(d.shards)
    # ...but the status write after it was lost: the old status still queues index 5.
    decision = plan(spec, before_retry.state, list(d.shards.values()), d.cluster, d.now + 1)
    assert creates(decision.actions) == []
    assert decision.status["queued"] == 0
    assert str(d.shards[retry_shard].indexes) == "5"


def test_whole_job_succeeds_with_exact_counts_and_window_bound() -> None:
    spec = CoreSpec(
        total=1000, microtasks_per_shard=7, parallelism=5, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    decision = d.run_to_end(lambda i, a: 1 if i % 13 == 0 and a == 1 else 0)
    assert decision.phase == "Succeeded"
    assert decision.status["succeeded"] == 1000
    assert decision.status["failed"] == 0
    assert decision.status["succeededIndexes"] == "0-999"
    assert d.max_in_flight <= 5
    assert decision.state.attempts == 1000 + len(range(0, 1000, 13))
    assert any(isinstance(a, Event) and a.reason == "Succeeded" for a in decision.actions)


def test_finished_job_cleans_up_and_stays_finished() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=5, parallelism=2))
    done = d.run_to_end(ok)
    again = plan(d.spec, done.state, [], d.cluster, d.now + 100)
    assert again.phase == "Succeeded" and again.done
    assert again.actions == []
    assert again.status["completionTime"] == done.status["completionTime"]


def test_suspend_stops_launching_and_suspends_running_shards() -> None:
    spec = CoreSpec(total=100, microtasks_per_shard=10, parallelism=2)
    d = Driver(spec)
    d.step()
    d.spec = CoreSpec(total=100, microtasks_per_shard=10, parallelism=2, suspend=True)
    decision = d.step(1)
    assert decision.phase == "Suspended"
    assert creates(decision.actions) == []
    assert {a.shard_id for a in decision.actions if isinstance(a, SuspendShard)} == {0, 1}
    suspended = [c for c in decision.status["conditions"] if c["type"] == "Suspended"]
    assert suspended[0]["status"] == "True"
    d.spec = spec
    decision = d.step(1)
    assert {a.shard_id for a in decision.actions if isinstance(a, SuspendShard)} == {0, 1}
    assert all(not a.suspend for a in decision.actions if isinstance(a, SuspendShard))
    assert decision.phase in ("Pending", "Running")


def test_job_deadline_fails_the_job_and_accounts_every_microtask() -> None:
    spec = CoreSpec(total=100, microtasks_per_shard=10, parallelism=2, job_timeout_seconds=60)
    d = Driver(spec)
    d.step()
    d.finish(0, ok)
    decision = d.step(61)
    assert decision.phase == "Failed"
    assert decision.status["succeeded"] + decision.status["failed"] == 100
    assert {a.shard_id for a in decision.actions if isinstance(a, DeleteShard)} >= {1}
    reasons = [c["reason"] for c in decision.status["conditions"] if c["type"] == "Failed"]
    assert reasons == ["DeadlineExceeded"]


def test_failed_shards_are_kept_for_debugging_up_to_the_limit() -> None:
    spec = CoreSpec(
        total=40,
        microtasks_per_shard=10,
        parallelism=4,
        keep_failed_shards=2,
        retry=RetryPolicy(max_attempts=1, max_failed_microtasks=100),
    )
    d = Driver(spec)
    d.step()
    d.finish_all(lambda i, a: 1)
    decision = d.step(1)
    deleted = {a.shard_id for a in decision.actions if isinstance(a, DeleteShard)}
    assert len(decision.state.kept) == 2
    assert deleted == {0, 1}  # the oldest go, the newest two stay
    assert decision.phase == "Succeeded"


def test_status_round_trips_and_stays_json() -> None:
    spec = CoreSpec(total=50, microtasks_per_shard=5, parallelism=3, retry=RetryPolicy())
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 3 if i == 2 else 0)
    decision = d.step(1)
    status = json.loads(json.dumps(decision.status))
    state = CoreState.from_status(status)
    assert state.to_status() == decision.state.to_status()
