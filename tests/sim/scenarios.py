"""Clusters and jobs shared by the simulator scenario tests, written out so each test reads alone.

Clusters are plain cluster-file documents (the format of examples/clusters/README.md), so the
tests exercise the same parser users rely on.
"""

from __future__ import annotations

from typing import Any

from microtask_operator.core.planner import plan
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    RetryPolicy,
    SpeculationPolicy,
)
from microtask_operator.simulator import ClusterSpec
from microtask_operator.simulator.cluster import parse_cluster


def cluster(
    nodes: list[dict[str, Any]],
    *,
    workload: dict[str, Any] | None = None,
    losses: list[dict[str, Any]] | None = None,
    name: str = "test",
) -> ClusterSpec:
    document: dict[str, Any] = {
        "kind": "SimulatedCluster",
        "name": name,
        "workload": {"secondsPerMicrotask": {"gpu": 0.5, "cpu": 2.0}, **(workload or {})},
        "nodes": nodes,
    }
    if losses:
        document["nodeLosses"] = losses
    return parse_cluster(document)


def cpu_nodes(count: int, slots: int = 4, **extra: Any) -> dict[str, Any]:
    return {"name": "cpu", "count": count, "pool": "cpu", "slots": slots, **extra}


def gpu_nodes(count: int, gpus: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": "gpu", "count": count, "pool": "gpu", "gpus": gpus, **extra}


def job(
    total: int,
    per_shard: int,
    parallelism: int,
    accelerator: Accelerator = Accelerator.CPU,
    *,
    speculation: bool = False,
    max_attempts: int = 3,
    max_failed: int = 0,
    non_retryable: frozenset[int] = frozenset(),
    backoff: float = 5.0,
) -> CoreSpec:
    return CoreSpec(
        total=total,
        microtasks_per_shard=per_shard,
        parallelism=parallelism,
        accelerator=accelerator,
        retry=RetryPolicy(
            max_attempts=max_attempts,
            backoff_seconds=backoff,
            non_retryable_exit_codes=non_retryable,
            max_failed_microtasks=max_failed,
        ),
        speculation=SpeculationPolicy(enabled=speculation),
    )


class FailuresOn:
    """A planner for `simulate` that notes the shards which came back from `node` with failed
    microtasks (`shards`), then plans as the core does."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.shards: set[int] = set()

    def __call__(self, spec, state, observed, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.shards.update(
            s.shard_id
            for s in observed
            if s.node == self.node and s.report is not None and s.report.failed_indexes()
        )
        return plan(spec, state, observed, *args, **kwargs)
