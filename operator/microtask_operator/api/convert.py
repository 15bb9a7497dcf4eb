"""From the validated API model to the core's plain `CoreSpec`."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from microtask_runner.indexset import IndexSet

from microtask_operator.api.items import largest_shard, total_microtasks
from microtask_operator.api.model import AUTO, Items, MicrotaskJob, MicrotaskJobSpec, Retry
from microtask_operator.core.types import (
    Accelerator,
    BadNodePolicy,
    CoreSpec,
    RetryPolicy,
    SpeculationPolicy,
)

__all__ = ["DEFAULT_TARGET_SHARD_SECONDS", "retry_policy", "to_core_spec"]

#: `targetShardSeconds` when not given: a minute amortises a pod's start-up (seconds on a warm
#: node) many times over, yet leaves a job of an hour on ten slots six waves to balance.
DEFAULT_TARGET_SHARD_SECONDS = 60.0


def to_core_spec(
    job: MicrotaskJob | MicrotaskJobSpec,
    config_map_data: Mapping[str, str] | None = None,
    *,
    total: int | None = None,
    universe: IndexSet | None = None,
    source: Items | None = None,
) -> CoreSpec:
    """The decision-relevant part of a validated spec.

    The number of microtasks is `total` when given, else counted from the items (a
    `configMapRef` source needs the ConfigMap's `data`; ItemsError when it is missing).
    `universe`, when given, holds the microtasks' indexes (a rerun of some of another job's) and
    sets the total; `source` is a rerun's items (its source job's), for the size of its shards.
    """
    spec = job.spec if isinstance(job, MicrotaskJob) else job
    if universe is not None:
        total = len(universe)
    elif total is None:
        total = total_microtasks(spec, config_map_data)
    speculation = spec.speculation
    bad_nodes = spec.rebalance.bad_nodes
    return CoreSpec(
        total=total,
        microtasks_per_shard=largest_shard(spec, source),
        target_shard_seconds=(
            (spec.target_shard_seconds or DEFAULT_TARGET_SHARD_SECONDS)
            if spec.microtasks_per_shard == AUTO
            else None
        ),
        parallelism=spec.parallelism,
        accelerator=Accelerator(spec.placement.accelerator),
        fallback_after_seconds=spec.placement.fallback_after_seconds,
        fallback_cooldown_seconds=spec.placement.fallback_cooldown_seconds,
        retry=retry_policy(spec.retry),
        speculation=SpeculationPolicy(
            enabled=speculation.enabled,
            slowdown_factor=speculation.slowdown_factor,
            min_samples=speculation.min_samples,
            max_fraction=speculation.max_fraction,
        ),
        bad_nodes=BadNodePolicy(
            enabled=bad_nodes.enabled,
            soft_after_failures=bad_nodes.soft_after_failures,
            hard_after_failures=bad_nodes.hard_after_failures,
            exclude_seconds=bad_nodes.exclude_seconds,
            max_excluded_fraction=bad_nodes.max_excluded_fraction,
        ),
        node_lost_grace_seconds=spec.rebalance.node_lost_grace_seconds,
        job_timeout_seconds=spec.timeouts.job_seconds,
        suspend=spec.suspend,
        keep_failed_shards=spec.keep_failed_shards,
        universe=universe,
        cpu_per_pod=cpu_request(spec.template.spec.containers[0].model_extra or {}),
        gpus_per_pod=spec.placement.gpu.count,
    )


def retry_policy(retry: Retry) -> RetryPolicy:
    """The core's view of `spec.retry`."""
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        backoff_seconds=retry.backoff_seconds,
        max_backoff_seconds=retry.max_backoff_seconds,
        non_retryable_exit_codes=frozenset(retry.non_retryable_exit_codes),
        max_failed_microtasks=retry.max_failed_microtasks,
        max_failed_fraction=retry.max_failed_fraction,
        retry_command_not_found=retry.retry_command_not_found,
        in_pod=retry.in_pod,
    )


def cpu_request(worker: Mapping[str, Any]) -> float:
    """Cores the worker requests (its limit when only that is set; 1 when neither is)."""
    resources = worker.get("resources") or {}
    for kind in ("requests", "limits"):
        amount = (resources.get(kind) or {}).get("cpu")
        if amount is not None:
            cores = parse_cpu(str(amount))
            if cores is not None:
                return cores
    return 1.0


def parse_cpu(quantity: str) -> float | None:
    """A Kubernetes CPU quantity (`2`, `500m`, `0.25`) in cores; None if it is not one."""
    text = quantity.strip()
    scale = Decimal(1)
    if text.endswith("m"):
        text, scale = text[:-1], Decimal("0.001")
    try:
        value = Decimal(text) * scale
    except InvalidOperation:
        return None
    return float(value) if value.is_finite() and value > 0 else None
