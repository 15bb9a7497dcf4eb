"""End to end: the operator turns MicrotaskJobs into Jobs run by the real Job controller."""

from __future__ import annotations

import time

from microtask_runner.indexset import IndexSet

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    wait_phase,
    watch_in_flight,
)


def test_a_thousand_microtasks_finish_with_exact_counts_within_the_window(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(microtask_job("big", total=1000, per_shard=100, parallelism=3))
        most = watch_in_flight(cluster, "big", time.monotonic() + 90)
        done = wait_phase(cluster, "big")
        status = done["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"], status["total"]) == (1000, 0, 1000)
        assert status["succeededIndexes"] == "0-999"
        assert status["attempts"] == 1000
        assert 1 <= most <= 3  # the watcher saw shards in flight, never more than the window
        complete = [c for c in status["conditions"] if c["type"] == "Complete"]
        assert complete and complete[0]["status"] == "True"
        # Harvested Jobs are deleted: etcd holds only the window in flight.
        cluster.wait_for(lambda: not shard_jobs(cluster, "big"), timeout=30, message="cleanup")
        assert op.sample("microtask_microtasks_total", {"outcome": "succeeded"}) == 1000
        op.assert_clean()


def test_microtasks_that_fail_once_are_retried_alone(cluster: Cluster) -> None:
    flaky = [
        "python3",
        "-c",
        "import os, sys; sys.exit(3 if int(os.environ['MICROTASK_INDEX']) % 10 == 4 "
        "and os.environ['MICROTASK_ATTEMPT'] == '1' else 0)",
    ]
    with running_operator(cluster) as op:
        cluster.create(microtask_job("flaky", total=40, per_shard=10, parallelism=2, command=flaky))
        status = wait_phase(cluster, "flaky")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["succeeded"] == 40
        assert status["attempts"] == 44  # 40 first attempts + the 4 failures retried alone
        assert op.sample("microtask_microtasks_total", {"outcome": "retried"}) == 4
        op.assert_clean()


def test_non_retryable_code_fails_the_job_over_the_limit(cluster: Cluster) -> None:
    bad = [
        "python3",
        "-c",
        "import os, sys; sys.exit(2 if os.environ['MICROTASK_INDEX'] in ('3', '7') else 0)",
    ]
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "strict",
                total=20,
                per_shard=5,
                parallelism=2,
                command=bad,
                retry={
                    "nonRetryableExitCodes": [2],
                    "maxFailedMicrotasks": 1,
                    "backoffSeconds": 0.2,
                },
            )
        )
        status = wait_phase(cluster, "strict")["status"]
        assert status["phase"] == "Failed", status
        assert IndexSet.parse(status["failedIndexes"]) <= IndexSet.parse("3,7")
        assert status["failed"] == 2
        failed = [c for c in status["conditions"] if c["type"] == "Failed"]
        assert failed[0]["status"] == "True" and failed[0]["reason"] == "TooManyFailures"
        op.assert_clean()
