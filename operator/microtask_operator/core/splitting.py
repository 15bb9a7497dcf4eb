"""Splitting the last long shards of a job across the slots its end leaves idle, and giving back
the work of stragglers caught early.

At a job's end the free slots have nothing left to start, while a shard that began late (a copy
that waited for a GPU, say) still has much of its work ahead on one slot: it alone decides the
makespan. When the unfinished work of the shards that hold up the end, spread over the free
slots, would end several times sooner than they will, they (with their copies) are given up and
the work relaunched as new shards sized for those slots, as the window's last wave is (see
`window.last_wave_seconds`).

What the shard did but no report tells runs again: a running pod's successes are not known
before it ends, so only a far sooner end is worth it. It needs the shards' progress (the pace
each member runs at, from the runner's progress) and shards sized by the core
(`microtasksPerShard: auto`): an explicit shard size keeps its shards whole, and without
progress a copy on a free slot (`copies`) is the move.

Before the end, while work waits for slots, a straggler caught a few microtasks in (`give_back`)
is given up the same way: its unfinished microtasks go back to the work not placed yet, to be
placed as the next slots free up and sized as every shard then is. A copy would hold all of them
on one slot, and, the slots being busy, would wait for one first: a GPU shard's copy queued a
minute behind the others, then ran its whole shard alone long after every other slot had
finished (on a GPU-heavy mixed cluster, 5 of 20 seeds above 1.3 of the bound; none once given
back).
"""

from __future__ import annotations

from collections.abc import Callable

from microtask_runner.indexset import IndexSet

from . import attribution, failures, harvest, window
from .draft import Draft
from .observed import group_of
from .types import ObservedShard, Reason, ShardPhase

# A group is split only when its work spread over the free slots ends this many times sooner
# than its best member would end it (its done work runs again; estimates are estimates).
SPLIT_MARGIN = 2.0
# A member's pace is judged as if this many more microtasks had run at its pool's usual pace.
PRIOR_MICROTASKS = 2
# A straggler is given back (rather than copied) while it has done at most this share of its
# microtasks: what it did runs again.
GIVE_BACK_MOST = 0.5


def split_tail(draft: Draft) -> None:
    """At the job's end, give the free slots the unfinished work of groups that hold it up."""
    spec = draft.spec
    if not spec.speculation.enabled or spec.target_shard_seconds is None:
        return
    if not draft.may_launch or draft.has_fresh():
        return
    if any(b.not_before <= draft.now for b in draft.ledger.retry):
        return
    if draft.groups_in_flight() >= spec.parallelism:
        return  # no window slot to give the work to
    relaunch = relaunch_seconds(draft)
    if relaunch is None:
        return
    final = draft.final()
    groups: dict[int, list[ObservedShard]] = {}
    for shard in draft.live.values():
        groups.setdefault(group_of(shard), []).append(shard)
    candidates: list[tuple[float, int, list[ObservedShard], IndexSet]] = []
    for key, members in groups.items():
        left = group_time_left(draft, members)
        if left is None:
            continue
        rest = IndexSet.EMPTY
        for member in members:
            rest = rest | (draft.inside(member) - final)
        candidates.append((left, key, members, rest))
    # The longest first. Splitting the k longest ends them all in the time the free slots
    # need for their work together, and the job no sooner than the longest group left whole:
    # the most groups for which that is SPLIT_MARGIN times sooner than the k-th would end.
    candidates.sort(key=lambda c: (-c[0], c[1]))
    chosen = 0
    taken = 0
    for i, (left, _, _, rest) in enumerate(candidates):
        if len(rest) < 2:
            break  # one microtask left: nothing to spread (its copy is the move)
        taken += len(rest)
        others = candidates[i + 1][0] if i + 1 < len(candidates) else 0.0
        if max(relaunch(taken), others) * SPLIT_MARGIN < left:
            chosen = i + 1
    seconds = relaunch(sum(len(rest) for _, _, _, rest in candidates[:chosen]))
    for left, _, members, rest in candidates[:chosen]:
        split(draft, members, rest, left, seconds)


def relaunch_seconds(draft: Draft) -> Callable[[int], float] | None:
    """Seconds the free slots need for so many microtasks relaunched together (None: unknown).

    Their last wave (`window.last_wave_seconds`), and at least one start-up and one whole
    microtask on the fastest pool with a free slot.
    """
    loads = window.pool_loads(draft)
    paces = [
        load.per_microtask
        for pool in window.usable_pools(draft)
        if (load := loads[pool]).per_microtask is not None and load.free() > 0
    ]
    one = window.last_wave_seconds(draft, 1, {})
    if one is None or not paces:
        return None
    startup = draft.startup or 0.0
    per_microtask = one - startup  # the free slots' rate, inverted
    least = startup + min(paces)
    return lambda microtasks: max(least, startup + microtasks * per_microtask)


