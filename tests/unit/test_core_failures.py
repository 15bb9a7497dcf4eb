"""Table tests of failure handling: who is charged, what is retried, the failure summary, the
failure limits, the universe of indexes, resources spent and the counters of a finished job."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from core_driver import Driver, ok
from microtask_operator.api.model import MicrotaskJobStatus
from microtask_operator.core import failures, retries
from microtask_operator.core.attribution import Charge, attribute
from microtask_operator.core.failures import FailureEntry, describe_exit_code
from microtask_operator.core.planner import Decision
from microtask_operator.core.resources import ResourceSeconds, spent
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    CreateShard,
    Event,
    ObservedShard,
    Pool,
    RetryPolicy,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

NOT_FOUND = "command not found: pyhton3 (searched PATH)"


def creates(decision: Decision) -> list[CreateShard]:
    return [a for a in decision.actions if isinstance(a, CreateShard)]


def events(decision: Decision, reason: str) -> list[Event]:
    return [a for a in decision.actions if isinstance(a, Event) and a.reason == reason]


def fails(codes: dict[int, int], attempts: int = 1):  # type: ignore[no-untyped-def]
    """index -> exit code for its first `attempts` attempts; everything else succeeds."""

    def outcome(index: int, attempt: int) -> int:
        return codes.get(index, 0) if attempt <= attempts else 0

    return outcome


# -- the universe ----------------------------------------------------------------------------------


def test_a_job_over_a_universe_launches_exactly_its_indexes_and_succeeds() -> None:
    universe = IndexSet.parse("3,17,200-209")
    spec = CoreSpec(total=12, microtasks_per_shard=5, parallelism=2, universe=universe)
    assert spec.indexes() == universe
    d = Driver(spec)
    end = d.run_to_end(ok)
    launched = IndexSet.from_ranges(r for c in d.created for r in c.plan.indexes.ranges)
    assert launched == universe
    assert sum(len(c.plan.indexes) for c in d.created) == 12  # each once
    assert end.phase == "Succeeded"
    assert end.status["total"] == 12
    assert end.status["succeeded"] == 12
    assert end.status["succeededIndexes"] == "3,17,200-209"
    assert end.status["notRun"] == 0
    assert end.state.attempts == 12


def test_reports_about_indexes_outside_the_universe_are_ignored() -> None:
    universe = IndexSet.parse("10-14")
    d = Driver(CoreSpec(total=5, microtasks_per_shard=5, parallelism=1, universe=universe))
    d.step()
    [shard] = d.running()
    report = Report(
        succeeded=IndexSet.parse("0-2,10-14"),
        failed={1: IndexSet.parse("99")},
        errors={1: "not ours"},
        count=9,
        seconds_total=9,
    )
    d.set(shard.shard_id, phase=ShardPhase.SUCCEEDED, report=report, finished_at=d.now)
    end = d.step(1)
    assert end.phase == "Succeeded"
    assert end.status["succeededIndexes"] == "10-14"
    assert end.status["failureSummary"] == []


def test_the_job_deadline_fails_only_the_universe() -> None:
    universe = IndexSet.parse("100-119")
    spec = CoreSpec(
        total=20, microtasks_per_shard=5, parallelism=1, universe=universe, job_timeout_seconds=10
    )
    d = Driver(spec)
    d.step()
    end = d.step(11)
    assert end.phase == "Failed"
    assert end.state.failed == universe
    assert end.status["notRun"] == 15  # the shard in flight ran; the rest never did


# -- 126 and 127 -----------------------------------------------------------------------------------


def test_command_not_found_fails_at_once_and_says_so_plainly() -> None:
    spec = CoreSpec(total=20, microtasks_per_shard=10, parallelism=1)
    d = Driver(spec, errors={127: NOT_FOUND})
    d.step()
    d.finish(0, fails(dict.fromkeys(range(5), 127)))
    end = d.step(1)
    assert end.phase == "Failed"
    assert end.state.retry == ()
    assert end.status["failedIndexes"] == "0-4"
    sentence = (
        f"command not found (exit 127) in 5 microtasks, e.g. index 0: {NOT_FOUND}; "
        "not retried (set retry.retryCommandNotFound to retry)"
    )
    assert end.status["message"] == (
        f"5 microtasks failed permanently, more than maxFailedMicrotasks=0; {sentence}, "
        "10 microtasks never ran"
    )
    [event] = events(end, "CommandNotFound")
    assert event.warning
    assert event.message.endswith(sentence)
    failed = [c for c in end.status["conditions"] if c["type"] == "Failed"]
    assert failed[0]["message"] == end.status["message"]


def test_command_not_found_is_the_running_message_while_failures_are_tolerated() -> None:
    spec = CoreSpec(
        total=20,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(max_failed_microtasks=10),
    )
    d = Driver(spec, errors={127: NOT_FOUND, 1: "boom"})
    d.step()
    d.finish(0, fails({0: 127, 1: 127, 2: 1}))
    first = d.step(1)
    assert first.phase == "Running"
    assert first.status["message"] == (
        f"command not found (exit 127) in 2 microtasks, e.g. index 0: {NOT_FOUND}; "
        "not retried (set retry.retryCommandNotFound to retry)"
    )
    d.finish(1, fails({15: 127}))
    second = d.step(1)
    assert second.status["message"].startswith("command not found (exit 127) in 3 microtasks")
    [event] = events(second, "CommandNotFound")
    assert "in 1 microtask, e.g. index 15" in event.message


def test_not_executable_fails_at_once_too() -> None:
    d = Driver(
        CoreSpec(total=4, microtasks_per_shard=4, parallelism=1),
        errors={126: "permission denied: ./run.sh"},
    )
    d.step()
    d.finish(0, fails({2: 126}))
    end = d.step(1)
    assert end.phase == "Failed"
    assert (
        "not executable (exit 126) in 1 microtask, e.g. index 2: permission denied"
        in (end.status["message"])
    )
    assert events(end, "CommandNotFound")


def test_command_not_found_is_retried_when_asked() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(retry_command_not_found=True, backoff_seconds=1),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, fails({3: 127, 4: 126}))
    first = d.step(1)
    assert first.phase == "Running"
    assert not events(first, "CommandNotFound")
    assert first.status["message"].startswith("last failure: ")
    end = d.run_to_end(fails({3: 127, 4: 126}))
    assert end.phase == "Succeeded"
    assert [str(c.plan.indexes) for c in d.created if c.plan.attempt == 2] == ["3-4"]
    assert end.status["succeededAfterRetry"] == 2


def test_a_pod_exiting_127_without_a_report_is_retried() -> None:
    """Only the runner's word about a microtask means its command is missing."""
    d = Driver(CoreSpec(total=5, microtasks_per_shard=5, parallelism=1))
    d.step()
    d.set(0, phase=ShardPhase.FAILED, exit_code=127, failure_reason="Error", finished_at=d.now)
    decision = d.step(1)
    assert not decision.done
    [batch] = decision.state.retry
    assert str(batch.indexes) == "0-4"
    [kind] = decision.status["failureSummary"]
    assert kind["reason"] == "Error" and "exitCode" not in kind


