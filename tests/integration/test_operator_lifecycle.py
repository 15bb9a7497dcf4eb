"""End to end: placement, invalid specs, deletion, restarts, API errors, suspend, dependencies,
Kueue, metrics and Events — the operator against the real control plane."""

from __future__ import annotations

import time
from typing import Any

from tests.integration.harness.apiclient import ApiError
from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    wait_phase,
)

SLOW = ["python3", "-c", "import time; time.sleep(0.3)"]


def pods_by_pool(cluster: Cluster, seen: dict[str, set[str]]) -> None:
    for pod in cluster.list("pods"):
        labels = pod["metadata"].get("labels") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if node and "microtask.dev/pool" in labels:
            seen.setdefault(labels["microtask.dev/pool"], set()).add(node)


def run_until_done(
    cluster: Cluster, name: str, seen: dict[str, set[str]], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods_by_pool(cluster, seen)
        obj = cluster.get("microtaskjobs", name)
        if obj and (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return obj
        time.sleep(0.02)
    raise AssertionError(f"{name} did not finish\n{cluster.dump()}")


def test_gpu_shards_land_only_on_gpu_nodes_and_cpu_shards_only_on_cpu_nodes(
    cluster: Cluster,
) -> None:
    seen: dict[str, set[str]] = {}
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "on-gpu",
                total=40,
                per_shard=5,
                parallelism=4,
                command=["true"],
                placement={"accelerator": "gpu"},
            )
        )
        cluster.create(
            microtask_job("on-cpu", total=40, per_shard=5, parallelism=4, command=["true"])
        )
        assert run_until_done(cluster, "on-gpu", seen)["status"]["phase"] == "Succeeded"
        assert run_until_done(cluster, "on-cpu", seen)["status"]["phase"] == "Succeeded"
        op.assert_clean()
    assert seen["gpu"] and seen["gpu"] <= {"gpu-0", "gpu-1"}
    assert seen["cpu"] and seen["cpu"] <= {"cpu-0", "cpu-1"}


def test_an_invalid_spec_gets_invalid_and_no_jobs_until_fixed(cluster: Cluster) -> None:
    body = microtask_job("broken", total=10)
    # Valid for the CRD's schema (the pod template is Kubernetes' own, kept as it is), invalid
    # for the rules only the operator checks: MICROTASK_* variables are the operator's to set.
    worker = body["spec"]["template"]["spec"]["containers"][0]
    worker["env"] = [{"name": "MICROTASK_INDEX", "value": "7"}]
    with running_operator(cluster) as op:
        cluster.create(body)
        obj = wait_phase(cluster, "broken", ("Failed",), timeout=20)
        invalid = [c for c in obj["status"]["conditions"] if c["type"] == "Invalid"]
        assert invalid and invalid[0]["status"] == "True"
        assert "spec.template.spec.containers[0].env[0].name" in invalid[0]["message"]
        time.sleep(1.0)
        assert shard_jobs(cluster, "broken") == []
        worker["env"] = [{"name": "MODE", "value": "fixed"}]
        cluster.patch("microtaskjobs", "broken", {"spec": {"template": body["spec"]["template"]}})
        obj = wait_phase(cluster, "broken", ("Succeeded",), timeout=30)
        invalid = [c for c in obj["status"]["conditions"] if c["type"] == "Invalid"]
        assert invalid[0]["status"] == "False"
        op.assert_clean()


def test_cross_field_rules_are_refused_by_the_api_server(cluster: Cluster) -> None:
    """The CRD's CEL rules: an inconsistent spec never reaches the operator."""
    body = microtask_job("inconsistent", total=10)
    body["spec"]["rebalance"] = {"badNodes": {"softAfterFailures": 5, "hardAfterFailures": 2}}
    try:
        cluster.create(body)
    except ApiError as error:
        assert error.code == 422
        assert "spec.rebalance.badNodes" in error.message
        assert "hardAfterFailures must be at least softAfterFailures" in error.message
    else:
        raise AssertionError("the API server accepted hardAfterFailures < softAfterFailures")


def test_shard_pods_pass_pod_security_restricted_admission(shared_cluster: Cluster) -> None:
    """The real PodSecurity admission, enforcing "restricted", admits every pod the operator
    makes: CPU and GPU shards, and ConfigMap items mounted as a volume."""
    cluster = shared_cluster.view(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        plain = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
        }
        try:
            cluster.create(plain)
        except ApiError as error:  # the enforcement is on: a pod as users write it is refused
            assert error.code == 403 and "violates PodSecurity" in error.message, error
        else:
            raise AssertionError("a pod with no securityContext was admitted")
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "words"},
                "data": {"list": "a\nb\nc\n"},
            }
        )
        from_map = microtask_job("from-map", per_shard=2, parallelism=2)
        from_map["spec"]["items"] = {"configMapRef": {"name": "words", "key": "list"}}
        with running_operator(cluster) as op:
            cluster.create(microtask_job("on-cpu", total=6, per_shard=3, parallelism=2))
            cluster.create(
                microtask_job(
                    "on-gpu", total=4, per_shard=2, parallelism=2, placement={"accelerator": "gpu"}
                )
            )
            cluster.create(from_map)
            for name in ("on-cpu", "on-gpu", "from-map"):
                status = wait_phase(cluster, name, timeout=60)["status"]
                assert status["phase"] == "Succeeded", (name, status)
            refused = [
                e["message"]
                for e in cluster.list("events", fields="reason=FailedCreate")
                if "violates PodSecurity" in e.get("message", "")
            ]
            assert refused == []
            op.assert_clean()
    finally:
        cluster.close()


