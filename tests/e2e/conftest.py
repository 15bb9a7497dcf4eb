"""Fixtures of the real-cluster tests: the cluster of KUBECONFIG with Microtask installed.

These tests run only with `--e2e` (see tests/conftest.py). When the flag is
given but no cluster answers, every test is skipped with one line saying why;
when a cluster answers but Microtask is not installed on it, they fail, because
that is a broken setup rather than a missing one. hack/kind-e2e.sh prepares a
kind cluster and runs them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.kube import (
    GROUP,
    PLURAL,
    TERMINAL_PHASES,
    VERSION,
    Cluster,
    Observation,
    cluster_problem,
    finished,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --e2e but no usable cluster, skip every e2e test for one stated reason."""
    e2e = [item for item in items if "e2e" in item.keywords]
    if not e2e or not config.getoption("--e2e"):
        return
    problem = cluster_problem()
    if problem:
        skip = pytest.mark.skip(reason=f"e2e: {problem}")
        for item in e2e:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The cluster of KUBECONFIG (skips when it went away since collection)."""
    from kubernetes import client

    problem = cluster_problem()
    if problem:
        pytest.skip(f"e2e: {problem}")
    return Cluster(
        core=client.CoreV1Api(),
        batch=client.BatchV1Api(),
        apps=client.AppsV1Api(),
        custom=client.CustomObjectsApi(),
    )


@pytest.fixture(scope="session")
def microtask(cluster: Cluster) -> Cluster:
    """The cluster, checked to run Microtask: the CRD is served and the operator available."""
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
    except ApiException as error:
        pytest.fail(f"MicrotaskJobs are not served ({error.status}): install Microtask first")
    settings = cluster.settings
    where = f"{settings.operator_namespace}/{settings.release}"
    deadline = time.monotonic() + 120
    while True:
        deployment = cluster.apps.read_namespaced_deployment(
            settings.release, settings.operator_namespace
        )
        if (deployment.status.available_replicas or 0) >= 1:
            return cluster
        if time.monotonic() > deadline:
            pytest.fail(f"the operator Deployment {where} is not available")
        time.sleep(2)


@pytest.fixture
def namespace(microtask: Cluster) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted", deleted afterwards."""
    from kubernetes import client

    name = f"mt-e2e-{uuid.uuid4().hex[:8]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "app.kubernetes.io/part-of": "microtask-e2e",
    }
    microtask.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    try:
        yield name
    finally:
        microtask.core.delete_namespace(name)


@pytest.fixture
def run_job(microtask: Cluster, namespace: str) -> Callable[..., Observation]:
    """Submit a MicrotaskJob and follow it until a terminal phase (or until `until` holds)."""

    def run(
        name: str,
        spec: dict[str, Any],
        *,
        until: Callable[[dict[str, Any], Observation], bool] | None = None,
        timeout: float | None = None,
    ) -> Observation:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MicrotaskJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        microtask.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        seen = Observation()
        done = until or (lambda obj, _: obj.get("status", {}).get("phase") in TERMINAL_PHASES)
        limit = timeout or microtask.settings.timeout
        deadline = time.monotonic() + limit
        selector = f"microtask.dev/job={name}"
        while True:
            obj = microtask.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            for pod in microtask.core.list_namespaced_pod(namespace, label_selector=selector).items:
                pool = (pod.metadata.labels or {}).get("microtask.dev/pool", "?")
                if pod.spec.node_name:
                    seen.pod_nodes.setdefault(pool, set()).add(pod.spec.node_name)
            jobs = microtask.batch.list_namespaced_job(namespace, label_selector=selector).items
            seen.job_names.update(j.metadata.name for j in jobs)
            seen.max_jobs_in_flight = max(
                seen.max_jobs_in_flight, sum(not finished(j) for j in jobs)
            )
            if done(obj, seen):
                seen.final = obj
                return seen
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: not done after {limit:.0f}s: {obj.get('status', {})}")
            time.sleep(1)

    return run
