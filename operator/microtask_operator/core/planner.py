"""The core's one entry point: `plan(spec, state, observed, cluster, now) -> Decision`.

Every body (operator, local executor, simulator) calls it whenever something changed and at
`Decision.next_wakeup`. It harvests finished shards, moves work away from trouble, launches new
shards within the window, and says what the status is. It is deterministic and free of I/O.
A body that cannot make shards for now (`launch=False`) still has finished work harvested.

`status.attempts` counts the runs of microtasks that happened: a launch counts its microtasks,
and when its shard ends without running some of them (lost, cancelled before its pod started,
left out of its report) those are taken out again.

Bodies apply the actions in this order: creates, then the status write, then deletes and suspends.
A harvest is thereby recorded (shard id in `retired`, outcomes merged) before its Job goes
away, and a shard created just before a crash is observed afterwards and recognised, never
duplicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from microtask_runner.indexset import IndexSet

from . import (
    attribution,
    badnodes,
    conditions,
    failures,
    lost,
    placement,
    resources,
    retries,
    shardsize,
    speculation,
)
from .attribution import Charge
from .conditions import Condition
from .ledger import Ledger
from .observed import bucket
from .resources import ResourceSeconds
from .state import CoreState, PoolDurations, RetryBatch
from .types import (
    Accelerator,
    Action,
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteShard,
    Event,
    ObservedShard,
    Pool,
    Reason,
    ShardPhase,
    ShardPlan,
    SuspendShard,
)

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"

# At the tail, with idle window slots, a shard this many times slower than usual gets a copy.
TAIL_SLOWDOWN_FACTOR = 1.5
# ...and copies that straggle too may get more there (a slow node is not that rare, and a
# group whose every member straggles would otherwise hold the job's end).
TAIL_COPIES_PER_SHARD = 3
# A GPU shard whose turn seemed near keeps waiting past fallbackAfterSeconds, up to this many
# times that: estimates can be wrong, the fallback stays the safety net.
FALLBACK_PATIENCE = 2
# Pending reasons that mean "waiting in a queue on purpose": never a reason to fall back.
QUEUED_REASONS = frozenset({"Queued", "Suspended"})
# A refusal quoted in the status message and the event is cut to this many characters.
MAX_REFUSAL_CHARS = 1000


@dataclass
class Deltas:
    """What happened in one plan() call, for metrics and summaries."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    attempts: int = 0
    rebalances: dict[Reason, int] = field(default_factory=dict)
    shard_durations: list[tuple[Pool, float]] = field(default_factory=list)
    wasted_seconds: float = 0.0
    speculative_copies: int = 0
    succeeded_after_retry: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts by kind (its words)
    resources: ResourceSeconds = field(default_factory=ResourceSeconds)  # pod time spent


@dataclass
class Decision:
    actions: list[Action]
    state: CoreState
    status: dict[str, Any]
    deltas: Deltas
    phase: str
    done: bool
    next_wakeup: float | None
    in_flight: dict[Pool, int] = field(default_factory=dict)  # shards in flight per pool


def group_of(shard: ObservedShard) -> int:
    """Speculative copies and their original form one group; one member's result counts."""
    return shard.copy_of if shard.copy_of is not None else shard.shard_id


def clean(shard: ObservedShard) -> bool:
    """Did the shard's runner report every one of its microtasks as succeeded?"""
    report = shard.report
    return (
        report is not None and not report.runner_error and shard.indexes.issubset(report.succeeded)
    )


