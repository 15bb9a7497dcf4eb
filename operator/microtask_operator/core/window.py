"""Filling the window: retries that are due, then fresh work, placed and sized per pool.

The window bounds the groups in flight (a shard and its copies take one slot). Each new shard
goes to the pool `placement` chooses and holds the microtasks `shardsize` gives that pool.
"""

from __future__ import annotations

from dataclasses import replace

from . import badnodes, placement, shardsize
from .draft import Draft
from .types import Accelerator, PendingReason, Pool, ShardPhase, ShardPlan


def fill_window(draft: Draft) -> None:
    """Launch what the window has room for: retries that are due first, then fresh work."""
    # A copy still waiting for a node holds a slot back, so it is the next pod to get one.
    waiting_copies = sum(
        1 for s in draft.live.values() if s.copy_of is not None and s.phase == ShardPhase.PENDING
    )
    free = draft.spec.parallelism - draft.groups_in_flight() - waiting_copies
    if free <= 0:
        return
    # Never queue for launch what a live shard already runs.
    # Queued and in flight shared nothing when the draft was made: only what was queued or launched
    # since can be both, and looking at that alone spares a pass over the whole window.
    draft.ledger = draft.ledger.unqueue(draft.touched & draft.in_flight())
    loads = pool_loads(draft)
    room = free_room(draft, loads)
    if room is not None:
        # Every usable pool's capacity is known: work launched beyond its free slots would
        # only be parked in a queue (and moved to the slow pool, GPU-sized, if it waits
        # too long); left unplaced, it goes where a slot frees up, sized for that pool.
        free = min(free, room)
        if free <= 0:
            return
    unplaced = max(0, draft.spec.total - len(draft.final()) - len(draft.in_flight()))
    size = min(size_for(draft, loads, pool, unplaced) for pool in usable_pools(draft))
    ready, draft.ledger = draft.ledger.take_ready(draft.now, size, free)
    for batch in draft.ledger.retry:
        if batch.not_before > draft.now:
            draft.wakeups.append(batch.not_before)
    for spent, indexes in ready:
        pool = place(draft, loads, len(indexes))
        avoid = badnodes.avoid_lists(draft.nodes, pool, draft.cluster)
        if draft.spec.bad_nodes.enabled:
            avoid = badnodes.avoid_lists_for_retry(draft.nodes, indexes, pool, draft.cluster)
        draft.launch(ShardPlan(draft.new_shard_id(), indexes, spent + 1, pool, None, *avoid))
    free -= len(ready)
    if free <= 0:
        return
    largest = draft.spec.microtasks_per_shard
    # The next fresh microtasks, found past the work accounted for: never the whole rest.
    fresh = draft.ledger.first_fresh(draft.universe, draft.in_flight(), free * largest)
    avoid_by_pool = {pool: badnodes.avoid_lists(draft.nodes, pool, draft.cluster) for pool in Pool}
    while fresh and free > 0:
        pool = place(draft, loads, size)
        load = loads[pool]
        if room is not None and load.capacity is not None and load.live > load.capacity:
            # Every free slot left is on a pool where the shard would end later than
            # queued for a busy one: the work waits unplaced for that slot to free up,
            # then goes there sized for what is left (queued now, it would be sized for
            # what is left now, and the last shards split into ever smaller ones).
            loads[pool] = replace(load, live=load.live - 1)
            break
        chunk, fresh = fresh.take(size_for(draft, loads, pool, unplaced))
        unplaced -= len(chunk)
        hard, soft = avoid_by_pool[pool]
        draft.launch(ShardPlan(draft.new_shard_id(), chunk, 1, pool, None, hard, soft))
        free -= 1


def pool_loads(draft: Draft) -> dict[Pool, placement.PoolLoad]:
    """Each pool as placement sees it now (see core/placement.py)."""
    live = dict.fromkeys(Pool, 0)
    waiting = dict.fromkeys(Pool, 0)
    for shard in draft.live.values():
        live[shard.pool] += 1
        if (
            shard.phase == ShardPhase.PENDING
            and shard.pending_reason == PendingReason.UNSCHEDULABLE
        ):
            waiting[shard.pool] += 1
    loads = {}
    for pool in Pool:
        measured = draft.durations.get(pool)
        excluded = frozenset(badnodes.avoid_lists(draft.nodes, pool, draft.cluster)[0])
        loads[pool] = placement.PoolLoad(
            pool=pool,
            capacity=draft.cluster.capacity(pool, excluded),
            live=live[pool],
            waiting=waiting[pool],
            per_microtask=measured.per_microtask() if measured is not None else None,
            startup=draft.startup or 0.0,
        )
    return loads


