"""Table tests of the pods' own retries (`retry.inPod`): when a pod may retry, and how the core
counts a microtask that its pod ran twice."""

from __future__ import annotations

import pytest
from core_driver import Driver
from microtask_operator.core import retries
from microtask_operator.core.types import CoreSpec, CreateShard, RetryPolicy, ShardPhase
from microtask_runner.contract import retries_in_pod
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report


def test_a_pod_retries_within_the_attempts_and_after_the_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_seconds=5, max_backoff_seconds=12)
    assert retries.in_pod_delay(policy, 1) == 5
    assert retries.in_pod_delay(policy, 2) == 10  # the backoff before the third attempt
    assert retries.in_pod_delay(policy, 3) is None  # no attempt left
    assert retries.in_pod_delay(RetryPolicy(in_pod=False), 1) is None
    assert retries.no_retry_codes(policy) == {126, 127}
    assert retries.no_retry_codes(
        RetryPolicy(non_retryable_exit_codes=frozenset({2}), retry_command_not_found=True)
    ) == {2}
    assert retries.in_pod_env(RetryPolicy(max_attempts=1), 1) == {}


@pytest.mark.parametrize(
    ("succeeded", "failed", "retries_here"),
    [(9, 1, True), (1, 1, True), (0, 1, False), (1, 2, False), (5, 0, False)],
)
def test_a_pod_retries_only_when_no_more_failed_than_succeeded(
    succeeded: int, failed: int, retries_here: bool
) -> None:
    assert retries_in_pod(succeeded, failed) is retries_here


def finish_with(d: Driver, shard_id: int, report: Report) -> None:
    d.set(shard_id, phase=ShardPhase.SUCCEEDED, finished_at=d.now, report=report, exit_code=10)


def one_shard(max_attempts: int = 3) -> tuple[Driver, int]:
    spec = CoreSpec(
        total=4,
        microtasks_per_shard=4,
        parallelism=1,
        retry=RetryPolicy(max_attempts=max_attempts, backoff_seconds=1, max_backoff_seconds=4),
    )
    d = Driver(spec)
    d.step()
    (shard,) = d.running()
    d.set(shard.shard_id, phase=ShardPhase.RUNNING, started_at=d.now, node="cpu-0")
    return d, shard.shard_id


def test_a_microtask_its_pod_ran_twice_counts_both_attempts() -> None:
    d, shard = one_shard()
    two = IndexSet.from_range(2, 3)
    finish_with(
        d,
        shard,
        Report(
            succeeded=IndexSet.from_range(0, 4),
            errors={1: "busy"},
            count=4,
            seconds_total=4.0,
            retried={1: two},
        ),
    )
    end = d.step(1.0)
    assert end.phase == "Succeeded"
    assert end.state.attempts == 5
    assert end.state.succeeded_after_retry == 1
    (entry,) = end.state.failure_summary
    assert (entry.exit_code, entry.attempts, entry.microtasks, entry.sample_index) == (1, 1, 0, 2)
    assert end.deltas.retried == 1 and end.deltas.failures == {"exit 1": 1}


def test_a_microtask_that_fails_twice_in_its_pod_has_spent_two_attempts() -> None:
    d, shard = one_shard(max_attempts=3)
    two = IndexSet.from_range(2, 3)
    report = Report(
        succeeded=IndexSet.parse("0-1,3"),
        failed={1: two},
        errors={1: "busy"},
        count=4,
        seconds_total=4.0,
        retried={1: two},
    )
    finish_with(d, shard, report)
    d.step(1.0)
    # Retried in a new shard as its third attempt, after the backoff of two attempts.
    decision = d.step(1.0)
    assert not [a for a in decision.actions if isinstance(a, CreateShard)]
    decision = d.step(2.0)
    (retry,) = [a for a in decision.actions if isinstance(a, CreateShard)]
    assert (retry.plan.indexes, retry.plan.attempt) == (two, 3)
    assert decision.state.attempts == 4 + 1 + 1

    # With two attempts allowed, it failed for good in its pod.
    d, shard = one_shard(max_attempts=2)
    finish_with(d, shard, report)
    end = d.step(1.0)
    assert end.phase == "Failed"
    assert end.state.failed == two
    assert end.state.attempts == 5
