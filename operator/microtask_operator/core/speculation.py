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
    copies_per_shard: int = 1,
) -> tuple[list[ObservedShard], list[float]]:
    """Shards that deserve a copy now (slowest first), and when the others would qualify.

    A shard and its copies form a group; the group's newest member is the one judged (a copy
    that straggles too may get a copy of its own, up to `copies_per_shard` copies in a group).
    The original is returned for copying, so every copy names the same original.
    """
    groups: dict[int, list[ObservedShard]] = {}
    for shard in live:
        key = shard.copy_of if shard.copy_of is not None else shard.shard_id
        groups.setdefault(key, []).append(shard)
    found: list[tuple[float, ObservedShard]] = []
    wakeups: list[float] = []
    for key, members in groups.items():
        if len(members) > copies_per_shard:
            continue  # enough copies already
        newest = max(members, key=lambda s: (s.started_at or s.created_at, s.shard_id))
        if newest.phase != ShardPhase.RUNNING or newest.started_at is None:
            continue
        original = next((s for s in members if s.shard_id == key), newest)
        baseline = durations.get(newest.pool)
        if baseline is None or baseline.shards < policy.min_samples:
            continue
        per_microtask = baseline.per_microtask()
        if per_microtask is None:
            continue
        expected = per_microtask * len(newest.indexes)
        threshold = newest.started_at + (factor or policy.slowdown_factor) * expected
        if now >= threshold:
            found.append(((now - newest.started_at) / max(expected, 1e-9), original))
        else:
            wakeups.append(threshold)
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found], wakeups
