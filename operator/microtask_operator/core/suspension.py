"""spec.suspend: every shard's Job suspended while it holds, resumed when it is lifted."""

from __future__ import annotations

from .conditions import Phase
from .decision import Decision
from .draft import Draft
from .finish import finish
from .types import PendingReason, SuspendShard


def hold(draft: Draft) -> Decision | None:
    """Suspend every live shard while spec.suspend holds; else resume those we suspended."""
    if draft.spec.suspend:
        for shard in draft.live.values():
            if not shard.suspended:
                draft.suspends.append(SuspendShard(shard.shard_id, True))
        return finish(draft, Phase.SUSPENDED)
    for shard in draft.live.values():
        # (A queue holds its own: it resumes them when their turn comes.)
        if shard.suspended and shard.pending_reason != PendingReason.QUEUED:
            draft.suspends.append(SuspendShard(shard.shard_id, False))
    return None
