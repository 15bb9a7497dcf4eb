"""Rebalancing end to end on the real control plane: unschedulable GPUs, a lost node, a slow pod
and a node whose pods always fail — the same policies the simulator exercises at scale.

Each test changes nodes, so each starts a cluster of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    wait_phase,
)


def reasons(cluster: Cluster) -> set[str]:
    return {
        str(e.get("message", "")).split(":")[0]
        for e in cluster.list("events")
        if e.get("reason") == "Rebalanced"
    }


def pods_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.list("pods")
        if (p["metadata"].get("labels") or {}).get("microtask.dev/job") == name
    ]


def test_gpu_pool_full_falls_back_to_cpu(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    for node in ("gpu-0", "gpu-1"):
        cluster.set_node_capacity(node, gpus=0)
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "fallback",
                total=30,
                per_shard=10,
                parallelism=3,
                placement={"accelerator": "auto", "fallbackAfterSeconds": 1},
            )
        )
        status = wait_phase(cluster, "fallback", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["succeeded"] == 30
        assert status["attempts"] == 30  # moving is not an attempt
        assert status["rebalances"]["unschedulable_fallback"] >= 1
        assert op.sample("microtask_rebalances_total", {"reason": "unschedulable_fallback"}) >= 1
        assert "unschedulable_fallback" in reasons(cluster)
        op.assert_clean()


def test_a_lost_node_loses_no_microtask_and_spends_no_attempt(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    slow = ["python3", "-c", "import time; time.sleep(0.2)"]
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "survive-node",
                total=40,
                per_shard=10,
                parallelism=2,
                command=slow,
                rebalance={"nodeLostGraceSeconds": 0.5},
            )
        )
        pods = cluster.wait_for(
            lambda: [
                p
                for p in pods_of(cluster, "survive-node")
                if (p.get("status") or {}).get("phase") == "Running"
            ],
            timeout=20,
            message="a running pod",
        )
        lost = pods[0]["spec"]["nodeName"]
        cluster.set_node_ready(lost, False)
        status = wait_phase(cluster, "survive-node", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"]) == (40, 0)
        assert status["rebalances"]["node_lost"] >= 1
        assert status["retryQueue"] == []
        assert "node_lost" in reasons(cluster)
        op.assert_clean()


def test_a_slow_pod_gets_a_speculative_copy_and_counts_once(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    quick = ["python3", "-c", "pass"]
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "hurry",
                total=24,
                per_shard=4,
                parallelism=6,
                command=quick,
                speculation={
                    "enabled": True,
                    "slowdownFactor": 2,
                    "minSamples": 2,
                    "maxFraction": 0.5,
                },
            )
        )
        # cpu-1 turns slow once the first shards are placed: whatever starts there drags.
        cluster.set_node_behaviour("cpu-1", start_delay=30.0)
        status = wait_phase(cluster, "hurry", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["succeeded"] == 24
        assert status["speculativeCopies"] >= 1
        assert status["rebalances"]["straggler"] >= 1
        assert status["attempts"] == 24  # a copy is not an attempt
        op.assert_clean()


def test_a_node_whose_pods_always_fail_is_excluded_and_the_job_succeeds(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    cluster.set_node_behaviour("cpu-0", fail_exit_code=7)
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "avoid-bad",
                total=120,
                per_shard=5,
                parallelism=4,
                retry={"maxAttempts": 5, "backoffSeconds": 0.1, "maxBackoffSeconds": 0.2},
                rebalance={"badNodes": {"softAfterFailures": 2, "hardAfterFailures": 3}},
            )
        )
        status = wait_phase(cluster, "avoid-bad", timeout=90)["status"]
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status["failed"]) == (120, 0)
        excluded = {e["node"]: e["level"] for e in status["excludedNodes"]}
        assert excluded.get("cpu-0") == "hard", status["excludedNodes"]
        assert status["rebalances"]["bad_node"] >= 1
        late = shard_jobs(cluster, "avoid-bad")
        del late
        assert "bad_node" in reasons(cluster)
        op.assert_clean()


def test_status_and_metrics_name_each_rebalance(cluster_factory: Callable[..., Cluster]) -> None:
    """One run with two kinds of trouble: both reasons show in status, metrics and Events."""
    cluster = cluster_factory()
    for node in ("gpu-0", "gpu-1"):
        cluster.set_node_capacity(node, gpus=0)
    with running_operator(cluster) as op:
        cluster.create(
            microtask_job(
                "mixed",
                total=20,
                per_shard=5,
                parallelism=2,
                command=["python3", "-c", "import time; time.sleep(0.3)"],
                placement={"accelerator": "auto", "fallbackAfterSeconds": 0.5},
                rebalance={"nodeLostGraceSeconds": 0.5},
            )
        )
        running = cluster.wait_for(
            lambda: [
                p
                for p in pods_of(cluster, "mixed")
                if (p.get("status") or {}).get("phase") == "Running"
            ],
            timeout=30,
            message="a running pod on CPU",
        )
        cluster.set_node_ready(running[0]["spec"]["nodeName"], False)
        status = wait_phase(cluster, "mixed", timeout=60)["status"]
        assert status["phase"] == "Succeeded", status
        assert set(status["rebalances"]) >= {"unschedulable_fallback", "node_lost"}
        for reason in ("unschedulable_fallback", "node_lost"):
            assert op.sample("microtask_rebalances_total", {"reason": reason}) >= 1
        assert reasons(cluster) >= {"unschedulable_fallback", "node_lost"}
        time.sleep(0)
        op.assert_clean()