def group_time_left(draft: Draft, members: list[ObservedShard]) -> float | None:
    """Seconds the group's most promising member needs, when every running member shows it.

    None when a member's end cannot be judged: no progress seen, its pod still starting, or on
    a NotReady node (the lost-node recovery decides about that one).
    """
    lefts: list[float] = []
    for member in members:
        if member.node_lost_since is not None:
            return None
        if member.phase == ShardPhase.PENDING:
            continue  # a copy waiting for a node ends later than any running member
        if member.phase != ShardPhase.RUNNING:
            return None  # it ended: the harvest decides the group
        progress = member.progress
        baseline = draft.durations.get(member.pool)
        usual = baseline.per_microtask() if baseline is not None else None
        if progress is None or usual is None or (progress.done == 0 and progress.seconds <= 0):
            return None
        # Its pace so far, pulled toward its pool's usual pace as if PRIOR_MICROTASKS more had
        # run at it: a first microtask a little slow is no sign, a tenth of the pace is (and
        # nothing done yet, its first microtask counts as running since it began).
        pace = (progress.seconds + PRIOR_MICROTASKS * usual) / (progress.done + PRIOR_MICROTASKS)
        lefts.append(pace * max(0, len(member.indexes) - progress.done))
    return min(lefts) if lefts else None


def split(
    draft: Draft, members: list[ObservedShard], rest: IndexSet, left: float, seconds: float
) -> None:
    """Give up the group's members and relaunch its unfinished work as fresh shards."""
    back = _relaunch(draft, members, rest)
    names = ", ".join(str(m.shard_id) for m in sorted(members, key=lambda m: m.shard_id))
    draft.rebalanced(
        Reason.STRAGGLER,
        f"shard {names} would need {left:.0f}s more; {failures.microtasks(len(back))} "
        f"relaunched over the free slots (about {seconds:.0f}s)",
    )


def give_back(draft: Draft, straggler: ObservedShard) -> bool:
    """Give up a straggler caught early and give its unfinished work back to be placed anew
    (see the module); False when a copy is the move instead.

    Only a first attempt without copies, whose progress shows it has done little, in a job whose
    shards the core sizes and microtasks may run twice; the caller calls it only while work
    waits for slots. The microtask it was on may be slow by nature rather than its pod: that
    one runs again as a retry (its attempt spent), and a retry is never given back, so no
    microtask is given back twice (a copy races it instead).
    """
    spec = draft.spec
    if spec.target_shard_seconds is None or spec.retry.max_attempts < 2:
        return False
    if straggler.copy_of is not None or straggler.attempt > 1:
        return False
    group = group_of(straggler)
    if any(s is not straggler and group_of(s) == group for s in draft.live.values()):
        return False
    progress = straggler.progress
    if progress is None or progress.done > GIVE_BACK_MOST * len(straggler.indexes):
        return False
    reached = straggler.indexes.take(progress.done)[0]
    current = straggler.indexes.take(progress.done + 1)[0] - reached
    back = _relaunch(draft, [straggler], straggler.indexes - draft.final())
    draft.retry_now(current & back, spent=straggler.attempt)
    elapsed = draft.now - (straggler.started_at or straggler.created_at)
    draft.rebalanced(
        Reason.STRAGGLER,
        f"shard {straggler.shard_id} on node {straggler.node} has done {progress.done} of "
        f"{failures.microtasks(len(straggler.indexes))} in {elapsed:.0f}s; "
        f"{failures.microtasks(len(back))} given back to the next free slots",
    )
    return True


def _relaunch(draft: Draft, members: list[ObservedShard], rest: IndexSet) -> IndexSet:
    """Give up the members (their reported successes kept) and give `rest` back: what the
    original never reached is no attempt. Returns the microtasks given back."""
    # The original's launch counted its microtasks: those it never reached are no attempt
    # (a copy's runs were never counted, whatever it reached).
    holder = next((m for m in members if m.copy_of is None), members[0])
    ran = ran_so_far(draft, holder)
    for member in members:
        harvest.keep_successes(draft, member, Reason.STRAGGLER)
    return draft.requeue_unfinished(holder, rest, ran=ran)


def ran_so_far(draft: Draft, member: ObservedShard) -> IndexSet:
    """The member's microtasks that ran: as many as its progress shows, and the current one.

    A runner takes its microtasks in order; the ones after them never ran there.
    """
    interrupted = attribution.interrupted(member, draft.inside(member))
    progress = member.progress
    if progress is None:
        return interrupted
    count = progress.done + (1 if progress.done < len(member.indexes) else 0)
    return interrupted | member.indexes.take(count)[0]