@pytest.mark.parametrize(
    ("policy", "code", "from_runner", "attempts", "permanent"),
    [
        (RetryPolicy(), 1, True, 1, False),
        (RetryPolicy(), 1, True, 3, True),
        (RetryPolicy(), 127, True, 1, True),
        (RetryPolicy(), 126, True, 1, True),
        (RetryPolicy(), 127, False, 1, False),
        (RetryPolicy(retry_command_not_found=True), 127, True, 1, False),
        (RetryPolicy(retry_command_not_found=True), 127, True, 3, True),
        (RetryPolicy(non_retryable_exit_codes=frozenset({137})), 137, False, 1, True),
    ],
)
def test_is_permanent(
    policy: RetryPolicy, code: int, from_runner: bool, attempts: int, permanent: bool
) -> None:
    assert retries.is_permanent(policy, code, attempts, from_runner=from_runner) is permanent


# -- maxFailedFraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "fraction", "failed", "phase", "limit"),
    [
        (0, None, 1, "Failed", "more than maxFailedMicrotasks=0;"),
        (0, 0.05, 5, "Succeeded", None),
        (0, 0.05, 6, "Failed", "more than maxFailedFraction=0.05 (5 of 100 microtasks);"),
        (10, 0.05, 10, "Succeeded", None),
        (10, 0.05, 11, "Failed", "more than maxFailedMicrotasks=10 (maxFailedFraction=0.05 "),
        (0, 0.29, 29, "Succeeded", None),  # 0.29 x 100 is 29, not 28.999...
        (0, 0.29, 30, "Failed", "(29 of 100 microtasks)"),
        (0, 0.0, 1, "Failed", "more than maxFailedMicrotasks=0 (maxFailedFraction=0 allows 0)"),
    ],
)
def test_the_job_fails_past_the_larger_allowance(
    count: int, fraction: float | None, failed: int, phase: str, limit: str | None
) -> None:
    retry = RetryPolicy(
        non_retryable_exit_codes=frozenset({2}),
        max_failed_microtasks=count,
        max_failed_fraction=fraction,
    )
    d = Driver(CoreSpec(total=100, microtasks_per_shard=100, parallelism=1, retry=retry))
    d.step()
    d.finish(0, fails(dict.fromkeys(range(failed), 2)))
    end = d.step(1)
    assert end.phase == phase
    assert end.status["failed"] == failed
    if limit is not None:
        assert limit in end.status["message"]
        kind = f"exit 2 in {failures.microtasks(failed)}, e.g. index 0: exit 2"
        assert kind in end.status["message"]


