"""Charging failed attempts: a retry after backoff, or a permanent failure.

Who pays is `attribution`'s answer; this spends the attempt, gives it back when a node known to
fail what succeeds elsewhere was to blame, and says plainly when a command cannot run at all.
"""

from __future__ import annotations

from microtask_runner.indexset import IndexSet

from . import badnodes, failures, retries
from .attribution import Charge
from .draft import Draft
from .types import Event, ObservedShard


def charge(draft: Draft, shard: ObservedShard, charge: Charge) -> IndexSet:
    """Microtasks that failed an attempt: retry after backoff, or fail for good.

    Returns those queued for a retry.
    """
    indexes = charge.indexes - draft.final()
    if not indexes:
        return IndexSet.EMPTY
    policy = draft.spec.retry
    spent = shard.attempt
    if charge.from_runner and shard.attempt > 1 and judged_bad(draft, shard.node):
        # The node is known to fail what succeeds elsewhere: the attempt is given back, so
        # a microtask that kept landing there does not fail the job.
        spent -= 1
    permanent = retries.is_permanent(policy, charge.code, spent, from_runner=charge.from_runner)
    spared = IndexSet.EMPTY
    if permanent and charge.from_runner and spent > 1:
        # An earlier attempt was spent on a node now known to fail what succeeds elsewhere
        # (one on probation after an exclusion, say): that attempt is given back, so bad
        # luck here after a bad node there does not fail the job.
        spared = indexes & suspected_on_bad_nodes(draft, shard.node)
        if spared and retries.is_permanent(
            policy, charge.code, spent - 1, from_runner=charge.from_runner
        ):
            spared = IndexSet.EMPTY
    if spared:
        delay = retries.backoff_seconds(policy, spent - 1)
        draft.ledger = draft.ledger.retry_later(spent - 1, draft.now + delay, spared)
        draft.touched = draft.touched | spared
    if permanent:
        draft.ledger = draft.ledger.fail(indexes - spared)
        # Failed wherever they ran: no node is to blame for them.
        draft.nodes = badnodes.acquit(draft.nodes, indexes - spared)
    else:
        delay = retries.backoff_seconds(policy, spent)
        draft.ledger = draft.ledger.retry_later(spent, draft.now + delay, indexes)
        draft.touched = draft.touched | indexes
    sample = charge.indexes.first()
    assert sample is not None
    draft.failure_summary = failures.record(
        draft.failure_summary,
        exit_code=charge.exit_code,
        reason=charge.reason,
        attempts=len(indexes),
        microtasks=len(indexes - spared) if permanent else 0,
        sample_index=sample,
        message=charge.message,
    )
    draft.deltas.failures[charge.reason] = draft.deltas.failures.get(charge.reason, 0) + len(
        indexes
    )
    if charge.from_runner and retries.is_command_not_found(policy, charge.code):
        command_not_found(draft, shard, charge, indexes, sample)
    return spared if permanent else indexes


def suspected_on_bad_nodes(draft: Draft, besides: str | None) -> IndexSet:
    """Microtasks whose failure awaits judgement on a node known to fail work (not `besides`).

    Known: excluded now, or with at least `hardAfterFailures` failures of its own (a node
    on probation after an exclusion keeps its suspicions, not its level).
    """
    policy = draft.spec.bad_nodes
    if not policy.enabled:
        return IndexSet.EMPTY
    return IndexSet.from_ranges(
        r
        for name, record in draft.nodes.items()
        if name != besides
        and record.suspect
        and (record.level is not None or record.failures >= policy.hard_after_failures)
        for r in record.suspect.ranges
    )


def judged_bad(draft: Draft, node: str | None) -> bool:
    """Is `node` excluded (softly or hard) as failing what succeeds elsewhere?"""
    if node is None or not draft.spec.bad_nodes.enabled:
        return False
    record = draft.nodes.get(node)
    return record is not None and record.level is not None


def command_not_found(
    draft: Draft, shard: ObservedShard, charge: Charge, indexes: IndexSet, sample: int
) -> None:
    """Say plainly why these microtasks failed at once, and how to have them retried."""
    here = failures.FailureEntry(
        charge.exit_code,
        charge.reason,
        len(indexes),
        len(indexes),
        sample,
        failures.cut(charge.message),
    )
    where = f" on node {shard.node}" if shard.node else ""
    draft.events.append(
        Event(
            "CommandNotFound",
            f"shard {shard.shard_id}{where}: {failures.describe(here)}",
            warning=True,
        )
    )
    # The status message counts every microtask of the kind so far.
    whole = next((e for e in draft.failure_summary if e.key == here.key), here)
    draft.message = failures.describe(whole)
