"""Recovering work the infrastructure took away: lost shards and shards on nodes lost too long.

What they finished is kept; the rest goes back without spending an attempt, unless a copy of
theirs runs on and decides it.
"""

from __future__ import annotations

from . import attribution, failures, harvest, lost, window
from .draft import Draft
from .observed import group_of
from .types import ObservedShard, Pool, ShardPhase


def recover_lost(draft: Draft) -> None:
    """Give back the work of lost shards, and of shards whose node is lost past the grace (or
    sooner, at the job's end: see `sooner_than_grace`)."""
    grace = draft.spec.node_lost_grace_seconds
    early = sooner_than_grace(draft)
    for shard in list(draft.live.values()):
        cause = shard.failure_reason if shard.phase == ShardPhase.LOST else None
        if shard.phase != ShardPhase.LOST:
            if shard.node_lost_since is None:
                continue
            deadline = shard.node_lost_since + grace
            if draft.now < deadline and not early:
                draft.wakeups.append(deadline)
                continue
            cause = lost.NODE_NOT_READY
        reason = lost.rebalance_reason(cause)
        siblings = [
            s for s in draft.live.values() if s is not shard and group_of(s) == group_of(shard)
        ]
        ran = attribution.interrupted(shard, draft.inside(shard))
        ok = harvest.keep_successes(draft, shard, reason)
        if siblings:
            continue  # a copy runs on and decides the rest
        # The work goes back without spending an attempt: the infrastructure took it away,
        # the work did not fail.
        back = draft.requeue_unfinished(shard, shard.indexes - ok, ran=ran)
        if cause == lost.SUSPENDED and draft.spec.suspend:
            continue  # the user's own suspension moves nothing away from trouble
        what = lost.describe(reason, shard.shard_id, shard.node, cause)
        draft.rebalanced(reason, f"{what}; {failures.microtasks(len(back))} relaunched")


def sooner_than_grace(draft: Draft) -> bool:
    """At the job's end, would the free slots run the NotReady nodes' work before the grace ends?

    The grace waits for a node that may come back. When the work on it is all the job has left
    and idle slots would end it before the grace is even over, waiting only leaves them idle:
    it is given back now, as at the grace's end (if the node comes back, the little its pods
    had left is what is lost).
    """
    if not draft.may_launch or draft.has_fresh():
        return False
    if any(b.not_before <= draft.now for b in draft.ledger.retry):
        return False
    grace = draft.spec.node_lost_grace_seconds
    waiting: list[ObservedShard] = [
        s
        for s in draft.live.values()
        if s.phase != ShardPhase.LOST
        and s.node_lost_since is not None
        and draft.now < s.node_lost_since + grace
    ]
    if not waiting:
        return False
    lost_by_pool: dict[Pool, int] = {}
    for shard in waiting:
        lost_by_pool[shard.pool] = lost_by_pool.get(shard.pool, 0) + 1
    final = draft.final()
    rest = sum(len(s.indexes - final) for s in waiting)
    seconds = window.last_wave_seconds(draft, rest, lost_by_pool)
    if seconds is None:
        return False
    deadline = min(s.node_lost_since or 0.0 for s in waiting) + grace
    return draft.now + seconds <= deadline
