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


def charge(
    draft: Draft,
    shard: ObservedShard,
    charge: Charge,
    *,
    free: bool = False,
    twice: IndexSet = IndexSet.EMPTY,
) -> IndexSet:
    """Microtasks that failed an attempt: retry after backoff, or fail for good.

    Those in `twice` ran twice in the pod (its own retry): both attempts are spent. Attempts
    spent on a node known to fail what succeeds elsewhere are given back, so a microtask that
    landed there does not fail the job: at once when it failed there (`free`, see `spares`:
    the pod's attempts), or when it fails again elsewhere (the node judged since), each attempt
    once. Returns those queued for a retry.
    """
    indexes = charge.indexes - draft.final()
    if not indexes:
        return IndexSet.EMPTY
    policy = draft.spec.retry
    spent = shard.attempt
    free_here = charge.from_runner and free
    if free_here:
        spent -= 1
    draft.nodes, owed = badnodes.refunds(draft.nodes, indexes, known_bad(draft), besides=shard.node)
    retried = IndexSet.EMPTY
    failed = IndexSet.EMPTY
    # By attempts spent: those owed none, then those owed one, two...
    for given_back, part in enumerate(badnodes.by_count(indexes, owed)):
        for again, piece in ((0, part - twice), (0 if free_here else 1, part & twice)):
            if not piece:
                continue
            attempts = max(0, spent - given_back) + again
            if retries.is_permanent(policy, charge.code, attempts, from_runner=charge.from_runner):
                failed = failed | piece
            else:
                delay = retries.backoff_seconds(policy, attempts)
                draft.ledger = draft.ledger.retry_later(attempts, draft.now + delay, piece)
                retried = retried | piece
    draft.touched = draft.touched | retried
    if failed:
        draft.ledger = draft.ledger.fail(failed)
        # Failed wherever they ran: no node is to blame for them.
        draft.nodes = badnodes.acquit(draft.nodes, failed)
    sample = charge.indexes.first()
    assert sample is not None
    draft.failure_summary = failures.record(
        draft.failure_summary,
        exit_code=charge.exit_code,
        reason=charge.reason,
        attempts=len(indexes),
        microtasks=len(failed),
        sample_index=sample,
        message=charge.message,
    )
    draft.deltas.failures[charge.reason] = draft.deltas.failures.get(charge.reason, 0) + len(
        indexes
    )
    if charge.from_runner and retries.is_command_not_found(policy, charge.code):
        command_not_found(draft, shard, charge, indexes, sample)
    return retried


def spares(draft: Draft, shard: ObservedShard) -> bool:
    """Is a failure reported on `shard`'s node free: the node known bad, with others to go?

    (Where its pool has no other node, retries would land there again and again, free.)
    """
    bad = known_bad(draft)
    if shard.node not in bad:
        return False
    ready = draft.cluster.ready_nodes.get(shard.pool)
    return ready is None or not ready <= bad


def known_bad(draft: Draft) -> frozenset[str]:
    """Nodes known to fail what succeeds elsewhere (see badnodes.known_bad)."""
    return badnodes.known_bad(draft.nodes, draft.spec.bad_nodes, draft.cluster, draft.durations)


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