@pytest.mark.parametrize(
    ("count", "fraction", "total", "allowed"),
    [
        (0, None, 1000, 0),
        (7, None, 1000, 7),
        (0, 0.01, 1000, 10),
        (20, 0.01, 1000, 20),
        (0, 0.015, 100, 1),  # floored
        (0, 1.0, 3, 3),
        (0, 0.1, 0, 0),
        (0, 0.07, 100, 7),
        (0, 0.3, 10_000_000_000, 3_000_000_000),
    ],
)
def test_allowed_failures(count: int, fraction: float | None, total: int, allowed: int) -> None:
    policy = RetryPolicy(max_failed_microtasks=count, max_failed_fraction=fraction)
    assert retries.allowed_failures(policy, total) == allowed


# -- who is charged --------------------------------------------------------------------------------


def shard(phase: ShardPhase = ShardPhase.SUCCEEDED, **kw: Any) -> ObservedShard:
    base: dict[str, Any] = {
        "shard_id": 7,
        "indexes": IndexSet.parse("0-9"),
        "attempt": 1,
        "pool": Pool.CPU,
        "created_at": 0.0,
        "phase": phase,
    }
    base.update(kw)
    return ObservedShard(**base)


def partial(done: str, current: int | None = None, **failed: str) -> Report:
    return Report(
        succeeded=IndexSet.parse(done) if done else IndexSet.EMPTY,
        failed={int(code[1:]): IndexSet.parse(ix) for code, ix in failed.items()},
        errors={int(code[1:]): f"error {code[1:]}" for code in failed},
        current=current,
    )