def test_deleting_a_job_removes_its_jobs_and_metric_series(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(microtask_job("doomed", total=200, per_shard=5, parallelism=3, command=SLOW))
        cluster.wait_for(lambda: shard_jobs(cluster, "doomed"), timeout=20, message="jobs")
        cluster.wait_for(
            lambda: (
                op.sample("microtask_job_progress_ratio", {"name": "doomed"}) > 0
                or 'name="doomed"' in op.metrics_text()
            ),
            timeout=20,
            message="progress series",
        )
        cluster.delete("microtaskjobs", "doomed")
        cluster.wait_for(lambda: not shard_jobs(cluster, "doomed"), timeout=20, message="jobs gone")
        cluster.wait_for(
            lambda: 'name="doomed"' not in op.metrics_text(), timeout=20, message="series gone"
        )
        op.assert_clean()


def test_restart_mid_run_finishes_with_exact_counts_and_no_duplicate_jobs(cluster: Cluster) -> None:
    body = microtask_job(
        "survivor",
        total=300,
        per_shard=10,
        parallelism=4,
        command=["python3", "-c", "import time; time.sleep(0.01)"],
    )
    with running_operator(cluster) as op:
        cluster.create(body)
        cluster.wait_for(
            lambda: (
                ((cluster.get("microtaskjobs", "survivor") or {}).get("status") or {}).get(
                    "succeeded", 0
                )
                >= 60
            ),
            timeout=60,
            message="some progress",
        )
        op.assert_clean()
    # The operator is gone; pods go on finishing meanwhile.
    time.sleep(1.0)
    with running_operator(cluster) as op:
        status = wait_phase(cluster, "survivor", timeout=90)["status"]
        op.assert_clean()
    assert status["phase"] == "Succeeded", status
    assert (status["succeeded"], status["failed"]) == (300, 0)
    assert status["succeededIndexes"] == "0-299"
    assert status["attempts"] == 300
    created = cluster.count_requests("create", "jobs", code=201, namespace=cluster.namespace)
    assert created == 30, f"{created} Jobs created for 30 shards"


def test_api_errors_lose_nothing_and_count_nothing_twice(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.inject_fault(500, times=2, verb="create", resource="jobs")
        cluster.inject_fault(
            429, times=2, verb="patch", resource="microtaskjobs", subresource="status"
        )
        cluster.inject_fault(409, times=1, verb="create", resource="jobs")
        cluster.create(microtask_job("bumpy", total=100, per_shard=10, parallelism=3))
        status = wait_phase(cluster, "bumpy", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"], status["attempts"]) == (100, 0, 100)
        assert op.sample("microtask_microtasks_total", {"outcome": "succeeded"}) == 100
        assert op.sample("microtask_api_requests_total", {"verb": "create", "code": "500"}) >= 1
        op.assert_clean(allow=("reconcile interrupted",))


def test_cut_watches_and_slow_answers_lose_nothing(cluster: Cluster) -> None:
    """Watches cut three times mid-run, writes held back and throttled: exact counts still."""
    with running_operator(cluster) as op:
        cluster.proxy.delay(0.5, times=5, verb="create", resource="jobs")
        cluster.inject_fault(429, times=3, verb="patch", resource="microtaskjobs", retry_after=1)
        cluster.create(microtask_job("cut", total=200, per_shard=10, parallelism=4, command=SLOW))
        for _ in range(3):
            cluster.wait_for(
                lambda: cluster.proxy.count("watch") > 0, timeout=20, message="open watches"
            )
            time.sleep(1.0)
            cut = cluster.cut_watches()
            assert cut >= 1
        status = wait_phase(cluster, "cut", timeout=120)["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"], status["attempts"]) == (200, 0, 200)
        assert status["succeededIndexes"] == "0-199"
        created = cluster.count_requests("create", "jobs", code=201, namespace=cluster.namespace)
        assert created == 20, f"{created} Jobs created for 20 shards"
        op.assert_clean(allow=("reconcile interrupted", "TooManyRequests", "429"))


def test_suspend_stops_new_shards_and_resume_finishes(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job("pausable", total=60, per_shard=5, parallelism=2, command=SLOW)
        )
        cluster.wait_for(lambda: shard_jobs(cluster, "pausable"), timeout=20, message="jobs")
        cluster.patch("microtaskjobs", "pausable", {"spec": {"suspend": True}})
        wait_phase(cluster, "pausable", ("Suspended",), timeout=20)
        cluster.wait_for(
            lambda: all(j["spec"].get("suspend") for j in shard_jobs(cluster, "pausable")),
            timeout=20,
            message="jobs suspended",
        )
        before = cluster.count_requests("create", "jobs")
        time.sleep(1.5)
        assert cluster.count_requests("create", "jobs") == before
        cluster.patch("microtaskjobs", "pausable", {"spec": {"suspend": False}})
        status = wait_phase(cluster, "pausable", timeout=60)["status"]
        assert status["phase"] == "Succeeded"
        assert status["succeeded"] == 60
        op.assert_clean()


def test_depends_on_waits_for_the_dependency_then_runs(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(microtask_job("second", total=10, dependsOn=["first"]))
        obj = wait_phase(cluster, "second", ("Pending",), timeout=20)
        cluster.wait_for(
            lambda: any(
                c["type"] == "WaitingForDependencies" and c["status"] == "True"
                for c in (cluster.get("microtaskjobs", "second") or {})
                .get("status", {})
                .get("conditions", [])
            ),
            timeout=20,
            message="waiting condition",
        )
        del obj
        assert shard_jobs(cluster, "second") == []
        cluster.create(microtask_job("first", total=10))
        assert wait_phase(cluster, "first", timeout=30)["status"]["phase"] == "Succeeded"
        assert wait_phase(cluster, "second", timeout=30)["status"]["phase"] == "Succeeded"
        op.assert_clean()


def test_a_failed_dependency_fails_the_dependant(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "doomed-dep",
                total=2,
                per_shard=1,
                command=["false"],
                retry={"maxAttempts": 1, "backoffSeconds": 0.1},
            )
        )
        cluster.create(microtask_job("after", total=5, dependsOn=["doomed-dep"]))
        status = wait_phase(cluster, "after", ("Failed",), timeout=30)["status"]
        assert "doomed-dep" in status["message"]
        assert shard_jobs(cluster, "after") == []
        op.assert_clean()


def test_queue_name_creates_suspended_jobs_for_kueue_and_priority_reaches_pods(
    cluster: Cluster,
) -> None:
    try:
        cluster.create(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "batch-low"},
                "value": 100,
            }
        )
    except ApiError as error:  # cluster-scoped: another run of this test made it
        if error.code != 409:
            raise
    with running_operator(cluster) as op:
        body = microtask_job("queued", total=10, per_shard=5, parallelism=2, queueName="team-a")
        body["spec"]["priorityClassName"] = "batch-low"
        cluster.create(body)
        jobs = cluster.wait_for(
            lambda: len(shard_jobs(cluster, "queued")) == 2 and shard_jobs(cluster, "queued"),
            timeout=20,
            message="two jobs",
        )
        for job in jobs:
            assert job["spec"]["suspend"] is True
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        time.sleep(1.0)
        assert all(j["spec"]["suspend"] for j in shard_jobs(cluster, "queued"))  # not ours to admit
        for job in jobs:  # Kueue admits them
            cluster.patch("jobs", job["metadata"]["name"], {"spec": {"suspend": False}})
        cluster.wait_for(
            lambda: [
                p for p in cluster.list("pods") if p["spec"].get("priorityClassName") == "batch-low"
            ],
            timeout=20,
            message="pods with the priority class",
        )
        assert wait_phase(cluster, "queued", timeout=30)["status"]["phase"] == "Succeeded"
        op.assert_clean()


