"""The end of a decision: phase, conditions, events, the new CoreState and the status.

Everything the draft gathered is assembled here once, whichever policy ended the decision.
"""

from __future__ import annotations

from microtask_runner.indexset import IndexSet

from . import conditions, failures
from .conditions import Phase
from .decision import Decision
from .draft import Draft
from .state import CoreState
from .types import DeleteReason, DeleteShard, Event, Pool, ShardPhase


def finish(draft: Draft, phase: Phase, reason: str | None = None) -> Decision:
    """The decision, with `phase` (and, for a failed job, why it failed)."""
    now = draft.now
    conds = draft.conditions
    ledger = draft.ledger
    counts = ledger.counts
    total = draft.spec.total
    done = phase in (Phase.SUCCEEDED, Phase.FAILED)
    if done and draft.completion_time is None:
        draft.completion_time = now
    if phase == Phase.SUCCEEDED:
        tolerated = len(ledger.failed)
        why = (
            conditions.REASON_SUCCEEDED_WITH_FAILURES
            if tolerated
            else conditions.REASON_ALL_SUCCEEDED
        )
        text = f"{len(ledger.succeeded)} of {total} microtasks succeeded" + (
            f", {tolerated} failed (tolerated)" if tolerated else ""
        )
        conds = conditions.set_condition(conds, conditions.COMPLETE, True, why, text, now)
        conds = conditions.set_condition(conds, conditions.FAILED, False, why, text, now)
        conds = conditions.set_condition(
            conds, conditions.READY, False, conditions.REASON_FINISHED, text, now
        )
        draft.message = text
    elif phase == Phase.FAILED:
        failed_why: str = reason or conditions.REASON_TOO_MANY_FAILURES
        text = draft.message or f"{len(ledger.failed)} microtasks failed"
        conds = conditions.set_condition(conds, conditions.FAILED, True, failed_why, text, now)
        conds = conditions.set_condition(conds, conditions.COMPLETE, False, failed_why, text, now)
        conds = conditions.set_condition(
            conds, conditions.READY, False, conditions.REASON_FINISHED, text, now
        )
    else:
        ready_reason = {
            Phase.RUNNING: conditions.REASON_RUNNING,
            Phase.PENDING: conditions.REASON_PENDING,
            Phase.SUSPENDED: conditions.REASON_SUSPENDED,
        }[phase]
        conds = conditions.set_condition(
            conds,
            conditions.READY,
            phase != Phase.SUSPENDED,
            ready_reason,
            f"{len(ledger.succeeded)} of {total} microtasks succeeded",
            now,
        )
    if phase == Phase.SUSPENDED or conditions.get_condition(conds, conditions.SUSPENDED):
        conds = conditions.set_condition(
            conds,
            conditions.SUSPENDED,
            phase == Phase.SUSPENDED,
            conditions.REASON_SUSPENDED if phase == Phase.SUSPENDED else conditions.REASON_RESUMED,
            "spec.suspend is true" if phase == Phase.SUSPENDED else "spec.suspend is false",
            now,
        )
    if done and draft.previous_phase != phase:
        draft.events.append(
            Event(
                phase.value,
                f"{len(ledger.succeeded)} of {total} microtasks succeeded, "
                f"{len(ledger.failed)} failed; {ledger.attempts} attempts",
                warning=phase == Phase.FAILED,
            )
        )
    if counts.failed:
        draft.events.append(
            Event(
                "MicrotasksFailed",
                f"{failures.microtasks(counts.failed)} failed permanently "
                f"({len(ledger.failed)} in all)",
                warning=True,
            )
        )
    if phase == Phase.SUSPENDED and draft.previous_phase != Phase.SUSPENDED:
        draft.events.append(Event("Suspended", "spec.suspend is true: no new shards"))
    trim_kept(draft)
    final = draft.final()
    attempts = {shard.attempt for shard in draft.live.values()}
    if len(attempts) == 1:
        # (The usual case: all the work in flight is at one attempt, merged already.)
        running = draft.in_flight() - final
        in_flight = {attempts.pop(): running} if running else {}
    else:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for shard in draft.live.values():
            ranges.setdefault(shard.attempt, []).extend(shard.indexes.ranges)
        in_flight = {
            attempt: rest
            for attempt, parts in ranges.items()
            if (rest := IndexSet.from_ranges(parts) - final)
        }
        running = IndexSet.from_ranges(r for rest in in_flight.values() for r in rest.ranges)
    state = CoreState(
        succeeded=ledger.succeeded,
        failed=ledger.failed,
        retry=ledger.retry,
        in_flight=in_flight,
        retired=draft.retired,
        kept=draft.kept,
        next_shard=draft.next_shard,
        attempts=ledger.attempts,
        speculative_copies=draft.copies,
        rebalances=draft.rebalances,
        nodes=draft.nodes,
        durations=draft.durations,
        gpu_fallback_until=draft.gpu_fallback_until,
        wasted_seconds=draft.wasted,
        failure_summary=draft.failure_summary,
        succeeded_after_retry=ledger.succeeded_after_retry,
        resources=draft.resources,
        not_run=draft.not_run,
        start_time=draft.start_time,
        completion_time=draft.completion_time,
        phase=phase,
        message=draft.message,
        conditions=conds,
        derived=ledger,
    )
    status = state.to_status()
    queued = ledger.queued
    status.update(
        total=total,
        succeeded=len(ledger.succeeded),
        failed=len(ledger.failed),
        running=len(running),
        queued=len(queued),
        shardsInFlight=len(draft.live),
    )
    draft.deltas.succeeded = counts.succeeded
    draft.deltas.failed = counts.failed
    draft.deltas.retried = counts.retried
    draft.deltas.attempts = counts.attempts
    draft.deltas.succeeded_after_retry = counts.succeeded_after_retry
    future = [t for t in draft.wakeups if t > now]
    return Decision(
        creates=tuple(draft.creates),
        deletes=tuple(draft.deletes),
        suspends=tuple(draft.suspends),
        events=tuple(draft.events),
        state=state,
        status=status,
        deltas=draft.deltas,
        phase=phase,
        done=done,
        next_wakeup=None if done else (min(future) if future else None),
        in_flight={pool: sum(1 for s in draft.live.values() if s.pool == pool) for pool in Pool},
    )


def running_phase(draft: Draft) -> Phase:
    running = any(s.phase == ShardPhase.RUNNING for s in draft.live.values())
    started = running or len(draft.final()) > 0 or draft.previous_phase == Phase.RUNNING
    return Phase.RUNNING if started else Phase.PENDING


def trim_kept(draft: Draft) -> None:
    """Keep at most keepFailedShards failed Jobs for debugging, the newest ones."""
    limit = draft.spec.keep_failed_shards
    while len(draft.kept) > limit:
        oldest = draft.kept.first()
        assert oldest is not None
        draft.kept = draft.kept - IndexSet.from_range(oldest, oldest + 1)
        draft.deletes.append(DeleteShard(oldest, DeleteReason.RETIRED))
