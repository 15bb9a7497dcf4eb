"""The real Microtask operator (kopf + our handlers) running against an emulated cluster.

`running_operator(cluster)` starts it in a thread with fast timings and yields a handle with its
metrics registry and kopf's log records, so tests can fail on kopf warnings or error loops.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from microtask_operator.adapter.config import OperatorConfig
from microtask_operator.adapter.handlers import OperatorState, build_registry
from microtask_operator.metrics import Metrics
from microtask_operator.settings import Settings
from prometheus_client import generate_latest

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.kopf_runner import KopfRunner

FAST = OperatorConfig(
    namespaces=("default",),
    resync_seconds=1.0,
    debounce_seconds=0.05,
    metrics_port=0,
    health_port=0,
)


@dataclass
class RunningOperator:
    runner: KopfRunner
    metrics: Metrics

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """One sample's value (0 when absent)."""
        wanted = dict(labels or {})
        for family in self.metrics.registry.collect():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items()):
                    return float(s.value)
        return 0.0

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        self.runner.assert_clean(allow=allow)


@contextmanager
def running_operator(
    cluster: Cluster,
    config: OperatorConfig = FAST,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
) -> Iterator[RunningOperator]:
    metrics = metrics or Metrics()
    settings = settings or Settings(run_as_user=None)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        registry = build_registry(OperatorState(settings=settings, config=config, metrics=metrics))
        with KopfRunner(
            cluster,
            registry=registry,
            namespaces=list(config.namespaces),
            clusterwide=not config.namespaces,
        ) as runner:
            yield RunningOperator(runner, metrics)
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


def microtask_job(
    name: str,
    *,
    total: int = 100,
    per_shard: int = 10,
    parallelism: int = 3,
    command: list[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "items": {"range": {"start": 0, "end": total}},
            "microtasksPerShard": per_shard,
            "parallelism": parallelism,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "worker", "image": "busybox", "command": command or ["true"]}
                    ]
                }
            },
            "retry": {"backoffSeconds": 0.2, "maxBackoffSeconds": 1},
        },
    }
    for key, value in spec.items():
        body["spec"][key] = copy.deepcopy(value)
    return body


def shard_jobs(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        j
        for j in cluster.list("jobs", namespace="default")
        if (j["metadata"].get("labels") or {}).get("microtask.dev/job") == name
    ]


def wait_phase(
    cluster: Cluster,
    name: str,
    phases: tuple[str, ...] = ("Succeeded", "Failed"),
    timeout: float = 60,
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = cluster.get("microtaskjobs", name, "default")
        if obj and (obj.get("status") or {}).get("phase") in phases:
            return obj
        return None

    try:
        return cluster.wait_for(done, timeout=timeout, interval=0.1, message=f"{name} in {phases}")
    except TimeoutError:
        obj = cluster.get("microtaskjobs", name, "default")
        raise AssertionError(
            f"{name} not in {phases}: status={(obj or {}).get('status')}\n{cluster.dump()}"
        ) from None


def finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def watch_in_flight(cluster: Cluster, name: str, until: float) -> int:
    """Poll the Jobs of `name` until the deadline; the most seen in flight (not ended) at once."""
    most = 0
    while time.monotonic() < until:
        alive = [
            j
            for j in shard_jobs(cluster, name)
            if not j["metadata"].get("deletionTimestamp") and not finished(j)
        ]
        most = max(most, len(alive))
        obj = cluster.get("microtaskjobs", name, "default")
        if obj and (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.02)
    return most
