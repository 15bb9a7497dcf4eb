"""What must never leave a job stuck or wrong: dependency cycles and missing dependencies, pods the
cluster refuses, and a status reset by someone else — against the real control plane."""

from __future__ import annotations

from typing import Any

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    status_of,
    wait_phase,
)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def test_dependency_cycles_fail_naming_the_cycle_and_missing_ones_time_out(
    cluster: Cluster,
) -> None:
    with running_operator(cluster) as op:
        cluster.create(microtask_job("cyc-a", total=4, dependsOn=["cyc-b"]))
        cluster.create(microtask_job("cyc-b", total=4, dependsOn=["cyc-c"]))
        cluster.create(microtask_job("cyc-c", total=4, dependsOn=["cyc-a"]))
        cluster.create(
            microtask_job(
                "lonely", total=4, dependsOn=["ghost"], timeouts={"dependenciesSeconds": 4}
            )
        )
        for name in ("cyc-a", "cyc-b", "cyc-c"):
            status = wait_phase(cluster, name, ("Failed",), timeout=30)["status"]
            failed = condition(status, "Failed")
            assert failed is not None and failed["reason"] == "DependencyCycle", status
            cycle = {"cyc-a": "a → b → c → a", "cyc-b": "b → c → a → b", "cyc-c": "c → a → b → c"}
            expected = " → ".join(f"cyc-{x}" for x in cycle[name].split(" → "))
            assert f"dependency cycle: {expected}" in failed["message"], failed

        # Waiting on a dependency that does not exist says so, then gives up at the deadline.
        cluster.wait_for(
            lambda: (
                (condition(status_of(cluster, "lonely"), "WaitingForDependencies") or {}).get(
                    "reason"
                )
                == "DependencyNotFound"
                or status_of(cluster, "lonely").get("phase") == "Failed"
            ),
            timeout=30,
            message="lonely waits for ghost",
        )
        status = wait_phase(cluster, "lonely", ("Failed",), timeout=30)["status"]
        failed = condition(status, "Failed")
        assert failed is not None and failed["reason"] == "DependencyTimeout", status
        assert "ghost does not exist" in failed["message"]

        # Breaking the cycle lets all three run, in order.
        cluster.patch("microtaskjobs", "cyc-c", {"spec": {"dependsOn": None}})
        for name in ("cyc-c", "cyc-b", "cyc-a"):
            wait_phase(cluster, name, ("Succeeded",), timeout=60)
        # A deadline is final: ghost appearing now changes nothing.
        cluster.create(microtask_job("ghost", total=1))
        wait_phase(cluster, "ghost", timeout=30)
        assert status_of(cluster, "lonely")["phase"] == "Failed"
        assert shard_jobs(cluster, "lonely") == []
        op.assert_clean()


def test_pods_refused_by_pod_security_fail_the_job_fast_quoting_the_refusal(
    shared_cluster: Cluster,
) -> None:
    cluster = shared_cluster.view(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        hostile = microtask_job("hostile", total=20, per_shard=5, parallelism=2)
        worker = hostile["spec"]["template"]["spec"]["containers"][0]
        worker["securityContext"] = {"privileged": True}
        with running_operator(cluster) as op:
            cluster.create(hostile)
            try:
                status = wait_phase(cluster, "hostile", ("Failed",), timeout=60)["status"]
            except AssertionError as error:
                raise AssertionError(f"{error}\n{op.log()}") from None
            failed = condition(status, "Failed")
            assert failed is not None and failed["reason"] == "PodsRefused", status
            assert "violates PodSecurity" in failed["message"]
            assert "privileged" in failed["message"]
            assert status["succeeded"] == 0
            cluster.wait_for(
                lambda: (
                    not [
                        j
                        for j in shard_jobs(cluster, "hostile")
                        if not j["metadata"].get("deletionTimestamp")
                    ]
                ),
                timeout=30,
                message="the refused job's Jobs deleted",
            )
            op.assert_clean()
    finally:
        cluster.close()


def test_a_status_reset_while_the_operator_is_away_is_recovered_and_said(
    cluster: Cluster,
) -> None:
    slow = ["python3", "-c", "import time; time.sleep(0.2)"]
    with running_operator(cluster) as op:
        cluster.create(microtask_job("reset", total=60, per_shard=5, parallelism=2, command=slow))
        cluster.wait_for(
            lambda: status_of(cluster, "reset").get("succeeded", 0) >= 10,
            timeout=60,
            message="some progress",
        )
        op.stop()
    started = status_of(cluster, "reset")["startTime"]
    cluster.patch("microtaskjobs", "reset", {"status": None}, subresource="status")
    assert not status_of(cluster, "reset").get("startTime")
    with running_operator(cluster) as op:
        status = wait_phase(cluster, "reset", timeout=90)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["succeededIndexes"] == "0-59"
        assert status["startTime"] == started
        recovered = condition(status, "Recovered")
        assert recovered is not None and recovered["status"] == "True"
        assert recovered["reason"] == "StatusReset"
        events = [
            e
            for e in cluster.list("events")
            if e.get("reason") == "StatusReset"
            and (e.get("involvedObject") or {}).get("name") == "reset"
        ]
        assert events and events[0]["type"] == "Warning"
        op.assert_clean(allow=["the status was reset"])
