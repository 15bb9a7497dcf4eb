"""The observed shards, sorted once into the buckets a decision deals with, and read about."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .state import CoreState, PoolDurations
from .types import ObservedShard, Pool


@dataclass(frozen=True)
class Buckets:
    # Harvested or abandoned by an earlier decision, Job not kept for debugging: to delete.
    gone: tuple[ObservedShard, ...]
    # Not harvested yet, in the order observed: this decision deals with them.
    live: tuple[ObservedShard, ...]
    # Live originals (not copies) launched by a decision whose status write was lost: their
    # attempts were never counted.
    unrecorded: tuple[ObservedShard, ...]


def bucket(observed: Sequence[ObservedShard], state: CoreState) -> Buckets:
    gone: list[ObservedShard] = []
    live: dict[int, ObservedShard] = {}
    for shard in observed:
        if shard.shard_id in state.retired:
            if shard.shard_id not in state.kept:
                gone.append(shard)
        else:
            live[shard.shard_id] = shard
    unrecorded = tuple(
        s for s in live.values() if s.shard_id >= state.next_shard and s.copy_of is None
    )
    return Buckets(tuple(gone), tuple(live.values()), unrecorded)


def group_of(shard: ObservedShard) -> int:
    """Speculative copies and their original form one group; one member's result counts."""
    return shard.copy_of if shard.copy_of is not None else shard.shard_id


def clean(shard: ObservedShard) -> bool:
    """Did the shard's runner report every one of its microtasks as succeeded?"""
    report = shard.report
    return (
        report is not None and not report.runner_error and shard.indexes.issubset(report.succeeded)
    )


def startup_seconds(shards: Sequence[ObservedShard], now: float) -> float | None:
    """How long the shards' pods took to start their first microtask (the median), if seen.

    A running pod whose progress shows a microtask begun (one finished, or time on the first)
    started its first one `progress.seconds` ago; a finished pod's runner spent `seconds_total`
    of its run on microtasks. The rest of the pod's time is start-up (image pull, container
    start, the runner's own). Pods on lost nodes stopped keeping time: left out. (A pod on its
    first microtask counts: at a job's end every pod may be a new one, and shards sized without
    the start-up would be tiny.)
    """
    samples = [s for shard in shards if (s := _startup_sample(shard, now)) is not None]
    return _median(samples)


def remember_startup(
    durations: Mapping[Pool, PoolDurations], shards: Sequence[ObservedShard], now: float
) -> tuple[dict[Pool, PoolDurations], float | None]:
    """The pod start-up to plan with now, and `durations` with each pool's start-up as seen now.

    While pods show it, it is their median (see `startup_seconds`); a pool's own median is kept
    in its `PoolDurations` (once it has one: from its first harvest). When no live pod shows it
    (a job's last shards are all new pods, or pods on a lost node), the start-up kept is used:
    a pod takes as long to start at the end of a job as it did before, and shards sized
    without it would be tiny. Of the pools', the longer one (a new shard may go to either).
    """
    by_pool: dict[Pool, list[float]] = {}
    for shard in shards:
        sample = _startup_sample(shard, now)
        if sample is not None:
            by_pool.setdefault(shard.pool, []).append(sample)
    kept = dict(durations)
    for pool, samples in by_pool.items():
        seen = _median(samples)
        assert seen is not None
        measured = kept.get(pool)
        # (Rounded as the status keeps it: a status write only when it really changes.)
        seen = round(seen, 1)
        # Kept once the pool has a record (its first harvest opens it): an empty record would
        # read as a pool with nothing wrong in it to the bad-node judgement.
        if measured is not None and measured.startup_seconds != seen:
            kept[pool] = replace(measured, startup_seconds=seen)
    live = _median([s for samples in by_pool.values() for s in samples])
    if live is not None:
        return kept, live
    known = [d.startup_seconds for d in kept.values() if d.startup_seconds is not None]
    return kept, max(known) if known else None


def _startup_sample(shard: ObservedShard, now: float) -> float | None:
    if shard.started_at is None or shard.node_lost_since is not None:
        return None
    progress, report = shard.progress, shard.report
    begun = progress is not None and (progress.done >= 1 or progress.seconds > 0)
    if shard.finished_at is None and progress is not None and begun:
        return now - shard.started_at - progress.seconds
    if shard.finished_at is not None and report is not None and report.count > 0:
        return shard.finished_at - shard.started_at - report.seconds_total
    return None


def _median(samples: list[float]) -> float | None:
    if not samples:
        return None
    samples.sort()
    return max(0.0, samples[len(samples) // 2])
