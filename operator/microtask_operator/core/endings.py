"""The ways a job ends before its work is done: too many failures, refused pods, the deadline.

Each ending is a function of the draft that returns the final decision when its condition
holds, None otherwise; `planner.decide` tries them in order. Shards still in flight are
cancelled, and the status says how many microtasks never ran.
"""

from __future__ import annotations

from collections.abc import Sequence

from microtask_runner.indexset import IndexSet

from . import conditions, failures, retries
from .conditions import TERMINAL_PHASES, Phase
from .decision import Decision
from .draft import Draft
from .finish import finish
from .types import DeleteReason, Event, ObservedShard

# A refusal quoted in the status message and the event is cut to this many characters.
MAX_REFUSAL_CHARS = 1000


def already_finished(draft: Draft) -> Decision | None:
    """A job that ended stays ended: whatever is still in flight is cancelled."""
    if draft.previous_phase not in TERMINAL_PHASES:
        return None
    draft.cancel_all(DeleteReason.FINISHED)
    # A finished job keeps the reason it failed for, whatever it was.
    kept = conditions.get_condition(draft.conditions, conditions.FAILED)
    reason = kept.reason if kept is not None and kept.status == "True" else None
    return finish(draft, draft.previous_phase, reason)


def failed_too_often(draft: Draft) -> Decision | None:
    """More microtasks failed for good than the retry policy tolerates."""
    spec = draft.spec
    if len(draft.ledger.failed) <= retries.allowed_failures(spec.retry, spec.total):
        return None
    draft.not_run = len(draft.fresh())
    draft.cancel_all(DeleteReason.TOO_MANY_FAILURES)
    draft.message = with_not_run(draft, too_many_failures(draft))
    return finish(draft, Phase.FAILED, conditions.REASON_TOO_MANY_FAILURES)


def all_done(draft: Draft) -> Decision | None:
    """Every microtask succeeded or failed within what is tolerated."""
    if len(draft.final()) < draft.spec.total:
        return None
    draft.not_run = len(draft.fresh())
    draft.cancel_all(DeleteReason.FINISHED)
    return finish(draft, Phase.SUCCEEDED)


def refused(draft: Draft) -> Decision | None:
    """The cluster refuses some shard's pods for good (see `refuse`)."""
    shards = [s for s in draft.live.values() if s.refusal]
    if not shards:
        return None
    return refuse(draft, shards)


def past_deadline(draft: Draft) -> Decision | None:
    """timeouts.jobSeconds ran out: what is unfinished fails (else a wakeup at the deadline)."""
    spec = draft.spec
    if spec.job_timeout_seconds is None or draft.start_time is None:
        return None
    deadline = draft.start_time + spec.job_timeout_seconds
    if draft.now < deadline:
        draft.wakeups.append(deadline)
        return None
    draft.not_run = len(draft.fresh())
    draft.cancel_all(DeleteReason.DEADLINE)
    unfinished = draft.universe - draft.final()
    draft.ledger = draft.ledger.fail(unfinished).drop_queue()
    draft.message = with_not_run(
        draft,
        f"timeouts.jobSeconds={spec.job_timeout_seconds:g} exceeded; "
        f"{len(unfinished)} microtasks unfinished",
    )
    return finish(draft, Phase.FAILED, conditions.REASON_DEADLINE_EXCEEDED)


def refuse(draft: Draft, refused: Sequence[ObservedShard]) -> Decision:
    """The cluster will never run these shards' pods: fail now rather than wait forever."""
    first = min(refused, key=lambda s: s.shard_id)
    words = failures.cut(first.refusal or "", MAX_REFUSAL_CHARS)
    never = IndexSet.from_ranges(r for s in refused for r in s.indexes.ranges)
    draft.not_run = len((draft.fresh() | never) - draft.final())
    draft.cancel_all(DeleteReason.REFUSED)
    text = f"the cluster refuses the pods of shard {first.shard_id}: {words}"
    draft.events.append(Event(conditions.REASON_PODS_REFUSED, text, warning=True))
    draft.message = with_not_run(draft, text)
    return finish(draft, Phase.FAILED, conditions.REASON_PODS_REFUSED)


def too_many_failures(draft: Draft) -> str:
    """Which limit was crossed, and the kind of failure most to blame."""
    policy = draft.spec.retry
    text = (
        f"{failures.microtasks(len(draft.ledger.failed))} failed permanently, more than "
        f"{retries.failure_limit(policy, draft.spec.total)}"
    )
    worst = failures.worst(draft.failure_summary)
    if worst is not None:
        text += f"; {failures.describe(worst, retried=policy.retry_command_not_found)}"
    return text


def with_not_run(draft: Draft, text: str) -> str:
    if draft.not_run:
        text += f", {failures.microtasks(draft.not_run)} never ran"
    return text