@pytest.mark.parametrize(
    ("observed", "ok", "charges", "unreported"),
    [
        pytest.param(shard(report=partial("0-9")), "0-9", [], "", id="all succeeded"),
        pytest.param(
            shard(report=partial("0-6", c3="7-8", c127="9")),
            "0-6",
            [("7-8", 3, 3, "exit 3", "error 3"), ("9", 127, 127, "command not found", "error 127")],
            "",
            id="reported failures",
        ),
        pytest.param(
            shard(report=partial("0-3")),
            "0-3",
            [],
            "4-9",
            id="a runner that stopped early: the rest goes back",
        ),
        pytest.param(
            shard(
                ShardPhase.FAILED,
                report=partial("0-3", current=4),
                exit_code=137,
                failure_reason="OOMKilled",
            ),
            "0-3",
            [("4", 137, None, "OOMKilled", "the pod died while it ran (OOMKilled, exit 137)")],
            "5-9",
            id="the pod died while one ran: only it is charged",
        ),
        pytest.param(
            shard(ShardPhase.FAILED, report=partial(""), failure_reason="DeadlineExceeded"),
            "",
            [
                (
                    "0",
                    137,
                    None,
                    "DeadlineExceeded",
                    "the pod died before reporting anything (DeadlineExceeded)",
                )
            ],
            "1-9",
            id="killed before reporting: the first is charged",
        ),
        pytest.param(
            shard(ShardPhase.FAILED, exit_code=1, failure_reason="Error"),
            "",
            [("0-9", 1, None, "Error", "the pod ended without a report (Error, exit 1)")],
            "",
            id="no report: every microtask is charged",
        ),
        pytest.param(
            shard(ShardPhase.FAILED, report=Report(runner_error="bad items"), exit_code=3),
            "",
            [("0-9", 3, None, "RunnerError", "bad items")],
            "",
            id="the runner could not work",
        ),
        pytest.param(
            shard(report=None, exit_code=0),
            "",
            [("0-9", 137, None, "NoReport", "the pod ended without a report (exit 0)")],
            "",
            id="exit 0 without a report",
        ),
        pytest.param(
            shard(ShardPhase.FAILED, report=partial("0-3", current=4), exit_code=143),
            "0-3",
            [("4", 143, None, "killed by SIGTERM", "the pod died while it ran (exit 143)")],
            "5-9",
            id="a pod death without a reason is named by its exit code",
        ),
    ],
)
def test_attribute(
    observed: ObservedShard,
    ok: str,
    charges: list[tuple[str, int, int | None, str, str]],
    unreported: str,
) -> None:
    verdict = attribute(observed)
    assert str(verdict.ok) == ok
    assert [
        (str(c.indexes), c.code, c.exit_code, c.reason, c.message) for c in verdict.charges
    ] == charges
    assert str(verdict.unreported) == unreported
    everything = verdict.ok | verdict.charged() | verdict.unreported
    assert everything == observed.indexes
    assert len(verdict.ok) + len(verdict.charged()) + len(verdict.unreported) == 10


def test_attribute_within_the_universe() -> None:
    verdict = attribute(shard(report=partial("0-9")), IndexSet.parse("2-4"))
    assert str(verdict.ok) == "2-4"
    assert Charge(IndexSet.parse("1"), 1, 1, "exit 1").from_runner


# -- the failure summary ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1, "exit 1"),
        (2, "exit 2"),
        (124, "timeout"),
        (126, "not executable"),
        (127, "command not found"),
        (128, "exit 128"),
        (130, "killed by SIGINT"),
        (134, "killed by SIGABRT"),
        (137, "killed (SIGKILL; out of memory?)"),
        (139, "killed by SIGSEGV"),
        (143, "killed by SIGTERM"),
        (168, "killed by signal 40"),
        (200, "exit 200"),
        (255, "exit 255"),
    ],
)
def test_exit_code_words(code: int, words: str) -> None:
    assert describe_exit_code(code) == words


def test_the_summary_keeps_the_ten_most_frequent_kinds() -> None:
    summary: tuple[FailureEntry, ...] = ()
    for code in range(1, 11):
        summary = failures.record(
            summary,
            exit_code=code,
            reason=f"exit {code}",
            attempts=code,
            microtasks=0,
            sample_index=code,
            message="x" * 1000,
        )
    assert [e.exit_code for e in summary] == list(range(10, 0, -1))
    assert all(len(e.message) == failures.MAX_MESSAGE_CHARS for e in summary)
    # An 11th kind: the one with the fewest attempts goes.
    summary = failures.record(
        summary, exit_code=None, reason="OOMKilled", attempts=5, microtasks=1, sample_index=0
    )
    assert len(summary) == failures.MAX_KINDS
    assert [e.reason for e in summary][4:7] == ["exit 6", "exit 5", "OOMKilled"]
    assert "exit 1" not in [e.reason for e in summary]
    # Ties go by exit code, pod-level reasons last; counts add up; the first sample stays.
    summary = failures.record(
        summary, exit_code=2, reason="exit 2", attempts=3, microtasks=2, sample_index=99
    )
    two = next(e for e in summary if e.exit_code == 2)
    assert (two.attempts, two.microtasks, two.sample_index) == (5, 2, 2)
    assert [e.reason for e in summary][5:9] == ["exit 2", "exit 5", "OOMKilled", "exit 4"]
    status = failures.to_status(summary)
    assert failures.from_status(json.loads(json.dumps(status))) == summary
    oom = next(item for item in status if item["reason"] == "OOMKilled")
    assert "exitCode" not in oom and "message" not in oom


