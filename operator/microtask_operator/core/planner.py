"""The core's one entry point: `plan(spec, state, observed, cluster, now) -> Decision`.

Every body (operator, local executor, simulator) calls it whenever something changed and at
`Decision.next_wakeup`. It harvests finished shards, moves work away from trouble, launches new
shards within the window, and says what the status is. It is deterministic and free of I/O.
A body that cannot make shards for now (`launch=False`) still has finished work harvested.

`status.attempts` counts the runs of microtasks that happened: a launch counts its microtasks,
and when its shard ends without running some of them (lost, cancelled before its pod started,
left out of its report) those are taken out again.

The observed shards are bucketed once (`Draft`), then named policies run in order, each in its
own module; `finish` assembles the decision. Bodies apply it in `decision.APPLY_ORDER`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import copies, endings, fallback, harvest, recovery, splitting, suspension, window
from .conditions import Condition, Phase
from .decision import APPLY_ORDER, Decision, Deltas, Step, apply, apply_async
from .draft import Draft
from .endings import MAX_REFUSAL_CHARS
from .finish import finish, running_phase
from .observed import clean, group_of, startup_seconds
from .state import CoreState, RetryBatch
from .types import ClusterView, CoreSpec, Event, ObservedShard

# Ways the job ends before its work is done, tried in this order once finished work is in.
ENDINGS: tuple[Callable[[Draft], Decision | None], ...] = (
    endings.failed_too_often,
    endings.all_done,
    endings.refused,
    endings.past_deadline,
)


def decide(draft: Draft) -> Decision:
    """The sequence of policies: harvest, recover, judge nodes, end or hold, move, split, launch."""
    ended = endings.already_finished(draft)
    if ended is not None:
        return ended

    harvest.harvest_finished(draft)
    recovery.recover_lost(draft)
    harvest.update_nodes(draft)

    for ending in ENDINGS:
        ended = ending(draft)
        if ended is not None:
            return ended
    held = suspension.hold(draft)
    if held is not None:
        return held

    fallback.fall_back(draft)
    fallback.unpin(draft)
    if not draft.may_launch:
        return finish(draft, running_phase(draft))
    _note_start(draft)
    splitting.split_tail(draft)
    window.fill_window(draft)
    copies.speculate(draft)
    return finish(draft, running_phase(draft))


def _note_start(draft: Draft) -> None:
    """The first decision that may launch starts the job's clock."""
    if draft.start_time is not None:
        return
    spec = draft.spec
    draft.start_time = draft.now
    draft.events.append(
        Event(
            "Started",
            f"{spec.total} microtasks in shards of {spec.microtasks_per_shard}, "
            f"up to {spec.parallelism} at once",
        )
    )


def plan(
    spec: CoreSpec,
    state: CoreState,
    observed: Sequence[ObservedShard],
    cluster: ClusterView,
    now: float,
    *,
    launch: bool = True,
) -> Decision:
    """Decide what to do now. Pure: same inputs, same decision.

    `launch=False`: the body cannot make shards for now (e.g. it cannot give their items). The
    decision still harvests, recovers lost work, judges nodes and finishes a job that is done,
    but creates no shard: no new work, no retry, no copy, no move to another pool.
    """
    return decide(Draft(spec, state, observed, cluster, now, launch=launch))


__all__ = [
    "APPLY_ORDER",
    "MAX_REFUSAL_CHARS",
    "Condition",
    "Decision",
    "Deltas",
    "Draft",
    "Phase",
    "RetryBatch",
    "Step",
    "apply",
    "apply_async",
    "clean",
    "decide",
    "group_of",
    "plan",
    "startup_seconds",
]
