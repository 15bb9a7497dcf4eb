"""Recovering work the infrastructure took away: lost shards and shards on nodes lost too long.

What they finished is kept; the rest goes back without spending an attempt, unless a copy of
theirs runs on and decides it.
"""

from __future__ import annotations

from . import attribution, failures, harvest, lost
from .draft import Draft
from .observed import group_of
from .types import ShardPhase


def recover_lost(draft: Draft) -> None:
    """Give back the work of lost shards, and of shards whose node is lost past the grace."""
    grace = draft.spec.node_lost_grace_seconds
    for shard in list(draft.live.values()):
        cause = shard.failure_reason if shard.phase == ShardPhase.LOST else None
        if shard.phase != ShardPhase.LOST:
            if shard.node_lost_since is None:
                continue
            deadline = shard.node_lost_since + grace
            if draft.now < deadline:
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
