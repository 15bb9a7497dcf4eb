"""Table tests of the adapter's reading of Jobs, pods and nodes (what the core is told)."""

from __future__ import annotations

from typing import Any

import pytest
from microtask_operator import labels as L
from microtask_operator.adapter.observe import NodeInfo, cluster_view, node_info, observe
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    Pool,
    RetryPolicy,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

T0 = "2026-01-01T00:00:00Z"
NOW = 1767225700.0  # 2026-01-01T00:01:40Z
NODES = {
    "cpu-0": NodeInfo(ready=True, since=None, pool=Pool.CPU),
    "cpu-1": NodeInfo(ready=False, since=1767225650.0, pool=Pool.CPU),
}
REPORT = Report(succeeded=IndexSet.from_range(0, 10), count=10, seconds_total=5.0).encode()
CLUSTER = ClusterView(ready_nodes={Pool.CPU: frozenset({"cpu-0"})})


def job(**spec: Any) -> dict[str, Any]:
    labels = {L.JOB: "j", L.SHARD: "3", L.ATTEMPT: "2", L.POOL: "cpu"}
    if spec.pop("queue", False):
        labels[L.KUEUE_QUEUE_NAME] = "q"
    return {
        "metadata": {
            "name": "j-s3",
            "creationTimestamp": T0,
            "labels": labels,
            "annotations": {L.INDEXES: "0-9"},
        },
        "spec": spec,
        "status": {},
    }


def pod(
    phase: str, node: str | None = "cpu-0", deleted: bool = False, **status: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "j-s3-abcde", "creationTimestamp": T0}
    if deleted:
        meta["deletionTimestamp"] = T0
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase, **status}}


def terminated(code: int, message: str = REPORT, reason: str = "Completed") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "message": message,
                        "startedAt": T0,
                        "finishedAt": "2026-01-01T00:01:00Z",
                    }
                }
            }
        ]
    }


UNSCHEDULABLE = {
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "lastTransitionTime": T0,
        }
    ]
}
RUNNING = {"containerStatuses": [{"state": {"running": {"startedAt": T0}}}]}
EVICTED = {
    "reason": "Evicted",
    "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
    ],
}


@pytest.mark.parametrize(
    ("name", "the_job", "pods", "phase", "detail"),
    [
        ("no pod yet", job(), [], ShardPhase.PENDING, "NoPod"),
        ("queued by kueue", job(suspend=True, queue=True), [], ShardPhase.PENDING, "Queued"),
        (
            "unschedulable",
            job(),
            [pod("Pending", node=None, **UNSCHEDULABLE)],
            ShardPhase.PENDING,
            "Unschedulable",
        ),
        ("running", job(), [pod("Running", **RUNNING)], ShardPhase.RUNNING, None),
        ("runner finished", job(), [pod("Succeeded", **terminated(0))], ShardPhase.SUCCEEDED, None),
        (
            "some microtasks failed",
            job(),
            [pod("Failed", **terminated(10, reason="Error"))],
            ShardPhase.SUCCEEDED,
            None,
        ),
        (
            "oom killed",
            job(),
            [pod("Failed", **terminated(137, "", "OOMKilled"))],
            ShardPhase.FAILED,
            "OOMKilled",
        ),
        ("evicted", job(), [pod("Failed", **EVICTED)], ShardPhase.LOST, "TerminationByKubelet"),
        (
            "node gone",
            job(),
            [pod("Running", node="cpu-9", **RUNNING)],
            ShardPhase.LOST,
            "NodeDeleted",
        ),
        (
            "suspended mid-run",
            job(suspend=True),
            [pod("Failed", deleted=True, **terminated(143, reason="Error"))],
            ShardPhase.LOST,
            "Suspended",
        ),
    ],
)
def test_observe(
    name: str,
    the_job: dict[str, Any],
    pods: list[dict[str, Any]],
    phase: ShardPhase,
    detail: str | None,
) -> None:
    shard = observe(the_job, pods, NODES, NOW)
    assert shard is not None, name
    assert (shard.shard_id, shard.attempt, shard.pool, str(shard.indexes)) == (
        3,
        2,
        Pool.CPU,
        "0-9",
    )
    assert shard.phase == phase, name
    if detail is not None:
        assert detail in (shard.pending_reason, shard.failure_reason), name


