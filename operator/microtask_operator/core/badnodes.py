"""Job-wide bad-node tracking (in the spirit of Spark's excludeOnFailure).

A node whose shards keep failing is first avoided softly (preferred anti-affinity), then hard
(required anti-affinity), each exclusion expiring after a while. Exclusion never takes more than a
fraction of a pool's ready nodes, and always leaves at least one, so work can always run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .state import MAX_NODE_RECORDS, NodeRecord
from .types import BadNodePolicy, ClusterView, Pool

SOFT = "soft"
HARD = "hard"


def record_failure(
    nodes: Mapping[str, NodeRecord], node: str, now: float
) -> dict[str, NodeRecord]:
    result = dict(nodes)
    previous = result.get(node)
    failures = (previous.failures if previous else 0) + 1
    result[node] = NodeRecord(
        failures=failures,
        last_failure=now,
        level=previous.level if previous else None,
        until=previous.until if previous else None,
    )
    if len(result) > MAX_NODE_RECORDS:
        # Forget the nodes with the oldest, fewest failures first.
        ranked = sorted(result.items(), key=lambda kv: (kv[1].level is not None, kv[1].last_failure))
        for name, _ in ranked[: len(result) - MAX_NODE_RECORDS]:
            del result[name]
    return result


def update_levels(
    nodes: Mapping[str, NodeRecord],
    policy: BadNodePolicy,
    cluster: ClusterView,
    now: float,
) -> tuple[dict[str, NodeRecord], list[tuple[str, str]]]:
    """Expire old exclusions, raise levels by failure counts, cap per pool.

    Returns the new records and the (node, level) exclusions that are new, for events.
    """
    result: dict[str, NodeRecord] = {}
    for name, record in nodes.items():
        if record.until is not None and record.until <= now:
            # Expired: the node gets a clean slate (it may have been repaired).
            continue
        if record.level is None and now - record.last_failure >= policy.exclude_seconds:
            continue
        result[name] = record
    if not policy.enabled:
        return {n: NodeRecord(r.failures, r.last_failure) for n, r in result.items()}, []

    changed: list[tuple[str, str]] = []
    for name, record in list(result.items()):
        level = record.level
        if record.failures >= policy.hard_after_failures:
            level = HARD
        elif record.failures >= policy.soft_after_failures and level is None:
            level = SOFT
        if level != record.level:
            result[name] = NodeRecord(
                record.failures, record.last_failure, level, record.last_failure + policy.exclude_seconds
            )
            changed.append((name, level or ""))

    # Cap hard exclusions per pool: the most failing stay hard, the rest drop to soft.
    for ready in cluster.ready_nodes.values():
        allowed = min(len(ready) - 1, math.floor(policy.max_excluded_fraction * len(ready)))
        allowed = max(allowed, 0)
        hard = sorted(
            (n for n in ready if n in result and result[n].level == HARD),
            key=lambda n: (-result[n].failures, n),
        )
        for name in hard[allowed:]:
            r = result[name]
            result[name] = NodeRecord(r.failures, r.last_failure, SOFT, r.until)
            changed = [(n, lv) for n, lv in changed if n != name] + [(name, SOFT)]
    return result, changed


def avoid_lists(
    nodes: Mapping[str, NodeRecord], pool: Pool, cluster: ClusterView
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hard, soft) node names a new shard of `pool` should avoid."""
    ready = cluster.ready_nodes.get(pool)
    hard = []
    soft = []
    for name, record in sorted(nodes.items()):
        if ready is not None and name not in ready:
            continue  # not a node of this pool (or gone): no point naming it
        if record.level == HARD:
            hard.append(name)
        elif record.level == SOFT:
            soft.append(name)
    return tuple(hard), tuple(soft)
