"""Launching speculative copies of stragglers (which shards straggle: `speculation`).

Copies go where a slot is free (the fastest pool, for `auto`), off the nodes where the work
already runs slowly, and only with what the group has not finished. Before the job's end, a
straggler whose progress shows it caught early is given back instead (`splitting.give_back`).
"""

from __future__ import annotations

import math
from dataclasses import replace

from . import badnodes, placement, speculation, splitting, window
from .draft import Draft
from .observed import group_of
from .types import Accelerator, DeleteReason, ObservedShard, Pool, Reason, ShardPlan

# At the tail, with idle window slots, a shard this many times slower than usual gets a copy.
TAIL_SLOWDOWN_FACTOR = 1.5
# ...and copies that straggle too may get more there (a slow node is not that rare, and a
# group whose every member straggles would otherwise hold the job's end).
TAIL_COPIES_PER_SHARD = 3


def speculate(draft: Draft) -> None:
    """Copy stragglers at the tail, or whenever the cluster shows spare capacity.

    Copies do not take window slots (the window bounds the work in flight, not its
    duplicates); at most `maxFraction` x parallelism of them run at once.
    """
    policy = draft.spec.speculation
    if not policy.enabled:
        return
    for slow in speculation.outpaced(list(draft.live.values()), draft.final()):
        # Its copy ends it far sooner: the copy holds its work, its slot takes other work.
        draft.waste(slow)
        draft.retire(slow, DeleteReason.SPECULATION_LOSER)
    tail = not draft.has_fresh() and not any(b.not_before <= draft.now for b in draft.ledger.retry)
    cap = max(1, math.floor(policy.max_fraction * draft.spec.parallelism))
    budget = cap - copies_in_flight(draft)
    factor = policy.slowdown_factor
    idle = draft.spec.parallelism - len(draft.live)
    if tail and idle > 0:
        # The last shards with idle slots beside them (MapReduce's backup tasks): anything
        # past 1.5x its expected time is worth a copy, however the job is tuned, and the
        # idle slots may all hold copies (they would hold nothing else).
        factor = min(factor, TAIL_SLOWDOWN_FACTOR)
        budget = max(budget, idle)
    candidates, wakeups = speculation.stragglers(
        list(draft.live.values()),
        draft.durations,
        policy,
        draft.now,
        factor,
        # A copy that straggles too gets one more at once when its progress shows it;
        # judged by its run time alone, only at the tail (a slow copy is found late).
        copies_per_shard=TAIL_COPIES_PER_SHARD if tail or progress_seen(draft) else 1,
        paces=draft.paces,
        startup=draft.startup,
    )
    draft.wakeups.extend(wakeups)
    loads = window.pool_loads(draft)
    if tail and idle > 0 and draft.spec.accelerator == Accelerator.AUTO:
        chosen = {s.shard_id for s in candidates}
        candidates = candidates + [
            s
            for s in speculation.outrun(
                list(draft.live.values()),
                draft.durations,
                draft.now,
                lambda s: finish_elsewhere(draft, loads, s),
                copies_per_shard=TAIL_COPIES_PER_SHARD,
                paces=draft.paces,
                startup=draft.startup or 0.0,
            )
            if s.shard_id not in chosen
        ]
    # A shard whose node went NotReady is the lost-node recovery's when that comes first:
    # it relaunches the work as new shards sized for the slots free then, where one copy
    # would run it all on one slot (the tail of the job, when a node goes late).
    candidates = [s for s in candidates if not recovered_soon(draft, loads, s)]
    if not tail:
        # While work waits for slots, a straggler caught early goes back to it, sized anew and
        # placed on the next free slots, rather than copied whole onto one (see splitting).
        candidates = [s for s in candidates if not splitting.give_back(draft, s)]
    for shard in candidates[: max(0, budget)]:
        # Only what the group has not finished: a member that ended with failures on a
        # node of its own failures left its successes kept, and a copy of a shard that is
        # mostly done has little to do.
        rest = shard.indexes - draft.final()
        if not rest:
            continue
        # Never on a node where this work already runs slowly.
        busy = {
            s.node
            for s in draft.live.values()
            if group_of(s) == group_of(shard) and s.node is not None
        }
        copy_pool = pool_for_copy(draft, loads, shard)
        if copy_pool is None:
            continue  # no free slot: a copy would only queue behind real work
        pool = copy_pool
        load = loads[pool]
        loads[pool] = replace(
            load, live=load.live + 1, waiting=load.waiting + (0 if load.free() else 1)
        )
        hard, soft = badnodes.avoid_lists(draft.nodes, pool, draft.cluster)
        if draft.spec.bad_nodes.enabled:
            # Nor where its microtasks failed (a copy of a retry, say).
            hard, soft = badnodes.avoid_lists_for_retry(
                draft.nodes, shard.indexes, pool, draft.cluster
            )
        # Preferably not where this work already runs slowly: a straggling pod may be its
        # node's doing, but stragglers are pods, and a node of several GPUs may hold the
        # only free ones (required, it would leave the copy waiting forever).
        soft = tuple(sorted(set(soft) | (busy - set(hard))))
        plan = ShardPlan(
            shard_id=draft.new_shard_id(),
            indexes=rest,
            attempt=shard.attempt,
            pool=pool,
            copy_of=group_of(shard),
            avoid_nodes_hard=tuple(sorted(hard)),
            avoid_nodes_soft=soft,
        )
        draft.launch(plan, count_attempts=False)
        draft.copies += 1
        draft.deltas.speculative_copies += 1
        elapsed = draft.now - (shard.started_at or shard.created_at)
        draft.rebalanced(
            Reason.STRAGGLER,
            f"shard {shard.shard_id} on node {shard.node} has run {elapsed:.0f}s; "
            f"copy {plan.shard_id} started elsewhere",
        )