def test_retried_then_succeeded_work_shows_attempts_but_no_failed_microtasks() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec, errors={1: "flaky"})
    end = d.run_to_end(fails({0: 1, 4: 1, 5: 1}))
    assert end.phase == "Succeeded"
    assert end.status["failureSummary"] == [
        {
            "exitCode": 1,
            "reason": "exit 1",
            "attempts": 3,
            "microtasks": 0,
            "sampleIndex": 0,
            "message": "flaky",
        }
    ]
    assert end.status["succeededAfterRetry"] == 3
    assert end.status["notRun"] == 0


def test_a_job_without_failures_has_an_empty_summary() -> None:
    end = Driver(CoreSpec(total=30, microtasks_per_shard=7, parallelism=2)).run_to_end(ok)
    assert end.status["failureSummary"] == []
    assert end.status["succeededAfterRetry"] == 0


def test_exhausted_attempts_count_microtasks_and_every_attempt() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=1, max_failed_microtasks=5),
    )
    d = Driver(spec)
    end = d.run_to_end(fails({1: 9, 2: 9, 3: 1}, attempts=3))
    assert end.phase == "Succeeded"
    kinds = {k["reason"]: k for k in end.status["failureSummary"]}
    assert (kinds["exit 9"]["attempts"], kinds["exit 9"]["microtasks"]) == (6, 2)
    assert (kinds["exit 1"]["attempts"], kinds["exit 1"]["microtasks"]) == (3, 1)
    assert [k["reason"] for k in end.status["failureSummary"]] == ["exit 9", "exit 1"]


def test_pod_level_kinds_are_counted_by_reason() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    killed = Report(succeeded=IndexSet.parse("0-3"), current=4, count=4, seconds_total=4)
    d.set(0, phase=ShardPhase.FAILED, report=killed, exit_code=137, failure_reason="OOMKilled")
    decision = d.step(1)
    assert decision.status["failureSummary"] == [
        {
            "reason": "OOMKilled",
            "attempts": 1,
            "microtasks": 0,
            "sampleIndex": 4,
            "message": "the pod died while it ran (OOMKilled, exit 137)",
        }
    ]
    assert decision.deltas.failures == {"OOMKilled": 1}


# -- resources -------------------------------------------------------------------------------------


def test_a_harvested_shard_wastes_the_share_of_its_retried_microtasks() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        cpu_per_pod=2.0,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2}), max_failed_microtasks=10),
    )
    d = Driver(spec)
    d.step()
    d.step(10)
    # 4 fail and go back for a retry, 1 fails for good, 5 succeed: 4/10 of the run is wasted.
    d.finish(0, fails({0: 1, 1: 1, 2: 1, 3: 1, 4: 2}))
    decision = d.step()
    assert decision.status["resources"] == {
        "cpuSeconds": 20.0,
        "gpuSeconds": 0.0,
        "wastedCpuSeconds": 8.0,
        "wastedGpuSeconds": 0.0,
    }
    assert decision.deltas.resources == ResourceSeconds(cpu=20.0, wasted_cpu=8.0)
    assert decision.status["wastedSeconds"] == 0  # that one counts whole runs thrown away only


def test_gpu_shards_count_gpu_seconds_and_lost_shards_are_wasted_whole() -> None:
    spec = CoreSpec(
        total=20,
        microtasks_per_shard=10,
        parallelism=2,
        accelerator=Accelerator.GPU,
        gpus_per_pod=2,
        cpu_per_pod=0.5,
        node_lost_grace_seconds=0,
    )
    d = Driver(spec)
    d.step()
    d.step(30)
    d.finish(0, ok)
    d.set(1, phase=ShardPhase.LOST, failure_reason="NodeLost", finished_at=d.now)
    decision = d.step()
    assert decision.state.resources == ResourceSeconds(
        cpu=30.0, gpu=120.0, wasted_cpu=15.0, wasted_gpu=60.0
    )
    assert decision.state.wasted_seconds == 30.0