def test_metrics_endpoint_and_events_show_the_right_totals(cluster: Cluster) -> None:
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "counted",
                total=50,
                per_shard=10,
                parallelism=2,
                command=[
                    "python3",
                    "-c",
                    "import os, sys; sys.exit(2 if os.environ['MICROTASK_INDEX'] == '7' else 0)",
                ],
                retry={"nonRetryableExitCodes": [2], "maxFailedMicrotasks": 1},
            )
        )
        assert wait_phase(cluster, "counted", timeout=30)["status"]["phase"] == "Succeeded"
        text = op.metrics_text()
        ns = cluster.namespace
        assert f'microtask_microtasks_total{{namespace="{ns}",outcome="succeeded"}} 49.0' in text
        assert f'microtask_microtasks_total{{namespace="{ns}",outcome="failed"}} 1.0' in text
        assert "microtask_shard_duration_seconds_count" in text
        assert "microtask_reconcile_duration_seconds_count" in text
        assert 'name="counted"' not in text  # finished: its progress series is gone
        reasons = cluster.wait_for(
            lambda: (
                {e.get("reason") for e in cluster.list("events")}
                >= {"Started", "Succeeded", "MicrotasksFailed"}
                and {e.get("reason") for e in cluster.list("events")}
            ),
            timeout=20,
            message="events",
        )
        assert "ShardFailed" in reasons
        op.assert_clean()