def pool_for_new_work(
    draft: Draft, loads: dict[Pool, placement.PoolLoad] | None = None, size: int | None = None
) -> Pool:
    if draft.spec.accelerator == Accelerator.GPU:
        return Pool.GPU
    if draft.spec.accelerator == Accelerator.CPU:
        return Pool.CPU
    if draft.cluster.capacity(Pool.GPU) is None:
        # The GPU pool's capacity is unknown: after a fallback, trust that it is full for a
        # while rather than queue there again and wait out fallbackAfterSeconds once more.
        if draft.gpu_fallback_until is not None and draft.now < draft.gpu_fallback_until:
            draft.wakeups.append(draft.gpu_fallback_until)
            return Pool.CPU
        if draft.gpu_fallback_until is not None and waiting_for_capacity(draft, Pool.GPU):
            return Pool.CPU
    if loads is None:
        loads = pool_loads(draft)
    remaining = draft.spec.total - len(draft.final())
    return placement.choose(
        [loads[Pool.GPU], loads[Pool.CPU]],
        size or draft.spec.microtasks_per_shard,
        max(0, remaining),
        busy_until=busy_until(draft),
        level=water_level(draft, loads) or 0.0,
    )


def busy_until(draft: Draft) -> float:
    """Seconds until the shards running now are expected to end (0 when none is measured)."""
    if draft.busy is None:
        latest = draft.now
        for shard in draft.live.values():
            measured = draft.durations.get(shard.pool)
            per = measured.per_microtask() if measured is not None else None
            if shard.started_at is None or per is None:
                continue
            latest = max(latest, shard.started_at + per * len(shard.indexes))
        draft.busy = latest - draft.now
    return draft.busy


def water_level(draft: Draft, loads: dict[Pool, placement.PoolLoad]) -> float | None:
    """Seconds until the work not running yet would be done, every slot taking its share.

    (See placement.water_level.) The work is what no shard runs: not launched yet, waiting
    for a node, or on a NotReady node. A running shard's slot frees when its microtasks are
    expected to end at its pool's pace. None when a usable pool is not measured or its size
    is unknown; computed once per decision (the shards launched meanwhile only share it out).
    """
    if draft.level is not None:
        return draft.level or None
    pools = usable_pools(draft)
    level = 0.0
    if all(loads[p].per_microtask and loads[p].capacity is not None for p in pools):
        startup = draft.startup or 0.0
        work = max(0, draft.spec.total - len(draft.final()) - len(draft.in_flight()))
        frees: dict[Pool, list[float]] = {pool: [] for pool in pools}
        for shard in draft.live.values():
            pace = loads[shard.pool].per_microtask
            if shard.pool not in frees or pace is None:
                continue
            if shard.started_at is None or shard.node_lost_since is not None:
                if shard.copy_of is None:
                    work += len(shard.indexes)
                continue
            ends = shard.started_at + startup + pace * len(shard.indexes) - draft.now
            frees[shard.pool].append(max(0.0, ends))
        slots = []
        for pool in pools:
            pace, capacity = loads[pool].per_microtask, loads[pool].capacity
            assert pace is not None and capacity is not None
            busy = sorted(frees[pool])[:capacity]
            slots += [(free, pace) for free in busy + [0.0] * (capacity - len(busy))]
        level = placement.water_level(slots, work, startup)
    draft.level = level
    return level or None


def place(draft: Draft, loads: dict[Pool, placement.PoolLoad], size: int) -> Pool:
    """The pool for one more new shard; `loads` then counts it there."""
    pool = pool_for_new_work(draft, loads, size)
    load = loads[pool]
    loads[pool] = replace(load, live=load.live + 1)
    return pool


def free_room(draft: Draft, loads: dict[Pool, placement.PoolLoad]) -> int | None:
    """Free slots in the usable pools, None when a pool's capacity is unknown.

    (Unknown capacity is learned from pods that wait: there, launching past it is how the
    core finds out, and what makes a slot that frees up busy again before the next call.)
    """
    pools = usable_pools(draft)
    if any(loads[pool].capacity is None for pool in pools):
        return None
    return sum(loads[pool].free() for pool in pools)


