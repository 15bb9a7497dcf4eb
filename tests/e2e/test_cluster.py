"""End-to-end scenarios on a real cluster (kind via hack/kind-e2e.sh, or any cluster).

The same scenarios the API-level tests run on the real control plane with our
kubelet, here with a real kubelet, container runtime and images too.
The MicrotaskJobs run a tiny Python worker in the runner image; each test uses
its own namespace, which enforces Pod Security "restricted".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.kube import GROUP, PLURAL, VERSION, Cluster, Observation

pytestmark = pytest.mark.e2e

# A microtask: sleeps a little (so pods are observable), fails with exit code 2
# when its index is in FAIL_INDEXES (a comma-separated env var), succeeds otherwise.
WORKER = (
    "import os, sys, time\n"
    "time.sleep(float(os.environ.get('SLEEP', '0.2')))\n"
    "bad = {int(i) for i in os.environ.get('FAIL_INDEXES', '').split(',') if i}\n"
    "sys.exit(2 if int(os.environ['MICROTASK_INDEX']) in bad else 0)\n"
)


def spec(
    cluster: Cluster,
    total: int,
    *,
    per_shard: int = 5,
    parallelism: int = 3,
    accelerator: str = "cpu",
    env: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A MicrotaskJob spec running WORKER over indexes 0..total-1."""
    worker = {
        "name": "worker",
        "image": cluster.settings.image,
        "command": ["python3", "-c", WORKER],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    return {
        "items": {"range": {"start": 0, "end": total}},
        "microtasksPerShard": per_shard,
        "parallelism": parallelism,
        "template": {"spec": {"containers": [worker]}},
        "placement": {"accelerator": accelerator},
        # Copies of stragglers would add Jobs beyond `parallelism`; not under test here.
        "speculation": {"enabled": False},
        **extra,
    }


def gpu_nodes(cluster: Cluster) -> tuple[set[str], set[str]]:
    """(GPU-labelled nodes, the subset of them that advertise GPU capacity)."""
    nodes = cluster.core.list_node(label_selector=f"{cluster.settings.gpu_label}=true").items
    with_capacity = {
        n.metadata.name
        for n in nodes
        if int((n.status.allocatable or {}).get(cluster.settings.gpu_resource, "0")) > 0
    }
    return {n.metadata.name for n in nodes}, with_capacity


def test_operator_is_up(microtask: Cluster) -> None:
    settings = microtask.settings
    deployment = microtask.apps.read_namespaced_deployment(
        settings.release, settings.operator_namespace
    )
    assert deployment.status.available_replicas >= 1
    pod_spec = deployment.spec.template.spec
    assert pod_spec.security_context.run_as_non_root is True


def test_cpu_job_finishes_with_exact_counts(
    microtask: Cluster, namespace: str, run_job: Callable[..., Observation]
) -> None:
    seen = run_job("counts", spec(microtask, 60, per_shard=6, parallelism=3))
    status = seen.final["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeeded"], status["failed"]) == (60, 60, 0)
    assert status["succeededIndexes"] == "0-59"
    assert seen.max_jobs_in_flight <= 3
    # CPU shards never land on GPU nodes.
    gpu, _ = gpu_nodes(microtask)
    assert seen.pod_nodes.get("cpu") and not seen.pod_nodes["cpu"] & gpu
    # Harvested shards' Jobs are deleted: nothing of a successful job is left behind.
    deadline = time.monotonic() + 60
    while microtask.batch.list_namespaced_job(
        namespace, label_selector="microtask.dev/job=counts"
    ).items:
        assert time.monotonic() < deadline, "Jobs of a finished MicrotaskJob were not cleaned up"
        time.sleep(2)


def non_retryable(
    microtask: Cluster, run_job: Callable[..., Observation], tolerated: int
) -> dict[str, Any]:
    """20 microtasks, 2 of which exit with a non-retryable code; the final status."""
    retry = {
        "maxAttempts": 3,
        "backoffSeconds": 1,
        "nonRetryableExitCodes": [2],
        "maxFailedMicrotasks": tolerated,
    }
    job = spec(microtask, 20, env={"FAIL_INDEXES": "3,13"}, retry=retry)
    status: dict[str, Any] = run_job(f"nonretryable-{tolerated}", job).final["status"]
    return status


# (Not parametrized: skipped tests then fold into one line of pytest's summary.)
def test_non_retryable_failures_fail_the_job(
    microtask: Cluster, run_job: Callable[..., Observation]
) -> None:
    status = non_retryable(microtask, run_job, tolerated=0)
    assert (status["phase"], status["failed"]) == ("Failed", 2), status


