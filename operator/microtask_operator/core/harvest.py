"""Harvesting finished shards: the winner of each group is read, the rest thrown away.

A shard's outcomes are merged into the ledger, its failures charged (see `charging`), its
pace recorded for its pool, and its node judged by what it did; then node levels are updated.
"""

from __future__ import annotations

from dataclasses import replace

from microtask_runner.indexset import IndexSet

from . import attribution, badnodes, charging, failures, speculation
from .draft import Draft
from .failures import describe_exit_code
from .observed import clean, group_of
from .state import PoolDurations
from .types import DeleteReason, Event, ObservedShard, Pool, Reason, ShardPhase


def harvest_finished(draft: Draft) -> None:
    """Harvest each group (a shard and its copies) whose race a finished member decides."""
    groups: dict[int, list[ObservedShard]] = {}
    for shard in draft.live.values():
        groups.setdefault(group_of(shard), []).append(shard)
    for members in groups.values():
        finished = [s for s in members if s.phase in (ShardPhase.SUCCEEDED, ShardPhase.FAILED)]
        if not finished:
            continue
        ran = [s for s in finished if s.phase == ShardPhase.SUCCEEDED]
        still_running = len(finished) < len(members)
        if still_running:
            # A member that failed microtasks on a node with failures of its own (a node
            # that fails everything fast, say) does not win the race while another member
            # still runs elsewhere: its failures say more about the node than the work.
            ran = [s for s in ran if clean(s) or not tainted(draft, s.node)]
        if not ran and still_running:
            # A member died (a straggler on a bad node, say) while a copy still runs: keep
            # what it finished, charge nothing; the copy decides the rest.
            for dead in finished:
                keep_successes(draft, dead)
            continue
        # The first member whose runner finished wins (or, if all died, the first to die);
        # the rest of the group is thrown away, not counted.
        winner = min(ran or finished, key=lambda s: (s.finished_at or draft.now, s.shard_id))
        for other in members:
            if other is not winner:
                draft.waste(other)
                draft.retire(other, DeleteReason.SPECULATION_LOSER)
        harvest(draft, winner)


def keep_successes(
    draft: Draft,
    shard: ObservedShard,
    reason: DeleteReason | Reason = DeleteReason.SPECULATION_LOSER,
) -> IndexSet:
    """Retire a shard that did not finish its run, keeping only what it reports as done."""
    report = shard.report
    ok = IndexSet.EMPTY
    if report is not None and not report.runner_error:
        ok = report.succeeded & draft.inside(shard)
        draft.succeed(ok, shard.attempt)
        judge_nodes(draft, shard, ok, IndexSet.EMPTY)
    draft.waste(shard)
    draft.retire(shard, reason)
    return ok


def harvest(draft: Draft, shard: ObservedShard) -> None:
    """Merge a finished shard's outcomes, charge its failures, and learn from its run."""
    draft.forget(shard.shard_id)
    report = shard.report
    inside = draft.inside(shard)
    verdict = attribution.attribute(shard, inside)
    ok = verdict.ok
    twice = retried_in_pod(draft, shard, inside)
    if twice:
        draft.succeed(ok & twice, shard.attempt + 1)
    draft.succeed(ok - twice if twice else ok, shard.attempt)
    message_before = draft.message
    retried = IndexSet.EMPTY
    suspects = IndexSet.EMPTY  # reported failures: the program's, or the node's?
    pod_died = False  # the node's at once
    # On a node known to fail work, reported failures cost no attempt and are the node's at
    # once (decided once: the charges and the node's record must agree).
    free = charging.spares(draft, shard)
    for charge in verdict.charges:
        again = charging.charge(draft, shard, charge, free=free, twice=twice)
        retried = retried | again
        if charge.from_runner:
            suspects = suspects | again
        else:
            pod_died = True
    all_charged = verdict.charged()
    draft.requeue_unfinished(shard, verdict.unreported)
    draft.ledger = draft.ledger.purge()
    # The pod time of microtasks that failed and run again was thrown away.
    outcomes = len(ok) + len(all_charged)
    draft.spend(shard, len(retried) / outcomes if outcomes else 0.0)
    error_text = verdict.error_text()

    failed = len(all_charged)
    pool = shard.pool
    d = draft.durations.get(pool, PoolDurations())
    # Speeds come from clean runs: a node that fails everything fast would make its pool
    # look fast, and every healthy shard there a straggler.
    # (A few transient failures in a long shard leave its pace a clean run's.)
    few = not pod_died and badnodes.incidental(len(all_charged), outcomes)
    # A node let back after an exclusion that fails a shard again is judged at once: waiting
    # for its microtasks to succeed elsewhere would let it fail shard after shard meanwhile.
    # (Its suspicions stay, so the attempts spent there can still be given back.)
    relapsed = (
        bool(suspects)
        and not (few or free)
        and badnodes.on_probation(draft.nodes.get(shard.node or ""))
    )
    measured = report is not None and report.count > 0 and (not all_charged or few)
    if measured and report is not None and speculation.outlier(d, report, draft.paces.of(shard)):
        measured = False  # a straggler: the baseline it is judged by would drift up
    draft.durations[pool] = PoolDurations(
        shards=d.shards + (1 if measured else 0),
        microtasks=d.microtasks + (report.count if report is not None and measured else 0),
        seconds=d.seconds + (report.seconds_total if report is not None and measured else 0.0),
        failed_shards=d.failed_shards
        + (1 if pod_died or relapsed or (free and suspects and not few) else 0),
        harvested=d.harvested + 1,
        startup_seconds=d.startup_seconds,
    )
    draft.deltas.shard_durations.append((pool, draft.run_time(shard)))
    if shard.node is not None:
        programs = judge_nodes(draft, shard, ok, all_charged)
        draft.nodes = badnodes.record_shard(
            draft.nodes,
            shard.node,
            failed=pod_died or relapsed,
            suspects=IndexSet.EMPTY if few else suspects - programs,
            now=draft.now,
            node_is_bad=free,
        )
    keep = False
    if failed:
        keep = draft.spec.keep_failed_shards > 0
        where = f" on node {shard.node}" if shard.node else ""
        detail = f": {error_text}" if error_text else ""
        draft.events.append(
            Event(
                "ShardFailed",
                f"shard {shard.shard_id}{where}: {failed} of {len(inside)} microtasks "
                f"failed (attempt {shard.attempt}){detail}",
                warning=True,
            )
        )
        if error_text and draft.message == message_before:
            # (Unless a plainer message was set: a command that cannot run.)
            draft.message = f"last failure: {error_text}"[:512]
    draft.retire(shard, DeleteReason.HARVESTED, keep=keep)


