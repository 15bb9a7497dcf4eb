"""Moving waiting shards that will not start where they wait.

GPU shards of an `auto` job waiting past fallbackAfterSeconds move to the CPU pool (unless
their turn on a GPU comes sooner); a group whose pods may use none of the nodes left in their
pool is relaunched with today's avoid lists (unpinning).
"""

from __future__ import annotations

from microtask_runner.indexset import IndexSet

from . import badnodes, placement, window
from .draft import Draft
from .observed import group_of
from .types import (
    Accelerator,
    DeleteReason,
    ObservedShard,
    PendingReason,
    Pool,
    Reason,
    ShardPhase,
    ShardPlan,
)

# A GPU shard whose turn seemed near keeps waiting past fallbackAfterSeconds, up to this many
# times that: estimates can be wrong, the fallback stays the safety net.
FALLBACK_PATIENCE = 2
# Pending reasons that mean "waiting in a queue on purpose": never a reason to fall back.
QUEUED_REASONS = frozenset({PendingReason.QUEUED, PendingReason.SUSPENDED})


def fall_back(draft: Draft) -> None:
    """Move GPU shards of an `auto` job waiting past fallbackAfterSeconds to the CPU pool."""
    if draft.spec.accelerator != Accelerator.AUTO:
        return
    loads: dict[Pool, placement.PoolLoad] | None = None
    queue = sorted(
        (
            s
            for s in draft.live.values()
            if s.pool == Pool.GPU and s.phase == ShardPhase.PENDING and not s.suspended
        ),
        key=lambda s: (s.pending_since or s.created_at, s.shard_id),
    )
    position = {s.shard_id: i for i, s in enumerate(queue)}
    for shard in list(draft.live.values()):
        if shard.pool != Pool.GPU or shard.phase != ShardPhase.PENDING:
            continue
        if shard.suspended or (shard.pending_reason in QUEUED_REASONS):
            continue
        since = shard.pending_since if shard.pending_since is not None else shard.created_at
        deadline = since + draft.spec.fallback_after_seconds
        if draft.now < deadline:
            draft.wakeups.append(deadline)
            continue
        if not draft.may_launch:
            continue  # it waits where it is until shards can be made again
        if loads is None:
            loads = window.pool_loads(draft)
        overdue = draft.now >= since + FALLBACK_PATIENCE * draft.spec.fallback_after_seconds
        if not overdue and not placement.worth_moving(
            loads[Pool.GPU], loads[Pool.CPU], len(shard.indexes), position[shard.shard_id]
        ):
            # Its turn on a GPU comes sooner than a CPU would finish it: look again when
            # the next GPU frees up.
            run = loads[Pool.GPU].shard_seconds(len(shard.indexes)) or 0.0
            draft.wakeups.append(draft.now + max(1.0, run / loads[Pool.GPU].slots()))
            continue
        draft.gpu_fallback_until = draft.now + draft.spec.fallback_cooldown_seconds
        draft.waste(shard)  # (nothing, unless it ran before it went back to pending)
        draft.retire(shard, DeleteReason.FALLBACK)
        rest = shard.indexes - draft.final() - draft.in_flight()
        if shard.copy_of is None:
            # A move keeps the attempt the shard's launch counted. What a decision whose
            # status write was lost already moved was counted when seen: not twice.
            draft.uncount((shard.indexes - rest) & draft.sighted)
        if not rest:
            # A copy whose original still runs, or work already moved by a decision whose
            # status write was lost: the pending shard just goes away.
            continue
        hard, soft = badnodes.avoid_lists(draft.nodes, Pool.CPU, draft.cluster)
        moved = ShardPlan(
            shard_id=draft.new_shard_id(),
            indexes=rest,
            attempt=shard.attempt,
            pool=Pool.CPU,
            avoid_nodes_hard=hard,
            avoid_nodes_soft=soft,
        )
        if moved.indexes:
            draft.launch(moved, count_attempts=False)
        draft.rebalanced(
            Reason.UNSCHEDULABLE_FALLBACK,
            f"shard {shard.shard_id} waited {draft.now - since:.0f}s on the GPU pool "
            f"({shard.pending_reason or 'pending'}); moved to CPU as shard {moved.shard_id}",
        )


def unpin(draft: Draft) -> None:
    """Relaunch work whose waiting pods may use none of the nodes left in their pool.

    A retry kept off the nodes where it failed can be left with a single node to run on;
    when that node goes, its pod would wait forever, and so would copies kept off the
    nodes their original used. A group (a shard and its copies) all of whose members wait
    like that goes back out as one shard with today's lists, at the attempt its launch
    counted.
    """
    if not draft.may_launch:
        return  # they wait where they are until shards can be made again
    groups: dict[int, list[ObservedShard]] = {}
    for shard in draft.live.values():
        groups.setdefault(group_of(shard), []).append(shard)
    for key, members in groups.items():
        if not all(pinned_out(draft, s) for s in members):
            continue
        first = min(members, key=lambda s: s.shard_id)
        indexes = IndexSet.from_ranges(r for s in members for r in s.indexes.ranges)
        avoid = badnodes.avoid_lists_for_retry(draft.nodes, indexes, first.pool, draft.cluster)
        if draft.cluster.ready_nodes[first.pool] <= set(avoid[0]):
            continue  # today's lists would keep it off every node too
        for shard in members:
            draft.retire(shard, DeleteReason.UNPINNED)
        rest = indexes - draft.final() - draft.in_flight()
        if any(s.copy_of is None for s in members):
            draft.uncount((indexes - rest) & draft.sighted)
        if not rest:
            continue
        moved = ShardPlan(draft.new_shard_id(), rest, first.attempt, first.pool, None, *avoid)
        draft.launch(moved, count_attempts=False)
        draft.rebalanced(
            Reason.NODE_LOST,
            f"shard {key} may run on none of the nodes left in the {first.pool.value} "
            f"pool; relaunched as shard {moved.shard_id}",
        )


def pinned_out(draft: Draft, shard: ObservedShard) -> bool:
    """Waiting for a node, and kept off every ready node of its pool."""
    if shard.phase != ShardPhase.PENDING or shard.suspended or not shard.avoid_nodes_hard:
        return False
    if shard.pool == Pool.GPU and draft.spec.accelerator == Accelerator.AUTO:
        return False  # the fallback to CPU takes it (fall_back)
    ready = draft.cluster.ready_nodes.get(shard.pool)
    # (A pool with no node ready at all: a new shard would wait there too.)
    return ready is not None and bool(ready) and ready <= set(shard.avoid_nodes_hard)
