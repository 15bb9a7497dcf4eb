"""Where a new shard of an `accelerator: auto` job goes: the pool where it finishes earliest.

Each pool is described by what the core sees of it (`PoolLoad`): how many of the job's shard
pods it holds at once (from `ClusterView.slots`, or learned: pods Pending Unschedulable there
mean it is full with what runs), how many of the job's shards it holds now, and how long a
microtask takes there (measured from finished shards, `PoolDurations`).

A shard's expected finish on a pool is its run time there (its pod's start-up, once measured,
then its microtasks), plus a wait when the pool is full:
its place in the queue times the time a slot takes to free up (a shard's run time over the
slots). The pool with the earliest finish wins, with one exception that keeps every slot busy:
while the job has more work left than the cluster clears in the time the shard would take on a
free, slower pool, the free pool takes it. Queueing for the fast pool then gains nothing (the
fast pool is busy with other work until the end anyway) and leaves a slot idle. Only near the
end, when a slow slot would finish after everything else, does a shard wait for a faster one.

The horizon is no shorter than the job's *water level* (`water_level`): the time by which the
work not yet running would be done if every slot took its share of it, the busy slots once
their shards end, each paying one pod start-up. One shard at a time, a queue for the fast pool
always looks sooner than a free slow slot; all the work left at once queued there does not,
and a slow slot whose shard ends by the level shortens the job's end.

Until a pool is measured, free capacity is used in the job's order of preference (GPU first):
that is how the speeds get measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .types import Pool


@dataclass(frozen=True)
class PoolLoad:
    """One pool as placement sees it."""

    pool: Pool
    capacity: int | None  # the job's shard pods it holds at once; None: unknown
    live: int  # the job's shards there now (pending or running)
    waiting: int  # of those, Pending Unschedulable: the pool is full
    per_microtask: float | None  # measured seconds per microtask; None: not measured yet
    startup: float = 0.0  # seconds a shard's pod takes before its first microtask (measured)

    def slots(self) -> int:
        """The capacity, or as learned: what runs there when pods wait (at least 1)."""
        if self.capacity is not None:
            return max(0, self.capacity)
        if self.waiting:
            return max(1, self.live - self.waiting)
        return max(1, self.live + 1)

    def free(self) -> int:
        if self.capacity is not None:
            return max(0, self.capacity - self.live)
        return 0 if self.waiting else 1

    def shard_seconds(self, size: int) -> float | None:
        """A shard's pod time here: its start-up, then its microtasks."""
        if self.per_microtask is None:
            return None
        return self.startup + self.per_microtask * size

    def finish(self, size: int) -> float | None:
        """Seconds from now until a shard of `size` placed here now would end; None: unknown."""
        run = self.shard_seconds(size)
        if run is None:
            return None
        if self.free() > 0:
            return run
        slots = self.slots()
        if slots <= 0:
            return None  # no ready node at all: it would wait indefinitely
        queued = max(0, self.live - slots)
        return (queued + 1) * run / slots + run

    def rate(self) -> float:
        """Microtasks per second the pool clears when every slot is busy."""
        if not self.per_microtask:
            return 0.0
        return self.slots() / self.per_microtask


def choose(
    loads: Sequence[PoolLoad],
    size: int,
    remaining: float,
    busy_until: float = 0.0,
    level: float = 0.0,
) -> Pool:
    """The pool for a new shard of `size` microtasks, `loads` in order of preference.

    The horizon a slower free pool may finish within is the longest of the time the cluster
    needs for the `remaining` microtasks (not done yet), `busy_until`, the seconds until the
    shards in flight are expected to end, and the water `level` (0: unknown): a shard that ends
    no later than those is no loss.
    """
    assert loads, "no pool to choose from"
    usable = [load for load in loads if load.slots() > 0]
    loads = usable or list(loads)
    if any(load.per_microtask is None for load in loads):
        # Not all measured: fill free capacity in order of preference, else queue for the first.
        for load in loads:
            if load.free() > 0:
                return load.pool
        return loads[0].pool
    finishes = {load.pool: load.finish(size) for load in loads}
    known = [load for load in loads if finishes[load.pool] is not None]
    if not known:
        return loads[0].pool
    best = min(known, key=lambda load: (finishes[load.pool], loads.index(load)))
    if best.free() > 0:
        return best.pool
    free = [load for load in known if load.free() > 0]
    if not free:
        return best.pool
    rate = sum(load.rate() for load in loads)
    horizon = max(remaining / rate if rate > 0 else float("inf"), busy_until, level)
    fastest_free = min(free, key=lambda load: (finishes[load.pool], loads.index(load)))
    finish = finishes[fastest_free.pool]
    assert finish is not None
    if finish <= horizon:
        return fastest_free.pool
    return best.pool


def water_level(slots: Iterable[tuple[float, float]], work: float, startup: float) -> float:
    """Seconds from now by which `work` microtasks are done with every slot taking its share.

    `slots`: per slot, the seconds until it is free and its seconds per microtask. A slot then
    pays one pod `startup` and clears microtasks at its pace until the level: the level is
    where what the slots clear adds up to `work` (inf without a slot).
    """
    # Sorted by when each slot starts clearing work, the cleared work is piecewise linear in
    # the level: add the slots one by one until the ones started clear `work` by the next start.
    starts = sorted((max(0.0, free) + startup, 1.0 / pace) for free, pace in slots if pace > 0)
    cleared_rate = 0.0
    offset = 0.0  # sum of start x rate over the slots started: cleared(t) = rate * t - offset
    for index, (start, rate) in enumerate(starts):
        cleared_rate += rate
        offset += start * rate
        level = (work + offset) / cleared_rate
        following = starts[index + 1][0] if index + 1 < len(starts) else float("inf")
        if level <= following:
            return level
    return float("inf")


def worth_moving(waiting: PoolLoad, other: PoolLoad, size: int, position: int) -> bool:
    """Would a shard queued `position`-th (0: next) in `waiting` end sooner on `other`?

    The fallback's test once both pools are measured and their capacity is known; without that
    knowledge the answer is yes (the fallback after `fallbackAfterSeconds` is the safety net).
    """
    if waiting.capacity is None or other.capacity is None:
        return True
    run = waiting.shard_seconds(size)
    there = other.finish(size)
    slots = waiting.slots()
    if run is None or there is None or slots <= 0:
        return True
    stay = (position + 1) * run / slots + run
    return there < stay