def retried_in_pod(draft: Draft, shard: ObservedShard, inside: IndexSet) -> IndexSet:
    """Microtasks of `inside` that the shard's pod ran twice (the runner's own retry).

    Their first, failed runs are attempts too: counted here, and summed up by exit code with
    the other failures. Their outcome is the second run's, charged like any other.
    """
    report = shard.report
    if report is None or report.runner_error or not report.retried:
        return IndexSet.EMPTY
    reported = report.reported() & inside
    twice = IndexSet.EMPTY
    for code, indexes in sorted(report.retried.items()):
        part = indexes & reported
        sample = part.first()
        if sample is None:
            continue
        twice = twice | part
        reason = describe_exit_code(code)
        draft.failure_summary = failures.record(
            draft.failure_summary,
            exit_code=code,
            reason=reason,
            attempts=len(part),
            microtasks=0,
            sample_index=sample,
            message=report.errors.get(code, ""),
        )
        draft.deltas.failures[reason] = draft.deltas.failures.get(reason, 0) + len(part)
    draft.ledger = draft.ledger.ran_again(len(twice))
    return twice


def judge_nodes(draft: Draft, shard: ObservedShard, ok: IndexSet, charged: IndexSet) -> IndexSet:
    """Settle suspicions against nodes with the shard's outcomes (see badnodes.judge).

    Returns the microtasks whose failure turned out to be the program's.
    """
    if shard.node is None:
        return IndexSet.EMPTY
    draft.nodes, confirmed, programs = badnodes.judge(
        draft.nodes,
        shard.node,
        succeeded=ok,
        failed=charged,
        now=draft.now,
        known_bad_after=1,
    )
    for name in confirmed:
        # A failed shard of that node's pool, counted now that it is known to be one.
        pool = pool_of(draft, name)
        if pool is not None:
            d = draft.durations.get(pool, PoolDurations())
            draft.durations[pool] = replace(d, failed_shards=d.failed_shards + 1)
    return programs


def pool_of(draft: Draft, node: str) -> Pool | None:
    for pool, names in draft.cluster.ready_nodes.items():
        if node in names:
            return pool
    return None


def tainted(draft: Draft, node: str | None) -> bool:
    """Has `node` failed work of its own (suspected, excluded, or on probation)?"""
    record = draft.nodes.get(node) if node is not None else None
    return record is not None and (record.failures > 0 or record.level is not None)


def update_nodes(draft: Draft) -> None:
    """Exclude nodes that keep failing work, and let exclusions that ran out lapse."""
    draft.nodes, changed = badnodes.update_levels(
        draft.nodes, draft.spec.bad_nodes, draft.cluster, draft.now, draft.durations
    )
    for name, level in changed:
        record = draft.nodes[name]
        seconds = badnodes.exclusion_seconds(draft.spec.bad_nodes, record.exclusions)
        again = f", exclusion {record.exclusions} in this job" if record.exclusions > 1 else ""
        draft.rebalanced(
            Reason.BAD_NODE,
            f"node {name} failed {record.failures} shards; avoided ({level}) "
            f"for {seconds:.0f}s{again}",
        )
    for record in draft.nodes.values():
        if record.until is not None:
            draft.wakeups.append(record.until)
