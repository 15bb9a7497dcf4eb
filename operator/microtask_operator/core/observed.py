"""The observed shards, sorted once into the buckets a decision deals with, and read about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .state import CoreState
from .types import ObservedShard


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
    samples = []
    for shard in shards:
        if shard.started_at is None or shard.node_lost_since is not None:
            continue
        progress, report = shard.progress, shard.report
        begun = progress is not None and (progress.done >= 1 or progress.seconds > 0)
        if shard.finished_at is None and progress is not None and begun:
            samples.append(now - shard.started_at - progress.seconds)
        elif shard.finished_at is not None and report is not None and report.count > 0:
            samples.append(shard.finished_at - shard.started_at - report.seconds_total)
    if not samples:
        return None
    samples.sort()
    return max(0.0, samples[len(samples) // 2])