def recovered_soon(
    draft: Draft, loads: dict[Pool, placement.PoolLoad], shard: ObservedShard
) -> bool:
    """Will the lost-node recovery relaunch `shard`'s work before a copy would end?"""
    if shard.node_lost_since is None:
        return False
    recovery = shard.node_lost_since + draft.spec.node_lost_grace_seconds
    copy = finish_elsewhere(draft, loads, shard)
    return copy is None or recovery <= draft.now + copy


def progress_seen(draft: Draft) -> bool:
    """Does the body show the progress of running shards?"""
    return any(s.progress is not None for s in draft.live.values())


def pool_for_copy(
    draft: Draft,
    loads: dict[Pool, placement.PoolLoad],
    shard: ObservedShard,
) -> Pool | None:
    """A pool with a free slot for a copy of `shard` (the fastest, for `auto`), or None."""
    auto = draft.spec.accelerator == Accelerator.AUTO
    pools = [p for p in ([Pool.GPU, Pool.CPU] if auto else [shard.pool]) if room_for_copy(draft, p)]
    # A free slot, or the first place in the pool's queue (fill_window then holds the next
    # slot back for it): never behind shards that already wait. Where the capacity is known,
    # what waits is only copies (no work is parked there): a copy may queue behind them
    # when it still ends sooner there (a GPU straggler's copy beside a CPU slot that would
    # take it five times as long).
    free = [
        loads[p]
        for p in pools
        if loads[p].free() > 0 or not loads[p].waiting or loads[p].capacity is not None
    ]
    if not free:
        return None
    size = len(shard.indexes)
    return min(
        free,
        key=lambda load: (
            load.finish(size) if load.finish(size) is not None else math.inf,
            pools.index(load.pool),
        ),
    ).pool


def room_for_copy(draft: Draft, pool: Pool) -> bool:
    """Has `pool` a ready node that is not excluded (a copy would wait forever else)?"""
    ready = draft.cluster.ready_nodes.get(pool)
    if ready is None:
        return True  # not known: the scheduler will tell
    return bool(ready - set(badnodes.avoid_lists(draft.nodes, pool, draft.cluster)[0]))


def finish_elsewhere(
    draft: Draft, loads: dict[Pool, placement.PoolLoad], shard: ObservedShard
) -> float | None:
    """Seconds a copy of `shard` would take on a free slot, if any."""
    times = [
        finish
        for pool, load in loads.items()
        if load.free() > 0 and (finish := load.finish(len(shard.indexes))) is not None
    ]
    return min(times) if times else None


def copies_in_flight(draft: Draft) -> int:
    return len(draft.live) - draft.groups_in_flight()
