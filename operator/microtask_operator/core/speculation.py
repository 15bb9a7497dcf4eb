"""Straggler detection for speculative copies (MapReduce backup tasks, Spark speculation).

A running shard is a straggler when it has run `slowdownFactor` times longer than shards of its
size usually take on its pool, measured from finished shards once there are `minSamples` of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .state import PoolDurations
from .types import ObservedShard, Pool, ShardPhase, SpeculationPolicy


def stragglers(
    live: Sequence[ObservedShard],
    durations: Mapping[Pool, PoolDurations],
    policy: SpeculationPolicy,
    now: float,
    factor: float | None = None,
) -> tuple[list[ObservedShard], list[float]]:
    """Shards that deserve a copy now (slowest first), and when the others would qualify."""
    copied = {s.copy_of for s in live if s.copy_of is not None}
    found: list[tuple[float, ObservedShard]] = []
    wakeups: list[float] = []
    for shard in live:
        if shard.phase != ShardPhase.RUNNING or shard.started_at is None:
            continue
        if shard.copy_of is not None or shard.shard_id in copied:
            continue  # one copy per shard at most
        baseline = durations.get(shard.pool)
        if baseline is None or baseline.shards < policy.min_samples:
            continue
        per_microtask = baseline.per_microtask()
        if per_microtask is None:
            continue
        expected = per_microtask * len(shard.indexes)
        threshold = shard.started_at + (factor or policy.slowdown_factor) * expected
        if now >= threshold:
            found.append(((now - shard.started_at) / max(expected, 1e-9), shard))
        else:
            wakeups.append(threshold)
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found], wakeups