def usable_pools(draft: Draft) -> tuple[Pool, ...]:
    if draft.spec.accelerator == Accelerator.AUTO:
        return (Pool.GPU, Pool.CPU)
    return (Pool.GPU,) if draft.spec.accelerator == Accelerator.GPU else (Pool.CPU,)


def size_for(draft: Draft, loads: dict[Pool, placement.PoolLoad], pool: Pool, unplaced: int) -> int:
    """Microtasks in a new shard on `pool` (see core/shardsize.py)."""
    target = draft.spec.target_shard_seconds
    if target is None:
        return draft.spec.microtasks_per_shard
    return shardsize.shard_size(
        per_microtask=loads[pool].per_microtask,
        target_seconds=target,
        unplaced=unplaced,
        rate=sum(loads[p].rate() for p in usable_pools(draft)),
        total=draft.spec.total,
        parallelism=draft.spec.parallelism,
        largest=draft.spec.microtasks_per_shard,
        startup_seconds=draft.startup,
        slowest=free_node_pace(draft, pool),
        free_rate=free_rate(loads[pool]),
        level=water_level(draft, loads),
    )


def free_node_pace(draft: Draft, pool: Pool) -> float | None:
    """The pace a new shard on `pool` is sized for: of the slowest node with a free slot.

    The scheduler, not the core, picks the node, but only among those with a free slot: when
    only fast nodes have one, a shard sized for the pool's slowest node would end early there
    and pay another pod start-up for the rest. Where that is not known (a node's slots, a free
    node's pace, or shards of the pool waiting for a node, which take free slots first), the
    pool's slowest node seen so far.
    """
    slowest = draft.paces.slowest(pool)
    names = draft.cluster.ready_nodes.get(pool)
    slots = draft.cluster.slots
    if not names or any(name not in slots for name in names):
        return slowest
    used: dict[str, int] = {}
    # Newest first: once a fill has launched a shard here, the next call stops at it at once.
    for shard in reversed(draft.live.values()):
        if shard.pool != pool:
            continue
        if shard.node is None:
            return slowest  # waiting for a slot: it takes one of the free ones
        used[shard.node] = used.get(shard.node, 0) + 1
    excluded = set(badnodes.avoid_lists(draft.nodes, pool, draft.cluster)[0])
    paces = []
    for name in names - excluded:
        if used.get(name, 0) < slots[name]:
            pace = draft.paces.node(name)
            if pace is None:
                return slowest
            paces.append(pace)
    return max(paces) if paces else slowest


def free_rate(load: placement.PoolLoad) -> float:
    """Microtasks per second the pool's free slots clear, the one a new shard takes included.

    (`load` may count the new shard there already: its slot is counted free all the same.)
    Only the pool's own: placement, not size, decides whether work goes to another pool.
    """
    if load.per_microtask is None or load.per_microtask <= 0 or load.capacity is None:
        return 0.0  # not measured, or of unknown size: no last wave to share
    return (load.free() + (1 if load.live > 0 else 0)) / load.per_microtask


def last_wave_seconds(draft: Draft, microtasks: int, lost: dict[Pool, int]) -> float | None:
    """Seconds the free slots need to run `microtasks` together, their pods' start-up included.

    `lost`: the shards per pool that sit on NotReady nodes (counted live, though their slots
    are not among the ready ones). None when a usable pool is not measured or its size unknown,
    or no slot is free.
    """
    loads = pool_loads(draft)
    rate = 0.0
    for pool in usable_pools(draft):
        load = loads[pool]
        if load.per_microtask is None or load.per_microtask <= 0 or load.capacity is None:
            return None
        free = max(0, load.capacity - (load.live - lost.get(pool, 0)))
        rate += free / load.per_microtask
    if rate <= 0:
        return None
    return (draft.startup or 0.0) + microtasks / rate


def waiting_for_capacity(draft: Draft, pool: Pool | None = None) -> bool:
    return any(
        s.phase == ShardPhase.PENDING
        and s.pending_reason == PendingReason.UNSCHEDULABLE
        and (pool is None or s.pool == pool)
        for s in draft.live.values()
    )