def startup_seconds(shards: Sequence[ObservedShard], now: float) -> float | None:
    """How long the shards' pods took to start their first microtask (the median), if seen.

    A running pod whose progress shows a finished microtask started its first one
    `progress.seconds` ago; a finished pod's runner spent `seconds_total` of its run on
    microtasks. The rest of the pod's time is start-up (image pull, container start, the
    runner's own). Pods on lost nodes stopped keeping time: left out.
    """
    samples = []
    for shard in shards:
        if shard.started_at is None or shard.node_lost_since is not None:
            continue
        progress, report = shard.progress, shard.report
        if shard.finished_at is None and progress is not None and progress.done >= 1:
            samples.append(now - shard.started_at - progress.seconds)
        elif shard.finished_at is not None and report is not None and report.count > 0:
            samples.append(shard.finished_at - shard.started_at - report.seconds_total)
    if not samples:
        return None
    samples.sort()
    return max(0.0, samples[len(samples) // 2])


def _microtasks(count: int) -> str:
    return f"{count} microtask" if count == 1 else f"{count} microtasks"


class _Planner:
    """One decision in the making: mutable scratch space; `plan()` is the pure wrapper."""

    def __init__(
        self,
        spec: CoreSpec,
        state: CoreState,
        observed: Sequence[ObservedShard],
        cluster: ClusterView,
        now: float,
        *,
        launch: bool = True,
    ) -> None:
        self.spec = spec
        self.cluster = cluster
        self.now = now
        self.may_launch = launch
        self.actions: list[Action] = []
        self.deltas = Deltas()
        self.wakeups: list[float] = []
        # Outcomes, the retry queue and attempts, with the sets derived from them.
        self.ledger = Ledger.from_state(state)
        self.retired = state.retired
        self.kept = state.kept
        self.copies = state.speculative_copies
        self.rebalances = dict(state.rebalances)
        self.nodes = dict(state.nodes)
        self.durations = dict(state.durations)
        self.gpu_fallback_until = state.gpu_fallback_until
        self.wasted = state.wasted_seconds
        self.failure_summary = state.failure_summary
        self.resources = state.resources
        self.not_run = state.not_run
        self.universe = spec.indexes()
        self.start_time = state.start_time
        self.completion_time = state.completion_time
        self.previous_phase = state.phase
        self.message = state.message
        self.conditions = state.conditions
        self.events: list[Event] = []
        seen = bucket(observed, state)
        self.startup = startup_seconds(seen.live, now)
        self.paces = speculation.NodePaces(seen.live)
        # Observed shards already harvested or abandoned only need their Jobs gone.
        self.actions.extend(DeleteShard(s.shard_id, "retired") for s in seen.gone)
        self.live: dict[int, ObservedShard] = {s.shard_id: s for s in seen.live}
        self._in_flight: IndexSet | None = None
        self._busy_until: float | None = None  # computed once, when placement first needs it
        # Microtasks of shards counted when seen, not at their launch (see fall_back).
        self.sighted = IndexSet.EMPTY
        for shard in seen.unrecorded:
            # Launched just before a restart lost the status write: count its attempts now.
            # (If it relaunched work of a shard still seen, that shard's share of the work
            # it never ran is taken out when it is dealt with, as it was the first time.)
            self.ledger = self.ledger.recount(len(shard.indexes))
            self.sighted = self.sighted | shard.indexes
        self.next_shard = max([state.next_shard, *(s.shard_id + 1 for s in observed)])
        # A retry batch that is in flight was launched before a restart lost the status write.
        self.ledger = self.ledger.unqueue(self.in_flight())
        # Queued or launched since: only these can be both queued and in flight later on.
        self.touched = IndexSet.EMPTY
        self.recover_vanished(state)

    def recover_vanished(self, state: CoreState) -> None:
        """Work in flight last time whose Job is gone unseen goes back at its attempt level."""
        # Seen: in flight, final, queued (before this), or gone in an earlier attempt's Job.
        # (Small sets minus large ones: each costs the small one's ranges.)
        accounted = self.ledger.covered
        earlier = IndexSet.EMPTY
        for attempt, indexes in sorted(state.in_flight.items()):
            gone = indexes - self.in_flight() - accounted - earlier
            if not gone:
                continue
            if attempt > 1:
                self.ledger = self.ledger.queue(attempt - 1, self.now, gone)
                self.touched = self.touched | gone
            # attempt 1: nothing to keep, they are fresh work again.
            self.ledger = self.ledger.recount(-len(gone))
            self.events.append(
                Event(
                    "ShardVanished",
                    f"{len(gone)} microtasks ({gone.format_bounded(80)}) were in a Job that is "
                    "gone; relaunched without spending an attempt",
                    warning=True,
                )
            )
            self.rebalanced(
                lost.rebalance_reason(lost.JOB_VANISHED),
                f"a Job of attempt {attempt} is gone unseen ({lost.JOB_VANISHED}); "
                f"{_microtasks(len(gone))} relaunched",
            )
            earlier = earlier | gone

    # -- helpers ---------------------------------------------------------------------------

    def in_flight(self) -> IndexSet:
        # One merge of all ranges (folding `|` is quadratic), then kept up to date as shards
        # come and go.
        if self._in_flight is None:
            self._in_flight = IndexSet.from_ranges(
                r for s in self.live.values() for r in s.indexes.ranges
            )
        return self._in_flight

    def forget(self, shard_id: int) -> None:
        """The shard is no longer live (harvested, abandoned or moved)."""
        shard = self.live.pop(shard_id, None)
        if shard is None or self._in_flight is None or not shard.indexes:
            return
        # What another live shard runs too (its copy, say) stays in flight. Comparing spans
        # first keeps this O(window), not O(window x ranges).
        lo, hi = shard.indexes.first(), shard.indexes.last()
        assert lo is not None and hi is not None
        shared = IndexSet.EMPTY
        for other in self.live.values():
            first, last = other.indexes.first(), other.indexes.last()
            if first is not None and last is not None and first <= hi and lo <= last:
                shared = shared | (other.indexes & shard.indexes)
        self._in_flight = self._in_flight - (shard.indexes - shared)

    def final(self) -> IndexSet:
        return self.ledger.final

    def retire(self, shard: ObservedShard, reason: str, *, keep: bool = False) -> None:
        self.retired = self.retired | IndexSet.from_range(shard.shard_id, shard.shard_id + 1)
        self.forget(shard.shard_id)
        if keep:
            self.kept = self.kept | IndexSet.from_range(shard.shard_id, shard.shard_id + 1)
        else:
            self.actions.append(DeleteShard(shard.shard_id, reason))

    def run_time(self, shard: ObservedShard) -> float:
        if shard.started_at is None:
            return 0.0
        end = shard.finished_at if shard.finished_at is not None else self.now
        return max(0.0, end - shard.started_at)

    def inside(self, shard: ObservedShard) -> IndexSet:
        """The shard's microtasks that belong to the job (reports about others are ignored)."""
        if self.spec.universe is None:
            return shard.indexes
        return shard.indexes & self.spec.universe

    def spend(self, shard: ObservedShard, wasted_share: float) -> None:
        """Count the shard's pod time (once, when it is harvested or given up)."""
        used = resources.spent(self.spec, shard.pool, self.run_time(shard), wasted_share)
        self.resources = self.resources + used
        self.deltas.resources = self.deltas.resources + used

    def waste(self, shard: ObservedShard) -> None:
        """The shard's whole run was thrown away (a losing copy, lost or cancelled)."""
        seconds = self.run_time(shard)
        self.wasted += seconds
        self.deltas.wasted_seconds += seconds
        self.spend(shard, 1.0)

    def succeed(self, ok: IndexSet, attempt: int) -> None:
        """Microtasks reported done; a late success (speculative copy) beats a failure."""
        self.ledger = self.ledger.succeed(ok, attempt)

    def rebalanced(self, reason: Reason, message: str) -> None:
        self.rebalances[reason.value] = self.rebalances.get(reason.value, 0) + 1
        self.deltas.rebalances[reason] = self.deltas.rebalances.get(reason, 0) + 1
        self.events.append(Event("Rebalanced", f"{reason.value}: {message}"))

    def requeue_unfinished(
        self, shard: ObservedShard, indexes: IndexSet, *, ran: IndexSet = IndexSet.EMPTY
    ) -> IndexSet:
        """Give work back without spending an attempt (it was not the microtasks' fault).

        `ran`: those that did run (the one the pod ran when it was taken away): they stay counted
        in `attempts`, and their relaunch counts once more. Returns the microtasks given back.
        """
        if shard.copy_of is None:
            # The others never ran: their launch is not an attempt (the relaunch will be). This
            # holds even if a relaunch already runs them, or finished them (a decision whose
            # status write was lost): that one was counted when it was seen.
            self.uncount(indexes - ran)
        unfinished = indexes - self.final()
        # Work another live shard already runs stays there. Callers forget `shard` first, so
        # in_flight() holds only the others.
        back = unfinished - self.in_flight()
        spent = shard.attempt - 1
        if spent > 0 and back:
            self.ledger = self.ledger.queue(spent, self.now, back)
            self.touched = self.touched | back
        # spent == 0: nothing to store, fresh work is everything not accounted for.
        return unfinished

    def uncount(self, never_ran: IndexSet) -> None:
        """Launched microtasks that did not run are no attempts after all."""
        self.ledger = self.ledger.launched(-len(never_ran))

    def charge(self, shard: ObservedShard, charge: Charge) -> IndexSet:
        """Microtasks that failed an attempt: retry after backoff, or fail for good.

        Returns those queued for a retry.
        """
        indexes = charge.indexes - self.final()
        if not indexes:
            return IndexSet.EMPTY
        policy = self.spec.retry
        spent = shard.attempt
        if charge.from_runner and shard.attempt > 1 and self.judged_bad(shard.node):
            # The node is known to fail what succeeds elsewhere: the attempt is given back, so
            # a microtask that kept landing there does not fail the job.
            spent -= 1
        permanent = retries.is_permanent(policy, charge.code, spent, from_runner=charge.from_runner)
        spared = IndexSet.EMPTY
        if permanent and charge.from_runner and spent > 1:
            # An earlier attempt was spent on a node now known to fail what succeeds elsewhere
            # (one on probation after an exclusion, say): that attempt is given back, so bad
            # luck here after a bad node there does not fail the job.
            spared = indexes & self.suspected_on_bad_nodes(shard.node)
            if spared and retries.is_permanent(
                policy, charge.code, spent - 1, from_runner=charge.from_runner
            ):
                spared = IndexSet.EMPTY
        if spared:
            delay = retries.backoff_seconds(policy, spent - 1)
            self.ledger = self.ledger.retry_later(spent - 1, self.now + delay, spared)
            self.touched = self.touched | spared
        if permanent:
            self.ledger = self.ledger.fail(indexes - spared)
            # Failed wherever they ran: no node is to blame for them.
            self.nodes = badnodes.acquit(self.nodes, indexes - spared)
        else:
            delay = retries.backoff_seconds(policy, spent)
            self.ledger = self.ledger.retry_later(spent, self.now + delay, indexes)
            self.touched = self.touched | indexes
        sample = charge.indexes.first()
        assert sample is not None
        self.failure_summary = failures.record(
            self.failure_summary,
            exit_code=charge.exit_code,
            reason=charge.reason,
            attempts=len(indexes),
            microtasks=len(indexes - spared) if permanent else 0,
            sample_index=sample,
            message=charge.message,
        )
        self.deltas.failures[charge.reason] = self.deltas.failures.get(charge.reason, 0) + len(
            indexes
        )
        if charge.from_runner and retries.is_command_not_found(policy, charge.code):
            self.command_not_found(shard, charge, indexes, sample)
        return spared if permanent else indexes

    def suspected_on_bad_nodes(self, besides: str | None) -> IndexSet:
        """Microtasks whose failure awaits judgement on a node known to fail work (not `besides`).

        Known: excluded now, or with at least `hardAfterFailures` failures of its own (a node
        on probation after an exclusion keeps its suspicions, not its level).
        """
        policy = self.spec.bad_nodes
        if not policy.enabled:
            return IndexSet.EMPTY
        return IndexSet.from_ranges(
            r
            for name, record in self.nodes.items()
            if name != besides
            and record.suspect
            and (record.level is not None or record.failures >= policy.hard_after_failures)
            for r in record.suspect.ranges
        )

    def tainted(self, node: str | None) -> bool:
        """Has `node` failed work of its own (suspected, excluded, or on probation)?"""
        record = self.nodes.get(node) if node is not None else None
        return record is not None and (record.failures > 0 or record.level is not None)

    def judged_bad(self, node: str | None) -> bool:
        """Is `node` excluded (softly or hard) as failing what succeeds elsewhere?"""
        if node is None or not self.spec.bad_nodes.enabled:
            return False
        record = self.nodes.get(node)
        return record is not None and record.level is not None

    def command_not_found(
        self, shard: ObservedShard, charge: Charge, indexes: IndexSet, sample: int
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
        self.events.append(
            Event(
                "CommandNotFound",
                f"shard {shard.shard_id}{where}: {failures.describe(here)}",
                warning=True,
            )
        )
        # The status message counts every microtask of the kind so far.
        whole = next((e for e in self.failure_summary if e.key == here.key), here)
        self.message = failures.describe(whole)

    # -- steps -----------------------------------------------------------------------------

    def harvest_finished(self) -> None:
        groups: dict[int, list[ObservedShard]] = {}
        for shard in self.live.values():
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
                ran = [s for s in ran if clean(s) or not self.tainted(s.node)]
            if not ran and still_running:
                # A member died (a straggler on a bad node, say) while a copy still runs: keep
                # what it finished, charge nothing; the copy decides the rest.
                for dead in finished:
                    self.keep_successes(dead)
                continue
            # The first member whose runner finished wins (or, if all died, the first to die);
            # the rest of the group is thrown away, not counted.
            winner = min(ran or finished, key=lambda s: (s.finished_at or self.now, s.shard_id))
            for other in members:
                if other is not winner:
                    self.waste(other)
                    self.retire(other, "speculation_loser")
            self.harvest(winner)

    def keep_successes(self, shard: ObservedShard, reason: str = "speculation_loser") -> IndexSet:
        """Retire a shard that did not finish its run, keeping only what it reports as done."""
        report = shard.report
        ok = IndexSet.EMPTY
        if report is not None and not report.runner_error:
            ok = report.succeeded & self.inside(shard)
            self.succeed(ok, shard.attempt)
            self.judge_nodes(shard, ok, IndexSet.EMPTY)
        self.waste(shard)
        self.retire(shard, reason)
        return ok

    def judge_nodes(self, shard: ObservedShard, ok: IndexSet, charged: IndexSet) -> IndexSet:
        """Settle suspicions against nodes with the shard's outcomes (see badnodes.judge).

        Returns the microtasks whose failure turned out to be the program's.
        """
        if shard.node is None:
            return IndexSet.EMPTY
        self.nodes, confirmed, programs = badnodes.judge(
            self.nodes,
            shard.node,
            succeeded=ok,
            failed=charged,
            now=self.now,
            known_bad_after=1,
        )
        for name in confirmed:
            # A failed shard of that node's pool, counted now that it is known to be one.
            pool = self.pool_of(name)
            if pool is not None:
                d = self.durations.get(pool, PoolDurations())
                self.durations[pool] = replace(d, failed_shards=d.failed_shards + 1)
        return programs

    def pool_of(self, node: str) -> Pool | None:
        for pool, names in self.cluster.ready_nodes.items():
            if node in names:
                return pool
        return None

    def harvest(self, shard: ObservedShard) -> None:
        self.forget(shard.shard_id)
        report = shard.report
        inside = self.inside(shard)
        verdict = attribution.attribute(shard, inside)
        ok = verdict.ok
        self.succeed(ok, shard.attempt)
        message_before = self.message
        retried = IndexSet.EMPTY
        suspects = IndexSet.EMPTY  # reported failures: the program's, or the node's?
        pod_died = False  # the node's at once
        for charge in verdict.charges:
            again = self.charge(shard, charge)
            retried = retried | again
            if charge.from_runner:
                suspects = suspects | again
            else:
                pod_died = True
        all_charged = verdict.charged()
        self.requeue_unfinished(shard, verdict.unreported)
        self.ledger = self.ledger.purge()
        # The pod time of microtasks that failed and run again was thrown away.
        outcomes = len(ok) + len(all_charged)
        self.spend(shard, len(retried) / outcomes if outcomes else 0.0)
        error_text = verdict.error_text()

        failed = len(all_charged)
        pool = shard.pool
        d = self.durations.get(pool, PoolDurations())
        # Speeds come from clean runs: a node that fails everything fast would make its pool
        # look fast, and every healthy shard there a straggler.
        # (A few transient failures in a long shard leave its pace a clean run's.)
        few = not pod_died and badnodes.incidental(len(all_charged), outcomes)
        measured = report is not None and report.count > 0 and (not all_charged or few)
        if measured and report is not None and speculation.outlier(d, report, self.paces.of(shard)):
            measured = False  # a straggler: the baseline it is judged by would drift up
        self.durations[pool] = PoolDurations(
            shards=d.shards + (1 if measured else 0),
            microtasks=d.microtasks + (report.count if report is not None and measured else 0),
            seconds=d.seconds + (report.seconds_total if report is not None and measured else 0.0),
            failed_shards=d.failed_shards + (1 if pod_died else 0),
            harvested=d.harvested + 1,
        )
        self.deltas.shard_durations.append((pool, self.run_time(shard)))
        if shard.node is not None:
            programs = self.judge_nodes(shard, ok, all_charged)
            self.nodes = badnodes.record_shard(
                self.nodes,
                shard.node,
                failed=pod_died,
                suspects=IndexSet.EMPTY if few else suspects - programs,
                now=self.now,
            )
        keep = False
        if failed:
            keep = self.spec.keep_failed_shards > 0
            where = f" on node {shard.node}" if shard.node else ""
            detail = f": {error_text}" if error_text else ""
            self.events.append(
                Event(
                    "ShardFailed",
                    f"shard {shard.shard_id}{where}: {failed} of {len(inside)} microtasks "
                    f"failed (attempt {shard.attempt}){detail}",
                    warning=True,
                )
            )
            if error_text and self.message == message_before:
                # (Unless a plainer message was set: a command that cannot run.)
                self.message = f"last failure: {error_text}"[:512]
        self.retire(shard, "harvested", keep=keep)

    def recover_lost(self) -> None:
        grace = self.spec.node_lost_grace_seconds
        for shard in list(self.live.values()):
            cause = shard.failure_reason if shard.phase == ShardPhase.LOST else None
            if shard.phase != ShardPhase.LOST:
                if shard.node_lost_since is None:
                    continue
                deadline = shard.node_lost_since + grace
                if self.now < deadline:
                    self.wakeups.append(deadline)
                    continue
                cause = lost.NODE_NOT_READY
            reason = lost.rebalance_reason(cause)
            siblings = [
                s for s in self.live.values() if s is not shard and group_of(s) == group_of(shard)
            ]
            ran = attribution.interrupted(shard, self.inside(shard))
            ok = self.keep_successes(shard, reason.value)
            if siblings:
                continue  # a copy runs on and decides the rest
            # The work goes back without spending an attempt: the infrastructure took it away,
            # the work did not fail.
            back = self.requeue_unfinished(shard, shard.indexes - ok, ran=ran)
            if cause == lost.SUSPENDED and self.spec.suspend:
                continue  # the user's own suspension moves nothing away from trouble
            what = lost.describe(reason, shard.shard_id, shard.node, cause)
            self.rebalanced(reason, f"{what}; {_microtasks(len(back))} relaunched")

    def fall_back(self) -> None:
        if self.spec.accelerator != Accelerator.AUTO:
            return
        loads: dict[Pool, placement.PoolLoad] | None = None
        queue = sorted(
            (
                s
                for s in self.live.values()
                if s.pool == Pool.GPU and s.phase == ShardPhase.PENDING and not s.suspended
            ),
            key=lambda s: (s.pending_since or s.created_at, s.shard_id),
        )
        position = {s.shard_id: i for i, s in enumerate(queue)}
        for shard in list(self.live.values()):
            if shard.pool != Pool.GPU or shard.phase != ShardPhase.PENDING:
                continue
            if shard.suspended or (shard.pending_reason in QUEUED_REASONS):
                continue
            since = shard.pending_since if shard.pending_since is not None else shard.created_at
            deadline = since + self.spec.fallback_after_seconds
            if self.now < deadline:
                self.wakeups.append(deadline)
                continue
            if not self.may_launch:
                continue  # it waits where it is until shards can be made again
            if loads is None:
                loads = self.pool_loads()
            overdue = self.now >= since + FALLBACK_PATIENCE * self.spec.fallback_after_seconds
            if not overdue and not placement.worth_moving(
                loads[Pool.GPU], loads[Pool.CPU], len(shard.indexes), position[shard.shard_id]
            ):
                # Its turn on a GPU comes sooner than a CPU would finish it: look again when
                # the next GPU frees up.
                run = loads[Pool.GPU].shard_seconds(len(shard.indexes)) or 0.0
                self.wakeups.append(self.now + max(1.0, run / loads[Pool.GPU].slots()))
                continue
            self.gpu_fallback_until = self.now + self.spec.fallback_cooldown_seconds
            self.waste(shard)  # (nothing, unless it ran before it went back to pending)
            self.retire(shard, "fallback")
            rest = shard.indexes - self.final() - self.in_flight()
            if shard.copy_of is None:
                # A move keeps the attempt the shard's launch counted. What a decision whose
                # status write was lost already moved was counted when seen: not twice.
                self.uncount((shard.indexes - rest) & self.sighted)
            if not rest:
                # A copy whose original still runs, or work already moved by a decision whose
                # status write was lost: the pending shard just goes away.
                continue
            hard, soft = badnodes.avoid_lists(self.nodes, Pool.CPU, self.cluster)
            moved = ShardPlan(
                shard_id=self.new_shard_id(),
                indexes=rest,
                attempt=shard.attempt,
                pool=Pool.CPU,
                avoid_nodes_hard=hard,
                avoid_nodes_soft=soft,
            )
            if moved.indexes:
                self.launch(moved, count_attempts=False)
            self.rebalanced(
                Reason.UNSCHEDULABLE_FALLBACK,
                f"shard {shard.shard_id} waited {self.now - since:.0f}s on the GPU pool "
                f"({shard.pending_reason or 'pending'}); moved to CPU as shard {moved.shard_id}",
            )

    def unpin(self) -> None:
        """Relaunch work whose waiting pods may use none of the nodes left in their pool.

        A retry kept off the nodes where it failed can be left with a single node to run on;
        when that node goes, its pod would wait forever, and so would copies kept off the
        nodes their original used. A group (a shard and its copies) all of whose members wait
        like that goes back out as one shard with today's lists, at the attempt its launch
        counted.
        """
        if not self.may_launch:
            return  # they wait where they are until shards can be made again
        groups: dict[int, list[ObservedShard]] = {}
        for shard in self.live.values():
            groups.setdefault(group_of(shard), []).append(shard)
        for key, members in groups.items():
            if not all(self.pinned_out(s) for s in members):
                continue
            first = min(members, key=lambda s: s.shard_id)
            indexes = IndexSet.from_ranges(r for s in members for r in s.indexes.ranges)
            avoid = badnodes.avoid_lists_for_retry(self.nodes, indexes, first.pool, self.cluster)
            if self.cluster.ready_nodes[first.pool] <= set(avoid[0]):
                continue  # today's lists would keep it off every node too
            for shard in members:
                self.retire(shard, "unpinned")
            rest = indexes - self.final() - self.in_flight()
            if any(s.copy_of is None for s in members):
                self.uncount((indexes - rest) & self.sighted)
            if not rest:
                continue
            moved = ShardPlan(self.new_shard_id(), rest, first.attempt, first.pool, None, *avoid)
            self.launch(moved, count_attempts=False)
            self.rebalanced(
                Reason.NODE_LOST,
                f"shard {key} may run on none of the nodes left in the {first.pool.value} "
                f"pool; relaunched as shard {moved.shard_id}",
            )

    def pinned_out(self, shard: ObservedShard) -> bool:
        """Waiting for a node, and kept off every ready node of its pool."""
        if shard.phase != ShardPhase.PENDING or shard.suspended or not shard.avoid_nodes_hard:
            return False
        if shard.pool == Pool.GPU and self.spec.accelerator == Accelerator.AUTO:
            return False  # the fallback to CPU takes it (fall_back)
        ready = self.cluster.ready_nodes.get(shard.pool)
        # (A pool with no node ready at all: a new shard would wait there too.)
        return ready is not None and bool(ready) and ready <= set(shard.avoid_nodes_hard)

    def new_shard_id(self) -> int:
        shard_id = self.next_shard
        self.next_shard += 1
        return shard_id

    def launch(self, plan: ShardPlan, *, count_attempts: bool = True) -> None:
        self.actions.append(CreateShard(plan))
        if count_attempts:
            self.ledger = self.ledger.launched(len(plan.indexes))
        self.live[plan.shard_id] = plan.as_pending(self.now)
        self.touched = self.touched | plan.indexes
        if self._in_flight is not None:
            self._in_flight = self._in_flight | plan.indexes

    def pool_loads(self) -> dict[Pool, placement.PoolLoad]:
        """Each pool as placement sees it now (see core/placement.py)."""
        live = dict.fromkeys(Pool, 0)
        waiting = dict.fromkeys(Pool, 0)
        for shard in self.live.values():
            live[shard.pool] += 1
            if shard.phase == ShardPhase.PENDING and shard.pending_reason == "Unschedulable":
                waiting[shard.pool] += 1
        loads = {}
        for pool in Pool:
            measured = self.durations.get(pool)
            excluded = frozenset(badnodes.avoid_lists(self.nodes, pool, self.cluster)[0])
            loads[pool] = placement.PoolLoad(
                pool=pool,
                capacity=self.cluster.capacity(pool, excluded),
                live=live[pool],
                waiting=waiting[pool],
                per_microtask=measured.per_microtask() if measured is not None else None,
                startup=self.startup or 0.0,
            )
        return loads

    def pool_for_new_work(
        self, loads: dict[Pool, placement.PoolLoad] | None = None, size: int | None = None
    ) -> Pool:
        if self.spec.accelerator == Accelerator.GPU:
            return Pool.GPU
        if self.spec.accelerator == Accelerator.CPU:
            return Pool.CPU
        if self.cluster.capacity(Pool.GPU) is None:
            # The GPU pool's capacity is unknown: after a fallback, trust that it is full for a
            # while rather than queue there again and wait out fallbackAfterSeconds once more.
            if self.gpu_fallback_until is not None and self.now < self.gpu_fallback_until:
                self.wakeups.append(self.gpu_fallback_until)
                return Pool.CPU
            if self.gpu_fallback_until is not None and self.waiting_for_capacity(Pool.GPU):
                return Pool.CPU
        if loads is None:
            loads = self.pool_loads()
        remaining = self.spec.total - len(self.final())
        return placement.choose(
            [loads[Pool.GPU], loads[Pool.CPU]],
            size or self.spec.microtasks_per_shard,
            max(0, remaining),
            busy_until=self.busy_until(),
        )

    def busy_until(self) -> float:
        """Seconds until the shards running now are expected to end (0 when none is measured)."""
        if self._busy_until is None:
            latest = self.now
            for shard in self.live.values():
                measured = self.durations.get(shard.pool)
                per = measured.per_microtask() if measured is not None else None
                if shard.started_at is None or per is None:
                    continue
                latest = max(latest, shard.started_at + per * len(shard.indexes))
            self._busy_until = latest - self.now
        return self._busy_until

    def place(self, loads: dict[Pool, placement.PoolLoad], size: int) -> Pool:
        """The pool for one more new shard; `loads` then counts it there."""
        pool = self.pool_for_new_work(loads, size)
        load = loads[pool]
        loads[pool] = replace(load, live=load.live + 1)
        return pool

    def fill_window(self) -> None:
        # A copy still waiting for a node holds a slot back, so it is the next pod to get one.
        waiting_copies = sum(
            1 for s in self.live.values() if s.copy_of is not None and s.phase == ShardPhase.PENDING
        )
        free = self.spec.parallelism - self.groups_in_flight() - waiting_copies
        if free <= 0:
            return
        # Never queue for launch what a live shard already runs.
        # Queued and in flight shared nothing after __init__: only what was queued or launched
        # since can be both, and looking at that alone spares a pass over the whole window.
        self.ledger = self.ledger.unqueue(self.touched & self.in_flight())
        loads = self.pool_loads()
        room = self.room(loads)
        if room is not None:
            # Every usable pool's capacity is known: work launched beyond its free slots would
            # only be parked in a queue (and moved to the slow pool, GPU-sized, if it waits
            # too long); left unplaced, it goes where a slot frees up, sized for that pool.
            free = min(free, room)
            if free <= 0:
                return
        unplaced = max(0, self.spec.total - len(self.final()) - len(self.in_flight()))
        size = min(self.size_for(loads, pool, unplaced) for pool in self.usable_pools())
        ready, self.ledger = self.ledger.take_ready(self.now, size, free)
        for batch in self.ledger.retry:
            if batch.not_before > self.now:
                self.wakeups.append(batch.not_before)
        for spent, indexes in ready:
            pool = self.place(loads, len(indexes))
            avoid = badnodes.avoid_lists(self.nodes, pool, self.cluster)
            if self.spec.bad_nodes.enabled:
                avoid = badnodes.avoid_lists_for_retry(self.nodes, indexes, pool, self.cluster)
            self.launch(ShardPlan(self.new_shard_id(), indexes, spent + 1, pool, None, *avoid))
        free -= len(ready)
        if free <= 0:
            return
        largest = self.spec.microtasks_per_shard
        # The next fresh microtasks, found past the work accounted for: never the whole rest.
        fresh = self.ledger.first_fresh(self.universe, self.in_flight(), free * largest)
        avoid_by_pool = {
            pool: badnodes.avoid_lists(self.nodes, pool, self.cluster) for pool in Pool
        }
        while fresh and free > 0:
            pool = self.place(loads, size)
            chunk, fresh = fresh.take(self.size_for(loads, pool, unplaced))
            unplaced -= len(chunk)
            hard, soft = avoid_by_pool[pool]
            self.launch(ShardPlan(self.new_shard_id(), chunk, 1, pool, None, hard, soft))
            free -= 1

    def room(self, loads: dict[Pool, placement.PoolLoad]) -> int | None:
        """Free slots in the usable pools, None when a pool's capacity is unknown.

        (Unknown capacity is learned from pods that wait: there, launching past it is how the
        core finds out, and what makes a slot that frees up busy again before the next call.)
        """
        pools = self.usable_pools()
        if any(loads[pool].capacity is None for pool in pools):
            return None
        return sum(loads[pool].free() for pool in pools)

    def usable_pools(self) -> tuple[Pool, ...]:
        if self.spec.accelerator == Accelerator.AUTO:
            return (Pool.GPU, Pool.CPU)
        return (Pool.GPU,) if self.spec.accelerator == Accelerator.GPU else (Pool.CPU,)

    def size_for(self, loads: dict[Pool, placement.PoolLoad], pool: Pool, unplaced: int) -> int:
        """Microtasks in a new shard on `pool` (see core/shardsize.py)."""
        target = self.spec.target_shard_seconds
        if target is None:
            return self.spec.microtasks_per_shard
        return shardsize.shard_size(
            per_microtask=loads[pool].per_microtask,
            target_seconds=target,
            unplaced=unplaced,
            rate=sum(loads[p].rate() for p in self.usable_pools()),
            total=self.spec.total,
            parallelism=self.spec.parallelism,
            largest=self.spec.microtasks_per_shard,
            startup_seconds=self.startup,
            slowest=self.paces.slowest(pool),
        )

    def fresh(self) -> IndexSet:
        """Microtasks not launched yet (or given back unrun): first attempts to come.

        O(ranges): only for a job that ends; `has_fresh` and `first_fresh` cost what they find.
        """
        return self.ledger.all_fresh(self.universe, self.in_flight())

    def has_fresh(self) -> bool:
        return bool(self.ledger.first_fresh(self.universe, self.in_flight(), 1))

    def speculate(self) -> None:
        """Copy stragglers at the tail, or whenever the cluster shows spare capacity.

        Copies do not take window slots (the window bounds the work in flight, not its
        duplicates); at most `maxFraction` x parallelism of them run at once.
        """
        policy = self.spec.speculation
        if not policy.enabled:
            return
        tail = not self.has_fresh() and not any(b.not_before <= self.now for b in self.ledger.retry)
        cap = max(1, math.floor(policy.max_fraction * self.spec.parallelism))
        budget = cap - self.copies_in_flight()
        factor = policy.slowdown_factor
        idle = self.spec.parallelism - len(self.live)
        if tail and idle > 0:
            # The last shards with idle slots beside them (MapReduce's backup tasks): anything
            # past 1.5x its expected time is worth a copy, however the job is tuned, and the
            # idle slots may all hold copies (they would hold nothing else).
            factor = min(factor, TAIL_SLOWDOWN_FACTOR)
            budget = max(budget, idle)
        candidates, wakeups = speculation.stragglers(
            list(self.live.values()),
            self.durations,
            policy,
            self.now,
            factor,
            # A copy that straggles too gets one more at once when its progress shows it;
            # judged by its run time alone, only at the tail (a slow copy is found late).
            copies_per_shard=TAIL_COPIES_PER_SHARD if tail or self.progress_seen() else 1,
            paces=self.paces,
        )
        self.wakeups.extend(wakeups)
        loads = self.pool_loads()
        if tail and idle > 0 and self.spec.accelerator == Accelerator.AUTO:
            chosen = {s.shard_id for s in candidates}
            candidates = candidates + [
                s
                for s in speculation.outrun(
                    list(self.live.values()),
                    self.durations,
                    self.now,
                    lambda s: self.finish_elsewhere(loads, s),
                    copies_per_shard=TAIL_COPIES_PER_SHARD,
                )
                if s.shard_id not in chosen
            ]
        for shard in candidates[: max(0, budget)]:
            # Only what the group has not finished: a member that ended with failures on a
            # node of its own failures left its successes kept, and a copy of a shard that is
            # mostly done has little to do.
            rest = shard.indexes - self.final()
            if not rest:
                continue
            # Never on a node where this work already runs slowly.
            busy = {
                s.node
                for s in self.live.values()
                if group_of(s) == group_of(shard) and s.node is not None
            }
            copy_pool = self.pool_for_copy(loads, shard)
            if copy_pool is None:
                continue  # no free slot: a copy would only queue behind real work
            pool = copy_pool
            load = loads[pool]
            loads[pool] = replace(
                load, live=load.live + 1, waiting=load.waiting + (0 if load.free() else 1)
            )
            hard, soft = badnodes.avoid_lists(self.nodes, pool, self.cluster)
            if self.spec.bad_nodes.enabled:
                # Nor where its microtasks failed (a copy of a retry, say).
                hard, soft = badnodes.avoid_lists_for_retry(
                    self.nodes, shard.indexes, pool, self.cluster
                )
            # Preferably not where this work already runs slowly: a straggling pod may be its
            # node's doing, but stragglers are pods, and a node of several GPUs may hold the
            # only free ones (required, it would leave the copy waiting forever).
            soft = tuple(sorted(set(soft) | (busy - set(hard))))
            plan = ShardPlan(
                shard_id=self.new_shard_id(),
                indexes=rest,
                attempt=shard.attempt,
                pool=pool,
                copy_of=group_of(shard),
                avoid_nodes_hard=tuple(sorted(hard)),
                avoid_nodes_soft=soft,
            )
            self.launch(plan, count_attempts=False)
            self.copies += 1
            self.deltas.speculative_copies += 1
            elapsed = self.now - (shard.started_at or shard.created_at)
            self.rebalanced(
                Reason.STRAGGLER,
                f"shard {shard.shard_id} on node {shard.node} has run {elapsed:.0f}s; "
                f"copy {plan.shard_id} started elsewhere",
            )

    def progress_seen(self) -> bool:
        """Does the body show the progress of running shards?"""
        return any(s.progress is not None for s in self.live.values())

    def pool_for_copy(
        self,
        loads: dict[Pool, placement.PoolLoad],
        shard: ObservedShard,
    ) -> Pool | None:
        """A pool with a free slot for a copy of `shard` (the fastest, for `auto`), or None."""
        auto = self.spec.accelerator == Accelerator.AUTO
        pools = [
            p for p in ([Pool.GPU, Pool.CPU] if auto else [shard.pool]) if self.room_for_copy(p)
        ]
        # A free slot, or the first place in the pool's queue (fill_window then holds the next
        # slot back for it): never behind shards that already wait. Where the capacity is known,
        # what waits is only copies (no work is parked there): a copy may queue behind them
        # when it still ends sooner there (a GPU straggler's copy beside a CPU slot that would
        # take it five times as long).
        free = [
            loads[p]
            for p in pools
            if loads[p].free() > 0 or not loads[p].waiting or loads[p].capacity is not None
        ]
        if not free:
            return None
        size = len(shard.indexes)
        return min(
            free,
            key=lambda load: (
                load.finish(size) if load.finish(size) is not None else math.inf,
                pools.index(load.pool),
            ),
        ).pool

    def room_for_copy(self, pool: Pool) -> bool:
        """Has `pool` a ready node that is not excluded (a copy would wait forever else)?"""
        ready = self.cluster.ready_nodes.get(pool)
        if ready is None:
            return True  # not known: the scheduler will tell
        return bool(ready - set(badnodes.avoid_lists(self.nodes, pool, self.cluster)[0]))

    def finish_elsewhere(
        self, loads: dict[Pool, placement.PoolLoad], shard: ObservedShard
    ) -> float | None:
        """Seconds a copy of `shard` would take on a free slot, if any."""
        times = [
            finish
            for pool, load in loads.items()
            if load.free() > 0 and (finish := load.finish(len(shard.indexes))) is not None
        ]
        return min(times) if times else None

    def groups_in_flight(self) -> int:
        """Window slots in use: a shard and its speculative copies take one slot together."""
        return len({group_of(s) for s in self.live.values()})

    def copies_in_flight(self) -> int:
        return len(self.live) - self.groups_in_flight()

    def waiting_for_capacity(self, pool: Pool | None = None) -> bool:
        return any(
            s.phase == ShardPhase.PENDING
            and s.pending_reason == "Unschedulable"
            and (pool is None or s.pool == pool)
            for s in self.live.values()
        )

    def update_nodes(self) -> None:
        self.nodes, changed = badnodes.update_levels(
            self.nodes, self.spec.bad_nodes, self.cluster, self.now, self.durations
        )
        for name, level in changed:
            record = self.nodes[name]
            self.rebalanced(
                Reason.BAD_NODE,
                f"node {name} failed {record.failures} shards; avoided ({level}) "
                f"for {self.spec.bad_nodes.exclude_seconds:.0f}s",
            )
        for record in self.nodes.values():
            if record.until is not None:
                self.wakeups.append(record.until)

    def cancel_all(self, reason: str) -> None:
        for shard in list(self.live.values()):
            if shard.copy_of is None and shard.started_at is None:
                # Its pod never started: none of its microtasks ran there.
                self.uncount(shard.indexes)
            self.waste(shard)
            self.retire(shard, reason)

    # -- the whole decision ----------------------------------------------------------------

    def decide(self) -> Decision:
        spec = self.spec
        already_done = self.previous_phase in (SUCCEEDED, FAILED)
        if already_done:
            self.cancel_all("finished")
            # A finished job keeps the reason it failed for, whatever it was.
            kept = conditions.get_condition(self.conditions, conditions.FAILED)
            reason = kept.reason if kept is not None and kept.status == "True" else None
            return self.finish(self.previous_phase, reason)

        self.harvest_finished()
        self.recover_lost()
        self.update_nodes()

        if len(self.ledger.failed) > retries.allowed_failures(spec.retry, spec.total):
            self.not_run = len(self.fresh())
            self.cancel_all("too_many_failures")
            self.message = self.with_not_run(self.too_many_failures())
            return self.finish(FAILED, conditions.REASON_TOO_MANY_FAILURES)

        if len(self.final()) >= spec.total:
            self.not_run = len(self.fresh())
            self.cancel_all("finished")
            return self.finish(SUCCEEDED)

        refused = [s for s in self.live.values() if s.refusal]
        if refused:
            return self.refuse(refused)

        if spec.job_timeout_seconds is not None and self.start_time is not None:
            deadline = self.start_time + spec.job_timeout_seconds
            if self.now >= deadline:
                self.not_run = len(self.fresh())
                self.cancel_all("deadline")
                unfinished = self.universe - self.final()
                self.ledger = self.ledger.fail(unfinished).drop_queue()
                self.message = self.with_not_run(
                    f"timeouts.jobSeconds={spec.job_timeout_seconds:g} exceeded; "
                    f"{len(unfinished)} microtasks unfinished"
                )
                return self.finish(FAILED, conditions.REASON_DEADLINE_EXCEEDED)
            self.wakeups.append(deadline)

        if spec.suspend:
            for shard in self.live.values():
                if not shard.suspended:
                    self.actions.append(SuspendShard(shard.shard_id, True))
            return self.finish(SUSPENDED)
        for shard in self.live.values():
            if shard.suspended and shard.pending_reason != "Queued":
                self.actions.append(SuspendShard(shard.shard_id, False))

        self.fall_back()
        self.unpin()
        if not self.may_launch:
            return self.finish(self.running_phase())
        if self.start_time is None:
            self.start_time = self.now
            self.events.append(
                Event(
                    "Started",
                    f"{spec.total} microtasks in shards of {spec.microtasks_per_shard}, "
                    f"up to {spec.parallelism} at once",
                )
            )
        self.fill_window()
        self.speculate()
        return self.finish(self.running_phase())

    def running_phase(self) -> str:
        running = any(s.phase == ShardPhase.RUNNING for s in self.live.values())
        started = running or len(self.final()) > 0 or self.previous_phase == RUNNING
        return RUNNING if started else PENDING

    def refuse(self, refused: Sequence[ObservedShard]) -> Decision:
        """The cluster will never run these shards' pods: fail now rather than wait forever."""
        first = min(refused, key=lambda s: s.shard_id)
        words = failures.cut(first.refusal or "", MAX_REFUSAL_CHARS)
        never = IndexSet.from_ranges(r for s in refused for r in s.indexes.ranges)
        self.not_run = len((self.fresh() | never) - self.final())
        self.cancel_all("refused")
        text = f"the cluster refuses the pods of shard {first.shard_id}: {words}"
        self.events.append(Event(conditions.REASON_PODS_REFUSED, text, warning=True))
        self.message = self.with_not_run(text)
        return self.finish(FAILED, conditions.REASON_PODS_REFUSED)

    def too_many_failures(self) -> str:
        """Which limit was crossed, and the kind of failure most to blame."""
        policy = self.spec.retry
        text = (
            f"{failures.microtasks(len(self.ledger.failed))} failed permanently, more than "
            f"{retries.failure_limit(policy, self.spec.total)}"
        )
        worst = failures.worst(self.failure_summary)
        if worst is not None:
            text += f"; {failures.describe(worst, retried=policy.retry_command_not_found)}"
        return text

    def with_not_run(self, text: str) -> str:
        if self.not_run:
            text += f", {failures.microtasks(self.not_run)} never ran"
        return text

    def finish(self, phase: str, reason: str | None = None) -> Decision:
        now = self.now
        conds = self.conditions
        ledger = self.ledger
        counts = ledger.counts
        total = self.spec.total
        done = phase in (SUCCEEDED, FAILED)
        if done and self.completion_time is None:
            self.completion_time = now
        if phase == SUCCEEDED:
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
            self.message = text
        elif phase == FAILED:
            failed_why: str = reason or conditions.REASON_TOO_MANY_FAILURES
            text = self.message or f"{len(ledger.failed)} microtasks failed"
            conds = conditions.set_condition(conds, conditions.FAILED, True, failed_why, text, now)
            conds = conditions.set_condition(
                conds, conditions.COMPLETE, False, failed_why, text, now
            )
            conds = conditions.set_condition(
                conds, conditions.READY, False, conditions.REASON_FINISHED, text, now
            )
        else:
            ready_reason = {
                RUNNING: conditions.REASON_RUNNING,
                PENDING: conditions.REASON_PENDING,
                SUSPENDED: conditions.REASON_SUSPENDED,
            }[phase]
            conds = conditions.set_condition(
                conds,
                conditions.READY,
                phase != SUSPENDED,
                ready_reason,
                f"{len(ledger.succeeded)} of {total} microtasks succeeded",
                now,
            )
        if phase == SUSPENDED or conditions.get_condition(conds, conditions.SUSPENDED):
            conds = conditions.set_condition(
                conds,
                conditions.SUSPENDED,
                phase == SUSPENDED,
                conditions.REASON_SUSPENDED if phase == SUSPENDED else conditions.REASON_RESUMED,
                "spec.suspend is true" if phase == SUSPENDED else "spec.suspend is false",
                now,
            )
        if done and self.previous_phase != phase:
            self.events.append(
                Event(
                    phase,
                    f"{len(ledger.succeeded)} of {total} microtasks succeeded, "
                    f"{len(ledger.failed)} failed; {ledger.attempts} attempts",
                    warning=phase == FAILED,
                )
            )
        if counts.failed:
            self.events.append(
                Event(
                    "MicrotasksFailed",
                    f"{_microtasks(counts.failed)} failed permanently "
                    f"({len(ledger.failed)} in all)",
                    warning=True,
                )
            )
        if phase == SUSPENDED and self.previous_phase != SUSPENDED:
            self.events.append(Event("Suspended", "spec.suspend is true: no new shards"))
        self.trim_kept()
        final = self.final()
        attempts = {shard.attempt for shard in self.live.values()}
        if len(attempts) == 1:
            # (The usual case: all the work in flight is at one attempt, merged already.)
            running = self.in_flight() - final
            in_flight = {attempts.pop(): running} if running else {}
        else:
            ranges: dict[int, list[tuple[int, int]]] = {}
            for shard in self.live.values():
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
            retired=self.retired,
            kept=self.kept,
            next_shard=self.next_shard,
            attempts=ledger.attempts,
            speculative_copies=self.copies,
            rebalances=self.rebalances,
            nodes=self.nodes,
            durations=self.durations,
            gpu_fallback_until=self.gpu_fallback_until,
            wasted_seconds=self.wasted,
            failure_summary=self.failure_summary,
            succeeded_after_retry=ledger.succeeded_after_retry,
            resources=self.resources,
            not_run=self.not_run,
            start_time=self.start_time,
            completion_time=self.completion_time,
            phase=phase,
            message=self.message,
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
            shardsInFlight=len(self.live),
        )
        self.deltas.succeeded = counts.succeeded
        self.deltas.failed = counts.failed
        self.deltas.retried = counts.retried
        self.deltas.attempts = counts.attempts
        self.deltas.succeeded_after_retry = counts.succeeded_after_retry
        future = [t for t in self.wakeups if t > now]
        return Decision(
            actions=[*self.actions, *self.events],
            state=state,
            status=status,
            deltas=self.deltas,
            phase=phase,
            done=done,
            next_wakeup=None if done else (min(future) if future else None),
            in_flight={pool: sum(1 for s in self.live.values() if s.pool == pool) for pool in Pool},
        )

    def trim_kept(self) -> None:
        """Keep at most keepFailedShards failed Jobs for debugging, the newest ones."""
        limit = self.spec.keep_failed_shards
        while len(self.kept) > limit:
            oldest = self.kept.first()
            assert oldest is not None
            self.kept = self.kept - IndexSet.from_range(oldest, oldest + 1)
            self.actions.append(DeleteShard(oldest, "retired"))


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
    return _Planner(spec, state, observed, cluster, now, launch=launch).decide()


__all__ = [
    "Condition",
    "Decision",
    "Deltas",
    "RetryBatch",
    "group_of",
    "plan",
]
