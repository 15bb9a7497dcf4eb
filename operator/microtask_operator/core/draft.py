"""The scratch state of one decision: what `plan()` reads, changes and hands to `finish`.

A `Draft` copies the state it starts from, buckets the observed shards once, and offers the
small moves every policy makes (launch, retire, give work back, count pod time). The policies
themselves (harvest, recovery, fallback, window, copies, endings) are functions of a draft, in
their own modules; `planner.decide` runs them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from microtask_runner.indexset import IndexSet

from . import failures, lost, resources, speculation
from .decision import Deltas
from .ledger import Ledger
from .observed import bucket, group_of, remember_startup
from .state import CoreState
from .types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteReason,
    DeleteShard,
    Event,
    ObservedShard,
    Reason,
    ShardPlan,
    SuspendShard,
)


class Draft:
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
        # What the decision does, kind by kind, each in the order it was decided.
        self.creates: list[CreateShard] = []
        self.deletes: list[DeleteShard] = []
        self.suspends: list[SuspendShard] = []
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
        self.durations, self.startup = remember_startup(self.durations, seen.live, now)
        self.paces = speculation.NodePaces(seen.live)
        # Observed shards already harvested or abandoned only need their Jobs gone.
        self.deletes.extend(DeleteShard(s.shard_id, DeleteReason.RETIRED) for s in seen.gone)
        self.live: dict[int, ObservedShard] = {s.shard_id: s for s in seen.live}
        self._in_flight: IndexSet | None = None
        self.busy: float | None = None  # computed once, when placement first needs it (window)
        self.level: float | None = None  # likewise (window.water_level; 0: not known)
        # Microtasks of shards counted when seen, not at their launch (see fallback.fall_back).
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
                f"{failures.microtasks(len(gone))} relaunched",
            )
            earlier = earlier | gone

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

    def retire(
        self, shard: ObservedShard, reason: DeleteReason | Reason, *, keep: bool = False
    ) -> None:
        self.retired = self.retired | IndexSet.from_range(shard.shard_id, shard.shard_id + 1)
        self.forget(shard.shard_id)
        if keep:
            self.kept = self.kept | IndexSet.from_range(shard.shard_id, shard.shard_id + 1)
        else:
            self.deletes.append(DeleteShard(shard.shard_id, reason))

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
        if spent > 0:
            self.retry_now(back, spent=spent)
        # spent == 0: nothing to store, fresh work is everything not accounted for.
        return unfinished

    def retry_now(self, indexes: IndexSet, *, spent: int) -> None:
        """Queue work given back for its next attempt, due at once: `spent` attempts are spent."""
        if indexes:
            self.ledger = self.ledger.queue(spent, self.now, indexes)
            self.touched = self.touched | indexes

    def uncount(self, never_ran: IndexSet) -> None:
        """Launched microtasks that did not run are no attempts after all."""
        self.ledger = self.ledger.launched(-len(never_ran))

    def new_shard_id(self) -> int:
        shard_id = self.next_shard
        self.next_shard += 1
        return shard_id

    def launch(self, plan: ShardPlan, *, count_attempts: bool = True) -> None:
        self.creates.append(CreateShard(plan))
        if count_attempts:
            self.ledger = self.ledger.launched(len(plan.indexes))
        self.live[plan.shard_id] = plan.as_pending(self.now)
        self.touched = self.touched | plan.indexes
        if self._in_flight is not None:
            self._in_flight = self._in_flight | plan.indexes

    def fresh(self) -> IndexSet:
        """Microtasks not launched yet (or given back unrun): first attempts to come.

        O(ranges): only for a job that ends; `has_fresh` and `first_fresh` cost what they find.
        """
        return self.ledger.all_fresh(self.universe, self.in_flight())

    def has_fresh(self) -> bool:
        return bool(self.ledger.first_fresh(self.universe, self.in_flight(), 1))

    def groups_in_flight(self) -> int:
        """Window slots in use: a shard and its speculative copies take one slot together."""
        return len({group_of(s) for s in self.live.values()})

    def cancel_all(self, reason: DeleteReason) -> None:
        for shard in list(self.live.values()):
            if shard.copy_of is None and shard.started_at is None:
                # Its pod never started: none of its microtasks ran there.
                self.uncount(shard.indexes)
            self.waste(shard)
            self.retire(shard, reason)
