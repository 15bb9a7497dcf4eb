"""Straggler detection for speculative copies (MapReduce backup tasks, Spark speculation).

A running shard is a straggler when it runs `slowdownFactor` times slower than its pool's usual
pace, measured from finished shards once there are `minSamples` of them. Without its progress,
that shows only when it has run `slowdownFactor` times longer than shards of its size usually
take. With its progress (microtasks done, seconds since its first began), it shows as soon as
even the microtask it is on, ending now, would leave it that much slower than usual: a pod
running at a tenth of the usual pace is caught after a few microtasks' time, not after most of
a shard's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from microtask_runner.report import Report

from .state import PoolDurations
from .types import ObservedShard, Pool, ShardPhase, SpeculationPolicy

# A wakeup asked for to judge a shard by its progress is rounded up to this grid (seconds).
PROGRESS_GRID_SECONDS = 10.0


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
        slowdown = factor or policy.slowdown_factor
        expected = per_microtask * len(newest.indexes)
        threshold = newest.started_at + slowdown * expected
        progress = newest.progress
        if progress is not None and progress.done < len(newest.indexes):
            # Slower than `slowdown` times the usual pace even if its current microtask ended
            # now; and when it would be, if it finishes nothing more until then.
            usual = per_microtask * (progress.done + 1)
            if progress.seconds >= slowdown * usual:
                found.append((progress.seconds / max(usual, 1e-9), original))
                continue
            at = now + slowdown * usual - progress.seconds
            # On a coarse grid: the progress of every running shard would otherwise ask for a
            # call every few seconds (a finished shard brings one anyway, often sooner).
            threshold = min(
                threshold, math.ceil(at / PROGRESS_GRID_SECONDS) * PROGRESS_GRID_SECONDS
            )
        if now >= threshold:
            found.append(((now - newest.started_at) / max(expected, 1e-9), original))
        else:
            wakeups.append(threshold)
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found], wakeups


# A finished shard this many times slower per microtask than its pool's baseline is left out
# of the baseline: stragglers would otherwise raise it until stragglers look normal.
OUTLIER_FACTOR = 2.5
# ...once the baseline has this many shards.
OUTLIER_MIN_SAMPLES = 5


def outlier(baseline: PoolDurations, report: Report) -> bool:
    """Is this finished shard's report a straggler's, not one for the pool's baseline?"""
    per_microtask = baseline.per_microtask()
    if per_microtask is None or baseline.shards < OUTLIER_MIN_SAMPLES or report.count <= 0:
        return False
    return report.seconds_total / report.count > OUTLIER_FACTOR * per_microtask


# A copy on another pool is made only when it is expected to end this many times sooner.
OUTRUN_MARGIN = 1.5


def outrun(
    live: Sequence[ObservedShard],
    durations: Mapping[Pool, PoolDurations],
    now: float,
    elsewhere: Callable[[ObservedShard], float | None],
    copies_per_shard: int = 1,
) -> list[ObservedShard]:
    """At the tail: shards a copy on a free slot would finish well before (latest first).

    The last wave on a slow pool decides the makespan while faster slots sit idle; a copy there
    (the first to finish wins, as for stragglers) ends the job sooner. A group's time left is
    its most promising member's: the rest of its expected run, or, once past that, as long
    again as it has run. `elsewhere(shard)`: the seconds a copy would take on the best free
    slot, None if none. The original is returned for copying.
    """
    groups: dict[int, list[ObservedShard]] = {}
    for shard in live:
        key = shard.copy_of if shard.copy_of is not None else shard.shard_id
        groups.setdefault(key, []).append(shard)
    found: list[tuple[float, ObservedShard]] = []
    for key, members in groups.items():
        if len(members) > copies_per_shard:
            continue  # enough copies already
        lefts = []
        for member in members:
            baseline = durations.get(member.pool)
            per_microtask = baseline.per_microtask() if baseline is not None else None
            if member.phase != ShardPhase.RUNNING or member.started_at is None:
                continue  # not started (or ended): nothing to judge it by
            if per_microtask is None:
                break  # a pool not measured: no judgement
            elapsed = now - member.started_at
            expected = per_microtask * len(member.indexes)
            lefts.append(expected - elapsed if elapsed < expected else elapsed)
        else:
            if not lefts:
                continue
            left = min(lefts)
            original = next((s for s in members if s.shard_id == key), members[0])
            copy = elsewhere(original)
            if copy is not None and copy * OUTRUN_MARGIN < left:
                found.append((left, original))
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found]