def test_cancelled_shards_are_wasted_whole() -> None:
    spec = CoreSpec(total=20, microtasks_per_shard=10, parallelism=2, job_timeout_seconds=60)
    d = Driver(spec)
    d.step()
    end = d.step(61)
    assert end.phase == "Failed"
    assert end.state.resources == ResourceSeconds(cpu=122.0, wasted_cpu=122.0)
    assert end.status["notRun"] == 0


def test_resource_arithmetic() -> None:
    spec = CoreSpec(total=1, cpu_per_pod=1.5, gpus_per_pod=4)
    assert spent(spec, Pool.CPU, 10, 0.5) == ResourceSeconds(15.0, 0.0, 7.5, 0.0)
    assert spent(spec, Pool.GPU, 10, 2.0) == ResourceSeconds(15.0, 40.0, 15.0, 40.0)
    assert spent(spec, Pool.GPU, -3, 0.5) == ResourceSeconds()
    total = ResourceSeconds(1, 2, 0.5, 1) + ResourceSeconds(1, 0, 1, 0)
    assert ResourceSeconds.from_status(total.to_status()) == total
    assert ResourceSeconds.from_status(None) == ResourceSeconds()


# -- counters of a finished job --------------------------------------------------------------------


def test_a_failed_job_says_how_many_microtasks_never_ran() -> None:
    spec = CoreSpec(
        total=100,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2})),
    )
    d = Driver(spec)
    first = d.step()
    assert "notRun" not in first.status
    d.finish(0, fails({3: 2}))
    end = d.step(1)
    assert end.phase == "Failed"
    assert end.status["notRun"] == 90
    assert end.status["message"].endswith(", 90 microtasks never ran")
    again = Driver(spec, state=CoreState.from_status(end.status)).step(5)
    assert again.status["notRun"] == 90
    assert again.status["message"] == end.status["message"]


def test_microtasks_given_back_unrun_count_as_never_ran() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(non_retryable_exit_codes=frozenset({2})),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, fails({0: 2}))
    d.shards[0] = replace(d.shards[0], report=partial("", None, c2="0"))  # reported only 0
    end = d.step(1)
    assert end.phase == "Failed"
    assert end.status["notRun"] == 9


# -- status ----------------------------------------------------------------------------------------


def test_the_new_status_fields_round_trip_and_match_the_api_model() -> None:
    spec = CoreSpec(
        total=30,
        microtasks_per_shard=10,
        parallelism=2,
        accelerator=Accelerator.GPU,
        retry=RetryPolicy(backoff_seconds=1, max_failed_microtasks=30),
    )
    d = Driver(spec, errors={127: NOT_FOUND, 1: "x" * 2000})
    d.step()
    d.step(3)
    d.finish(0, fails({1: 127, 2: 1}))
    d.set(1, phase=ShardPhase.FAILED, exit_code=137, failure_reason="OOMKilled", finished_at=d.now)
    decision = d.step(1)
    status = json.loads(json.dumps(decision.status))
    assert CoreState.from_status(status).to_status() == decision.state.to_status()
    parsed = MicrotaskJobStatus.model_validate({**status, "observedGeneration": 1})
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    assert dumped == {**status, "observedGeneration": 1}
    assert {k["reason"] for k in status["failureSummary"]} == {
        "OOMKilled",
        "exit 1",
        "command not found",
    }


def test_a_status_written_before_these_fields_reads_back() -> None:
    d = Driver(CoreSpec(total=20, microtasks_per_shard=10, parallelism=1))
    d.step()
    d.finish(0, ok)
    status = d.step(1).status
    old = {
        k: v
        for k, v in status.items()
        if k not in ("failureSummary", "succeededAfterRetry", "resources", "notRun")
    }
    state = CoreState.from_status(old)
    assert (state.failure_summary, state.succeeded_after_retry, state.not_run) == ((), 0, None)
    assert state.resources == ResourceSeconds()
    assert state.succeeded == IndexSet.parse("0-9")