def test_a_pod_on_a_not_ready_node_runs_on_with_the_time_it_was_lost() -> None:
    shard = observe(job(), [pod("Running", node="cpu-1", **RUNNING)], NODES, NOW)
    assert shard is not None
    assert shard.phase == ShardPhase.RUNNING
    assert shard.node_lost_since == 1767225650.0


def test_a_finished_pod_carries_the_runners_report() -> None:
    shard = observe(job(), [pod("Succeeded", **terminated(0))], NODES, NOW)
    assert shard is not None and shard.report is not None
    assert str(shard.report.succeeded) == "0-9"
    assert shard.exit_code == 0


def test_jobs_that_are_not_shards_are_ignored() -> None:
    assert observe({"metadata": {"name": "other", "labels": {}}}, [], NODES, NOW) is None


def test_nodes_and_pools() -> None:
    gpu = {
        "metadata": {"name": "g", "labels": {"nvidia.com/gpu.present": "true"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": T0}]},
    }
    control = {
        "metadata": {"name": "cp", "labels": {}},
        "spec": {
            "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    infos = {
        "g": node_info(gpu, "nvidia.com/gpu.present", "nvidia.com/gpu"),
        "cp": node_info(control, "nvidia.com/gpu.present", "nvidia.com/gpu"),
        **NODES,
    }
    assert infos["g"].pool == Pool.GPU and infos["g"].schedulable
    assert not infos["cp"].schedulable
    view = cluster_view(infos)
    assert view.ready_nodes[Pool.GPU] == frozenset({"g"})
    assert view.ready_nodes[Pool.CPU] == frozenset({"cpu-0"})


# -- a node back from a short outage ---------------------------------------------------------------

UNKNOWN_CONTAINER = {
    "containerStatuses": [
        {
            "state": {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": T0,
                    "finishedAt": "2026-01-01T00:01:00Z",
                }
            }
        }
    ]
}


def test_containers_unknown_after_a_node_outage_are_lost_not_failed() -> None:
    shard = observe(job(), [pod("Failed", **UNKNOWN_CONTAINER)], NODES, NOW)
    assert shard is not None
    assert shard.phase == ShardPhase.LOST
    assert shard.failure_reason == "ContainerStatusUnknown"
    assert shard.report is None  # the kubelet's words are no report
    assert shard.node == "cpu-0"


def test_a_short_node_outage_spends_no_attempt_with_max_attempts_1() -> None:
    """Observed as the operator does, then decided: nothing fails, the work goes back."""
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(max_attempts=1)
    )
    first = plan(spec, CoreState.initial(), [], CLUSTER, NOW - 60)
    [launch] = [a.plan for a in first.actions if isinstance(a, CreateShard)]
    the_job = job()
    the_job["metadata"]["labels"].update({L.SHARD: str(launch.shard_id), L.ATTEMPT: "1"})
    shard = observe(the_job, [pod("Failed", **UNKNOWN_CONTAINER)], NODES, NOW)
    assert shard is not None
    decision = plan(spec, first.state, [shard], CLUSTER, NOW)
    assert decision.status["failed"] == 0
    assert decision.state.failure_summary == ()
    assert decision.state.rebalances == {"node_lost": 1}
    [again] = [a.plan for a in decision.actions if isinstance(a, CreateShard)]
    assert (str(again.indexes), again.attempt) == ("0-9", 1)
    assert decision.state.attempts == 10  # nothing of the lost launch ran, as far as anyone knows