def test_tolerated_failures_let_the_job_succeed(
    microtask: Cluster, run_job: Callable[..., Observation]
) -> None:
    status = non_retryable(microtask, run_job, tolerated=2)
    assert (status["phase"], status["succeeded"], status["failed"]) == ("Succeeded", 18, 2), status


def test_gpu_shards_run_only_on_gpu_nodes(
    microtask: Cluster, run_job: Callable[..., Observation]
) -> None:
    _, with_capacity = gpu_nodes(microtask)
    if not with_capacity:
        pytest.skip(
            f"no node advertises {microtask.settings.gpu_resource} (see FAKE_GPUS_PER_NODE)"
        )
    seen = run_job(
        "gpu",
        spec(microtask, 12, per_shard=3, parallelism=2, accelerator="gpu", env={"SLEEP": "1"}),
    )
    assert seen.final["status"]["phase"] == "Succeeded", seen.final["status"]
    assert seen.pod_nodes.get("gpu") and seen.pod_nodes["gpu"] <= with_capacity
    assert "cpu" not in seen.pod_nodes


def test_invalid_spec_is_refused_or_marked_invalid(microtask: Cluster, namespace: str) -> None:
    """Rejected by the CRD schema (422), or accepted and marked Invalid with no Jobs."""
    from kubernetes.client.exceptions import ApiException

    bad = spec(microtask, 10, parallelism=0)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MicrotaskJob",
        "metadata": {"name": "invalid"},
        "spec": bad,
    }
    try:
        microtask.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as error:
        assert error.status == 422, error
        assert "parallelism" in str(error.body)
        return
    deadline = time.monotonic() + 60
    while True:
        obj = microtask.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "invalid"
        )
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        if conditions.get("Invalid", {}).get("status") == "True":
            break
        assert time.monotonic() < deadline, obj.get("status")
        time.sleep(1)
    assert not microtask.batch.list_namespaced_job(
        namespace, label_selector="microtask.dev/job=invalid"
    ).items


def test_deleting_a_microtaskjob_removes_its_jobs(
    microtask: Cluster, namespace: str, run_job: Callable[..., Observation]
) -> None:
    long = spec(microtask, 20, per_shard=5, parallelism=2, env={"SLEEP": "30"})
    run_job("doomed", long, until=lambda _, seen: bool(seen.job_names), timeout=120)
    microtask.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")
    deadline = time.monotonic() + 120
    while microtask.batch.list_namespaced_job(
        namespace, label_selector="microtask.dev/job=doomed"
    ).items:
        assert time.monotonic() < deadline, "Jobs outlived their MicrotaskJob"
        time.sleep(2)


def test_evicted_shard_is_relaunched_without_spending_an_attempt(
    microtask: Cluster, namespace: str, run_job: Callable[..., Observation]
) -> None:
    """An evicted pod is infrastructure trouble: with one attempt, the job still succeeds."""
    from kubernetes import client

    job = spec(
        microtask, 10, per_shard=5, parallelism=2, env={"SLEEP": "3"}, retry={"maxAttempts": 1}
    )

    def running_pod(_: dict[str, Any], __: Observation) -> bool:
        pods = microtask.core.list_namespaced_pod(
            namespace, label_selector="microtask.dev/job=evicted"
        ).items
        return any(p.status.phase == "Running" for p in pods)

    run_job("evicted", job, until=running_pod, timeout=120)
    (pod, *_) = [
        p
        for p in microtask.core.list_namespaced_pod(
            namespace, label_selector="microtask.dev/job=evicted"
        ).items
        if p.status.phase == "Running"
    ]
    eviction = client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace)
    )
    microtask.core.create_namespaced_pod_eviction(pod.metadata.name, namespace, eviction)
    deadline = time.monotonic() + microtask.settings.timeout
    while True:
        status = microtask.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "evicted"
        ).get("status", {})
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert (status["phase"], status["succeeded"], status["failed"]) == ("Succeeded", 10, 0), status


def test_metrics_count_the_microtasks(
    microtask: Cluster, namespace: str, run_job: Callable[..., Observation]
) -> None:
    run_job("metered", spec(microtask, 15, per_shard=5, parallelism=3))
    settings = microtask.settings
    # Through the API server's service proxy: no port-forward needed.
    text = microtask.core.connect_get_namespaced_service_proxy_with_path(
        f"{settings.release}-metrics:metrics", settings.operator_namespace, "metrics"
    )
    succeeded = 0.0
    for labels, value in re.findall(
        r"^microtask_microtasks_total\{(.*)\} (\S+)$", text, re.MULTILINE
    ):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("namespace") == namespace and pairs.get("outcome") == "succeeded":
            succeeded += float(value)
    assert succeeded >= 15, text[:2000]
