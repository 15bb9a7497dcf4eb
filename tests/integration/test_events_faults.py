"""Events the API server will not take: the job is not affected, and the loss is counted.

The fault proxy answers every Event post of the operator with a 500. The job runs to its end with
the right status (which never depends on Events), the operator logs no warning, and
`microtask_events_dropped_total` says which Events were lost. Once the API takes Events again,
they arrive.
"""

from __future__ import annotations

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import microtask_job, running_operator, wait_phase

COMPONENT = "microtask-operator"
# Exit 2 (not retried) at index 7: the job ends with a warning Event on top of the normal ones.
FAIL_7 = [
    "python3",
    "-c",
    "import os, sys; sys.exit(2 if os.environ['MICROTASK_INDEX'] == '7' else 0)",
]


def ours(cluster: Cluster, name: str) -> list[dict[str, object]]:
    return [
        e
        for e in cluster.list("events")
        if (e.get("source") or {}).get("component") == COMPONENT
        and (e.get("involvedObject") or {}).get("name") == name
    ]


def test_events_the_api_refuses_are_counted_and_change_nothing_else(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        fault = cluster.inject_fault(500, times=1_000_000, verb="create", resource="events")
        cluster.create(
            microtask_job(
                "unheard",
                total=40,
                per_shard=10,
                parallelism=2,
                command=FAIL_7,
                retry={"nonRetryableExitCodes": [2], "maxFailedMicrotasks": 1},
            )
        )
        status = wait_phase(cluster, "unheard", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"]) == (39, 1)
        assert status["succeededIndexes"] == "0-6,8-39"
        # Each Event is tried a few times with growing pauses, then given up.
        cluster.wait_for(
            lambda: (
                op.sample("microtask_events_dropped_total", {"reason": "Started"}) == 1
                and op.sample("microtask_events_dropped_total", {"reason": "Succeeded"}) == 1
            ),
            timeout=120,
            interval=0.5,
            message="the Events counted as dropped",
        )
        assert op.sample("microtask_events_dropped_total") >= 3  # ShardFailed too
        assert fault.hits >= 6  # more than one try each
        assert op.sample("microtask_api_requests_total", {"verb": "create", "code": "500"}) >= 6
        assert ours(cluster, "unheard") == []

        cluster.clear_faults()
        cluster.create(microtask_job("heard", total=10, per_shard=5, parallelism=2))
        assert wait_phase(cluster, "heard", timeout=60)["status"]["phase"] == "Succeeded"
        reasons = cluster.wait_for(
            lambda: (
                {e.get("reason") for e in ours(cluster, "heard")} >= {"Started", "Succeeded"}
                and {e.get("reason") for e in ours(cluster, "heard")}
            ),
            timeout=30,
            message="Events once the API takes them",
        )
        assert "Started" in reasons
        # One INFO line per lost Event, no warning storm.
        op.assert_clean()
