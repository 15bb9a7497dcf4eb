"""One MicrotaskJob's reconcile: observe its Jobs and pods, ask the core, act, write status once.

A `Reconciler` lives as long as its MicrotaskJob's daemon in the operator. It keeps the last status
it wrote as the truth (the watched copy may lag behind its own writes) and remembers Jobs it just
created or deleted until the watch shows them, so a lagging cache never leads to a duplicate Job or
a double count. After a restart it starts from the status and the Jobs that exist.

It works with the exact status; what is written is its bounded form, large index sets kept in
owned ConfigMaps, and only what changed is sent (`offload.StatusWriter`, `api.indexsets`).

A rerun (`items.fromJob`) starts once its source has finished: the source is read from the
watched MicrotaskJobs, resolved by `api.sources` and written to `status.source` with the store
root (`status.output`); from then on it runs the source's items at the indexes left over, and
never looks at the source again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api import indexsets
from ..api.convert import to_core_spec
from ..api.items import ItemsError
from ..api.loading import validate_job
from ..api.model import MicrotaskJob
from ..api.sources import (
    ConfigMapNeeded,
    Rerun,
    SourceProblem,
    SourceReason,
    pod_store_root,
    rerun_store_url,
    resolve_rerun,
    store_url,
)
from ..builder import build_job, job_name
from ..core import conditions
from ..core.conditions import Phase
from ..core.decision import APPLY_ORDER, Step
from ..core.planner import Decision, plan
from ..core.state import CoreState, StateError
from ..core.timefmt import from_rfc3339, to_rfc3339
from ..core.types import (
    DeleteReason,
    Event,
    ObservedShard,
    PendingReason,
    ShardPhase,
    SuspendShard,
)
from ..labels import JOB_UID, STARTED_AT, shard_selector
from ..metrics import Metrics
from ..settings import Settings
from . import dependencies
from .fixeditems import FixedItems, ItemsGuard, Verdict
from .kube import ApiError, KubeApi
from .observe import NodeInfo, cluster_view, observe
from .offload import StatusWriter

log = logging.getLogger(__name__)

# A Job we created but the watch has not shown yet is assumed to exist this long.
CREATE_MEMORY_SECONDS = 120.0
# A delete we sent is not repeated for this long while the watch still shows the Job.
DELETE_MEMORY_SECONDS = 30.0
# A shard's Job without a pod this long may have its pods refused: its Events say (read at most
# once per REFUSAL_CHECK_EVERY per MicrotaskJob). Under load a pod often takes over a second to
# appear; checking sooner made most Event lists pointless.
REFUSAL_CHECK_AFTER = 5.0
REFUSAL_CHECK_EVERY = 5.0
# Shards named in one delete's label selector: it travels in the URL, which must stay short.
DELETES_PER_REQUEST = 200
# The Jobs of harvested shards are deleted together: once this many wait, or the first of
# them has waited this long, or the job ends, or another delete goes anyway. A finished Job
# holds no node, and a request per reconcile that harvests was a fifth of a run's writes (the
# core asks again every reconcile until the Job is gone: a held delete needs no bookkeeping
# beyond the wait, and an operator restarted meanwhile deletes it all the same).
HARVESTED_DELETES_TOGETHER = 10
HARVESTED_DELETE_WAIT_SECONDS = 10.0

# The keys of the core's index sets in the status.
_CORE_SETS = frozenset(
    {
        indexsets.KEY,
        "succeededIndexes",
        "failedIndexes",
        "retryQueue",
        "inFlight",
        "retiredShards",
        "keptShards",
    }
)

# Conditions the adapter sets (the core carries them along unchanged): (holds, reason, message).
Flag = tuple[bool, str, str]


class EventSink(Protocol):
    def __call__(self, event: Event) -> None: ...


@dataclass
class Cluster:
    """The operator's watched caches (kopf indexes), as plain lookups."""

    jobs: Callable[[str, str], Sequence[Mapping[str, Any]]]  # (namespace, mtj) -> Jobs
    pods: Callable[[str, str], Sequence[Mapping[str, Any]]]  # (namespace, job) -> pods
    nodes: Callable[[], Mapping[str, NodeInfo]]
    phase_of: Callable[[str, str], str | None]  # (namespace, mtj) -> phase, for dependsOn
    # (namespace, mtj) -> the MicrotaskJob as watched, for items.fromJob
    job_of: Callable[[str, str], Mapping[str, Any] | None] = lambda namespace, name: None


@dataclass
class Outcome:
    next_wakeup: float | None
    done: bool
    # Every microtask left is in flight: the next change can only be harvested, it cannot start
    # a Job, so the loop may let changes gather longer (OperatorConfig.pause_after_change).
    settle: bool = False


@dataclass
class Reconciler:
    namespace: str
    name: str
    api: KubeApi
    metrics: Metrics
    settings: Settings
    cluster: Cluster
    emit: EventSink
    resync_seconds: float = 30.0
    clock: Callable[[], float] = time.time
    state: CoreState | None = None
    last_status: dict[str, Any] | None = None
    created: dict[int, tuple[ObservedShard, float]] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)
    harvested_since: float | None = None  # when a harvested shard's Job delete was first held
    rerun: Rerun | None = None  # items.fromJob, once resolved
    items: ItemsGuard = field(init=False)
    # The conditions the adapter owns, as last decided, and the last problem announced of each.
    flags: dict[str, Flag] = field(default_factory=dict)
    announced: dict[str, str] = field(default_factory=dict)
    marked: bool = False  # the start is noted in an annotation
    refusal_checked: float | None = None
    # The check of a stuck shard's Events, running behind the reconcile, and what it found: the
    # shard's Job name and the refusal (`_refusals`).
    refusal_check: asyncio.Task[None] | None = field(default=None, init=False)
    refusal_found: tuple[str, str] | None = field(default=None, init=False)
    # Wakes the job's loop (a refusal found behind the reconcile).
    wake: Callable[[], None] = lambda: None
    # Index-set text kept inline in the status (None: MICROTASK_STATUS_INLINE_CHARS or 8 KiB).
    inline_chars: int | None = None
    writer: StatusWriter = field(init=False)
    meta: Mapping[str, Any] = field(default_factory=dict)  # the MicrotaskJob's, as last seen
    # Why the exact index sets of the status read at the start could not be had, if they could not.
    unloadable: str | None = None
    # The clean-up after the last status write, running behind the reconcile (`_clean_up`).
    cleanup: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.items = ItemsGuard(self.api, self.namespace, self.name)
        self.writer = StatusWriter(
            self.api, self.namespace, self.name, inline_chars=self.inline_chars
        )

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        started = time.perf_counter()
        try:
            return await self._reconcile(body)
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        now = self.clock()
        meta = body.get("metadata") or {}
        self.meta = meta
        seen = dict(body.get("status") or {})
        status = seen
        if self.last_status is None or (self.state is None and indexsets.offloaded(seen)):
            status = await self._exact(seen)
            if self.last_status is None:
                self.last_status = status
        job, problems = validate_job(body)
        if job is None:
            message = "; ".join(
                f"{p.path}: {p.message}" if p.path else p.message for p in problems
            )[:2000]
            # A job that already runs keeps its phase: its Jobs in flight are harvested once the
            # spec is valid again; one that never started fails until it is fixed.
            phase = (
                Phase(str(status.get("phase") or Phase.RUNNING))
                if status.get("startTime")
                else Phase.FAILED
            )
            return await self._hold(
                now,
                meta,
                phase,
                conditions.INVALID,
                True,
                conditions.REASON_INVALID_SPEC,
                message,
            )

        # Dependencies gate the start only: a running job is not stopped by a dependency's fate.
        if not status.get("startTime") and not self._timed_out(status):
            verdict = self._dependencies(job, meta, now)
            if verdict is not None:
                store = None if job.spec.items.from_job else self._store(job, None)
                blocked = isinstance(verdict, dependencies.Blocked)
                return await self._hold(
                    now,
                    meta,
                    Phase.FAILED if blocked else Phase.PENDING,
                    conditions.WAITING_FOR_DEPENDENCIES,
                    not blocked,
                    verdict.reason,
                    verdict.message,
                    failed_condition=blocked,
                    store=store,
                    wake=verdict.deadline if isinstance(verdict, dependencies.Waiting) else None,
                )
        elif not status.get("startTime"):
            return Outcome(None, True)  # it gave up waiting for its dependencies: final

        rerun = None
        if job.spec.items.from_job is not None:
            found = await self._rerun(job)
            if isinstance(found, SourceProblem):
                return await self._source_problem(now, meta, found)
            rerun = found
        store = self._store(job, rerun)

        launch = True
        try:
            items = await self.items.check(
                job,
                (body.get("spec") or {}).get("items") or {},
                meta,
                (self.last_status or {}).get("items"),
                now,
                finishing=self._finishing(),
            )
            spec = await self._core_spec(job, rerun, items)
        except ItemsError as error:
            if not status.get("startTime"):
                return await self._hold(
                    now,
                    meta,
                    Phase.PENDING,
                    conditions.INVALID,
                    True,
                    "ItemsUnavailable",
                    str(error),
                    retry=True,
                )
            raise  # a running job keeps its items: this is unexpected (reported, retried)
        self.flags[conditions.SPEC_CHANGE_IGNORED] = items.flag or (
            False,
            conditions.REASON_RESOLVED,
            "",
        )
        launch = items.launch

        observed = self._refusals(self._observe(str(meta.get("uid", "")), now), now)
        state = self._state(status, meta, observed)
        view = cluster_view(self.cluster.nodes())
        decision = plan(spec, state, observed, view, now, launch=launch)

        # The Jobs are all built before any is created: a shard that cannot be built holds new
        # shards back, but what finished is still harvested and the job goes on.
        manifests, build_error = self._manifests(job, meta, decision, store, rerun, items.fixed)
        if build_error is not None:
            decision = plan(spec, state, observed, view, now, launch=False)
            manifests = []
            self.flags[conditions.RECONCILE_ERROR] = (
                True,
                conditions.REASON_SHARD_BUILD_FAILED,
                f"no new shards: {build_error}"[:1000],
            )
        else:
            self.flags[conditions.RECONCILE_ERROR] = (False, conditions.REASON_RESOLVED, "")

        # The core's order (core.decision.APPLY_ORDER), each step the adapter's own: a create
        # refused for good re-plans before the status is written, and the start annotation,
        # deletes and suspends run behind the reconcile (`_clean_up`), handed over before the
        # events are.
        behind: list[Coroutine[Any, Any, None] | None] = []
        for step in APPLY_ORDER:
            match step:
                case Step.CREATE:
                    # A failure stops here; the next reconcile starts from what exists. A Job
                    # the API server refuses for good (invalid, or denied by admission) fails
                    # the job, quoted; the Jobs created before it are part of that decision
                    # (cancelled, not left running).
                    created, refused = await self._create(manifests, now)
                    if refused is not None:
                        shards = [*observed, *created, refused]
                        decision = plan(spec, state, shards, view, now, launch=False)
                case Step.RECORD:
                    # Once: it records harvests before their Jobs go away.
                    new_status = self._full_status(
                        decision, meta, now, store=store, rerun=rerun, items=items
                    )
                    await self._write_status(new_status, seen)
                    self.state = decision.state
                    self._record(decision)
                    behind.append(self._mark_started(meta, new_status))
                case Step.DELETE:
                    uid = str(meta.get("uid") or "")
                    behind.append(self._delete(self._batched(decision, now), uid, now))
                case Step.SUSPEND:
                    behind.extend(self._suspend(a) for a in decision.suspends)
                case Step.EMIT:
                    self._clean_up([w for w in behind if w is not None])
                    for event in decision.events:
                        self.emit(event)
        self._announce()
        return Outcome(decision.next_wakeup, decision.done, settle=self._finishing())

    async def report_error(self, error: BaseException) -> None:
        """An unexpected failure of a reconcile: a condition and an Event say it, once per kind."""
        message = f"{type(error).__name__}: {error}"[:1000]
        self.flags[conditions.RECONCILE_ERROR] = (
            True,
            conditions.REASON_UNEXPECTED_ERROR,
            f"{message} (retried with backoff; the operator's log has the details)",
        )
        now = self.clock()
        previous = list((self.last_status or {}).get("conditions") or [])
        conds = self._owned_conditions(previous, now)
        if conds != previous:
            status = {**(self.last_status or {}), "conditions": conds}
            try:
                await self.writer.write(self.meta, status)
            except indexsets.IndexSetsError:
                # The index sets themselves cannot be written (too large): the conditions can.
                await self.api.patch_status(self.namespace, self.name, {"conditions": conds})
                self.writer.written = {**(self.writer.written or {}), "conditions": conds}
            self.last_status = status
        self._announce()

    # -- pieces ------------------------------------------------------------------------------

    def _manifests(
        self,
        job: MicrotaskJob,
        meta: Mapping[str, Any],
        decision: Decision,
        store: str | None,
        rerun: Rerun | None,
        items: FixedItems,
    ) -> tuple[list[tuple[Any, dict[str, Any]]], str | None]:
        built: list[tuple[Any, dict[str, Any]]] = []
        for action in decision.creates:
            try:
                manifest = build_job(
                    job,
                    meta,
                    action.plan,
                    self.settings,
                    store=store,
                    source=rerun.items if rerun is not None else None,
                    items_config_map=items.snapshot,
                )
            except Exception as error:  # ItemsError, or a builder that cannot cope: reported
                log.warning(
                    "%s/%s: shard %d cannot be built: %s",
                    self.namespace,
                    self.name,
                    action.plan.shard_id,
                    error,
                )
                return [], f"shard {action.plan.shard_id}: {error}"
            built.append((action.plan, manifest))
        return built, None

    def _finishing(self) -> bool:
        """Is the job about to finish (nothing left but what is in flight)?"""
        last = self.last_status or {}
        total = int(last.get("total") or 0)
        ended = int(last.get("succeeded") or 0) + int(last.get("failed") or 0)
        return bool(total) and ended + int(last.get("running") or 0) >= total

    def _timed_out(self, status: Mapping[str, Any]) -> bool:
        """Did this job give up waiting for its dependencies (a final verdict)?"""
        return status.get("phase") == Phase.FAILED and any(
            c.get("type") == conditions.FAILED
            and c.get("reason") == conditions.REASON_DEPENDENCY_TIMEOUT
            for c in status.get("conditions") or []
        )

    def _state(
        self,
        status: Mapping[str, Any],
        meta: Mapping[str, Any],
        observed: Sequence[ObservedShard],
    ) -> CoreState:
        if self.state is not None:
            return self.state
        # Failed without ever starting (invalid, a dependency failed, a cycle): once it can run
        # after all, it starts from scratch.
        held = status.get("phase") == Phase.FAILED and not status.get("startTime")
        started_at = ((meta.get("annotations") or {}).get(STARTED_AT)) or None
        recovered: tuple[str, str] | None = None
        if self.unloadable is not None:
            state = CoreState.initial()
            recovered = (
                conditions.REASON_STATUS_UNREADABLE,
                f"the status's index sets could not be read back ({self.unloadable})",
            )
            self.unloadable = None
        else:
            try:
                state = CoreState.from_status(status)
            except StateError as error:
                state = CoreState.initial()
                recovered = (
                    conditions.REASON_STATUS_UNREADABLE,
                    f"the status could not be read back ({error})",
                )
            else:
                if started_at and not status.get("startTime"):
                    recovered = (
                        conditions.REASON_STATUS_RESET,
                        f"the status was reset although the job started at {started_at}",
                    )
        if recovered is not None:
            reason, what = recovered
            message = (
                f"{what}; rebuilt from the {len(observed)} shard Jobs that exist. The outcomes "
                "of shards harvested before are lost: those microtasks run again, and the "
                "counters restart from what the Jobs show"
            )
            log.warning("%s/%s: %s", self.namespace, self.name, message)
            start = from_rfc3339(started_at) if started_at else None
            # Shard ids already used are never reused: the planner continues after the largest.
            state = dataclasses.replace(
                state, start_time=start, phase=Phase.RUNNING if start else Phase.PENDING
            )
            self.flags[conditions.RECOVERED] = (True, reason, message)
            self.emit(Event(reason, message, warning=True))
        if held:
            # It failed only because it was invalid; now that it is valid it may start.
            state = CoreState(conditions=state.conditions, next_shard=state.next_shard)
        return state

    def _mark_started(
        self, meta: Mapping[str, Any], status: Mapping[str, Any]
    ) -> Coroutine[Any, Any, None] | None:
        """Note the start outside the status once, so a status reset is recognised later."""
        started = status.get("startTime")
        if self.marked or not started:
            return None
        self.marked = True  # at once: a later reconcile must not send it again meanwhile
        if (meta.get("annotations") or {}).get(STARTED_AT):
            return None

        async def annotate() -> None:
            try:
                await self.api.annotate(self.namespace, self.name, {STARTED_AT: str(started)})
            except ApiError as error:
                self.marked = False
                log.info("will retry: %s", error)

        return annotate()

    def _refusals(self, observed: list[ObservedShard], now: float) -> list[ObservedShard]:
        """Shards whose Job made no pod for a while: are their pods refused for good?

        The Events that say so are listed behind the reconcile (`_check_refusal`), which wakes
        the loop when it finds a final refusal; the next reconcile applies it to the shard if
        that shard still has no pod. Under load, pods are late often and the list was slow: it
        held the reconcile that found the shard late, and the status write with it.
        """
        stuck = [
            s
            for s in observed
            if s.phase == ShardPhase.PENDING
            and s.pending_reason == PendingReason.NO_POD
            and now - s.created_at >= REFUSAL_CHECK_AFTER
        ]
        found, self.refusal_found = self.refusal_found, None
        if found is not None:
            name, refusal = found
            refused = next((s for s in stuck if job_name(self.name, s.shard_id) == name), None)
            if refused is not None:
                return [
                    dataclasses.replace(s, refusal=refusal) if s is refused else s for s in observed
                ]
        if not stuck:
            return observed
        if self.refusal_checked is not None and now - self.refusal_checked < REFUSAL_CHECK_EVERY:
            return observed
        if self.refusal_check is not None and not self.refusal_check.done():
            return observed
        self.refusal_checked = now
        oldest = min(stuck, key=lambda s: (s.created_at, s.shard_id))
        name = job_name(self.name, oldest.shard_id)
        # Events of an earlier Job of the same name (a re-created MicrotaskJob) are not this one's.
        job_uid = next(
            (
                str(j["metadata"].get("uid"))
                for j in self.cluster.jobs(self.namespace, self.name)
                if (j.get("metadata") or {}).get("name") == name and j["metadata"].get("uid")
            ),
            None,
        )
        self.refusal_check = asyncio.get_running_loop().create_task(
            self._check_refusal(name, job_uid)
        )
        return observed

    async def _check_refusal(self, name: str, job_uid: str | None) -> None:
        """List the Job's Events; a final refusal is kept for the next reconcile, woken at once."""
        try:
            refusal = await self.api.pod_refusals(self.namespace, name, uid=job_uid)
        except ApiError as error:  # asked again after REFUSAL_CHECK_EVERY
            log.info("will retry: %s", error)
            return
        except Exception:  # a bug: never lost silently
            log.exception("%s/%s: checking the pods of %s failed", self.namespace, self.name, name)
            return
        if refusal:
            self.refusal_found = (name, refusal)
            self.wake()

    async def _core_spec(self, job: MicrotaskJob, rerun: Rerun | None, items: Verdict) -> Any:
        if rerun is not None:
            # The source's unfinished indexes, fixed at the start: the ConfigMap is not counted.
            return to_core_spec(job, universe=rerun.indexes, source=rerun.items)
        total = None
        if self.last_status and self.last_status.get("startTime") and self.last_status.get("total"):
            # The item count is fixed once running.
            total = int(self.last_status["total"])
        return to_core_spec(job, items.fixed.data, total=total)

    async def _rerun(self, job: MicrotaskJob) -> Rerun | SourceProblem:
        """items.fromJob: as resolved before (`status.source`), or resolved now."""
        if self.rerun is not None:
            return self.rerun
        held = (self.last_status or {}).get("source")
        if held:
            try:
                self.rerun = Rerun.from_status(held)
            except ValueError as error:
                return SourceProblem(SourceReason.UNUSABLE, str(error))
            return self.rerun
        ref = job.spec.items.from_job
        assert ref is not None
        body = self.cluster.job_of(self.namespace, ref.name)
        if body is not None and indexsets.offloaded(body.get("status")):
            try:
                body = {**body, "status": await self._load_parts(body["status"])}
            except indexsets.IndexSetsError as error:
                # Perhaps the watched copy is behind its parts: tried again later.
                return SourceProblem(SourceReason.UNUSABLE, f"MicrotaskJob {ref.name}: {error}")
        found = resolve_rerun(job, body)
        if isinstance(found, ConfigMapNeeded):
            data = await self.api.get_config_map(self.namespace, found.name)
            if data is None:
                return SourceProblem(
                    SourceReason.UNUSABLE,
                    f"ConfigMap {found.name!r} (the items of MicrotaskJob {ref.name}) not found "
                    f"in namespace {self.namespace}",
                )
            found = resolve_rerun(job, body, data)
            assert not isinstance(found, ConfigMapNeeded)
        if isinstance(found, Rerun):
            self.rerun = found
            self.emit(Event(SourceReason.RESOLVED, found.summary()))
        return found

    async def _source_problem(
        self, now: float, meta: Mapping[str, Any], problem: SourceProblem
    ) -> Outcome:
        """Hold a rerun whose source cannot be used: wait for it, or fail until the spec changes."""
        if problem.final:
            return await self._hold(
                now, meta, Phase.FAILED, conditions.INVALID, True, problem.reason, problem.message
            )
        waiting = problem.reason in (SourceReason.NOT_FOUND, SourceReason.NOT_FINISHED)
        return await self._hold(
            now,
            meta,
            Phase.PENDING,
            conditions.WAITING_FOR_DEPENDENCIES if waiting else conditions.INVALID,
            True,
            problem.reason,
            problem.message,
            retry=True,
        )

    def _store(self, job: MicrotaskJob, rerun: Rerun | None) -> str | None:
        """The result store's root (`status.output.url`): kept once written, while reachable."""
        kept = ((self.last_status or {}).get("output") or {}).get("url")
        output = job.spec.output
        if kept and (output is None or pod_store_root(output, str(kept)) is not None):
            return str(kept)
        if output is None:
            return None
        if rerun is not None:
            return rerun_store_url(output, rerun.source_output, rerun.job)
        return store_url(output, self.name)

    def _dependencies(
        self, job: MicrotaskJob, meta: Mapping[str, Any], now: float
    ) -> dependencies.Verdict:
        created = meta.get("creationTimestamp")
        return dependencies.judge(
            self.name,
            job.spec.depends_on,
            lambda dep: self.cluster.job_of(self.namespace, dep),
            created_at=from_rfc3339(str(created)) if created else None,
            timeout_seconds=job.spec.timeouts.dependencies_seconds,
            now=now,
        )

    def _observe(self, uid: str, now: float) -> list[ObservedShard]:
        nodes = self.cluster.nodes()
        observed: dict[int, ObservedShard] = {}
        seen_names = set()
        for manifest in self.cluster.jobs(self.namespace, self.name):
            meta = manifest.get("metadata") or {}
            if uid and (meta.get("labels") or {}).get(JOB_UID, uid) != uid:
                continue  # a Job of an earlier MicrotaskJob of the same name, being collected
            name = str(meta.get("name", ""))
            seen_names.add(name)
            shard = observe(manifest, self.cluster.pods(self.namespace, name), nodes, now)
            if shard is not None:
                observed[shard.shard_id] = shard
        for shard_id, (pending, at) in list(self.created.items()):
            if shard_id in observed or now - at > CREATE_MEMORY_SECONDS:
                del self.created[shard_id]
            else:
                observed[shard_id] = pending
        for name in list(self.deleting):
            if name not in seen_names:
                del self.deleting[name]
        return list(observed.values())

    async def _create(
        self, manifests: Sequence[tuple[Any, dict[str, Any]]], now: float
    ) -> tuple[list[ObservedShard], ObservedShard | None]:
        """Create the shards' Jobs in shard order: those created, and the one refused for good
        if one was (the rest are then not created). Another failure is raised.

        One after another, not together: shard ids are never reused, so a Job that a killed
        operator never got to create leaves a hole only if a later one was created before it;
        in order, what a kill leaves is always a prefix, which the restart continues from.
        """
        created: list[ObservedShard] = []
        for shard_plan, manifest in manifests:
            try:
                await self.api.create_job(self.namespace, manifest)
            except ApiError as error:
                if not error.refused:
                    raise
                return created, dataclasses.replace(
                    shard_plan.as_pending(now, reason="Refused"),
                    refusal=f"Job {manifest['metadata']['name']}: {error.detail or error}",
                )
            pending = shard_plan.as_pending(now, reason="Created")
            self.created[shard_plan.shard_id] = (pending, now)
            created.append(pending)
        return created, None

    def _batched(self, decision: Decision, now: float) -> list[int]:
        """The shards whose Jobs go now: the harvested ones wait for company (see
        HARVESTED_DELETES_TOGETHER), the others never wait."""
        harvested = (DeleteReason.HARVESTED, DeleteReason.RETIRED)
        held = [a.shard_id for a in decision.deletes if a.reason in harvested]
        others = [a.shard_id for a in decision.deletes if a.reason not in harvested]
        if not held:
            self.harvested_since = None
            return others
        if self.harvested_since is None:
            self.harvested_since = now
        if (
            others
            or decision.done
            or len(held) >= HARVESTED_DELETES_TOGETHER
            or now - self.harvested_since >= HARVESTED_DELETE_WAIT_SECONDS
        ):
            self.harvested_since = None
            return others + held
        return others

    def _delete(
        self, shard_ids: Sequence[int], uid: str, now: float
    ) -> Coroutine[Any, Any, None] | None:
        """Delete the shards' Jobs with one request (those not deleted a moment ago)."""
        wanted: list[int] = []
        for shard_id in shard_ids:
            name = job_name(self.name, shard_id)
            self.created.pop(shard_id, None)
            sent = self.deleting.get(name)
            if sent is None or now - sent >= DELETE_MEMORY_SECONDS:
                wanted.append(shard_id)
                # Noted before it is sent: a later reconcile must not send it again meanwhile.
                self.deleting[name] = now
        if not wanted:
            return None

        async def delete() -> None:
            for first in range(0, len(wanted), DELETES_PER_REQUEST):
                chunk = wanted[first : first + DELETES_PER_REQUEST]
                try:
                    await self.api.delete_jobs(
                        self.namespace, shard_selector(self.name, uid, chunk)
                    )
                except ApiError as error:
                    for shard_id in chunk:
                        self.deleting.pop(job_name(self.name, shard_id), None)
                    log.info("will retry: %s", error)

        return delete()

    def _clean_up(self, work: Sequence[Coroutine[Any, Any, None]]) -> None:
        """Run what follows a status write behind the reconcile, after the previous clean-up.

        All of it is safe to repeat (a delete that failed is sent again by a later reconcile)
        and the status written already records what it follows from, so the reconcile need not
        wait: with a hundred jobs, these calls were half of a reconcile's time. Events go the
        same way (`events.py`). One job's clean-ups keep their order (a suspend, then a resume).
        """
        if not work:
            return
        previous = self.cleanup

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            started = time.perf_counter()
            try:
                await asyncio.gather(*work)
            except Exception:  # a bug: never lost silently, the next reconcile goes on
                log.exception("%s/%s: clean-up failed", self.namespace, self.name)
            finally:
                self.metrics.cleanup_duration.observe(time.perf_counter() - started)

        self.cleanup = asyncio.get_running_loop().create_task(run())

    async def flush(self) -> None:
        """Wait until the clean-up and the refusal check under way are done (the loop ends; a
        test looks)."""
        running = [t for t in (self.cleanup, self.refusal_check) if t is not None and not t.done()]
        if running:
            await asyncio.wait(running)

    async def _suspend(self, action: SuspendShard) -> None:
        try:
            await self.api.suspend_job(
                self.namespace, job_name(self.name, action.shard_id), action.suspend
            )
        except ApiError as error:
            log.info("will retry: %s", error)

    def _full_status(
        self,
        decision: Decision,
        meta: Mapping[str, Any],
        now: float,
        *,
        store: str | None,
        rerun: Rerun | None,
        items: Verdict,
    ) -> dict[str, Any]:
        status = dict(decision.status)
        status["observedGeneration"] = int(meta.get("generation") or 0)
        if store is not None:
            status["output"] = {"url": store}
        if status.get("startTime"):
            status["items"] = items.fixed.to_status()
        if rerun is not None:
            status["source"] = rerun.to_status()
            if not rerun.indexes:
                status["message"] = rerun.summary()
        conds = list(status.get("conditions") or [])
        # Conditions the adapter owns are cleared once they no longer hold.
        for owned in (conditions.INVALID, conditions.WAITING_FOR_DEPENDENCIES):
            for c in conds:
                if c["type"] == owned and c["status"] == "True":
                    c.update(status="False", reason="Resolved", message="")
        status["conditions"] = self._owned_conditions(conds, now)
        return status

    def _owned_conditions(self, conds: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The conditions with the adapter's flags set (a False one only clears a True one)."""
        result = [dict(c) for c in conds]
        written = (self.last_status or {}).get("conditions") or []
        for type_, (holds, reason, message) in sorted(self.flags.items()):
            wanted = "True" if holds else "False"
            old = next((c for c in result if c.get("type") == type_), None)
            if old is None:
                # The core's state holds the conditions it read at the start, not ours since.
                before = next((c for c in written if c.get("type") == type_), None)
                if before is not None:
                    old = dict(before)
                    result.append(old)
            if old is None:
                if holds:
                    result.append(
                        {
                            "type": type_,
                            "status": wanted,
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": to_rfc3339(now),
                        }
                    )
                continue
            if old.get("status") == wanted and (not holds or old.get("message") == message):
                continue
            if old.get("status") != wanted:
                old["lastTransitionTime"] = to_rfc3339(now)
            old.update(status=wanted, reason=reason, message=message)
        return sorted(result, key=lambda c: str(c.get("type")))

    def _announce(self) -> None:
        """One Event per new problem the adapter's flags hold (not one per reconcile)."""
        for type_, (holds, reason, message) in self.flags.items():
            key = (type_, message if holds else "")
            if self.announced.get(type_) == key[1]:
                continue
            self.announced[type_] = key[1]
            if holds and type_ != conditions.RECOVERED:  # (announced where it is found)
                self.emit(Event(reason, message, warning=True))

    async def _exact(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """The status read with its exact index sets (their ConfigMaps read and checked).

        When they cannot be had (a part deleted or edited), the status is read again from the
        API server, in case the watched copy is behind; failing that, the job is rebuilt from
        the Jobs that exist, with a condition naming the part (see `_state`).
        """
        try:
            return await self.writer.load(status)
        except indexsets.IndexSetsError as error:
            problem = str(error)
        fresh = await self.api.get_status(self.namespace, self.name)
        if fresh is not None and fresh != status:
            self.writer.written = fresh
            try:
                return await self.writer.load(fresh)
            except indexsets.IndexSetsError as error:
                problem = str(error)
        log.warning("%s/%s: %s", self.namespace, self.name, problem)
        self.unloadable = problem
        # What survives: all but the index sets (rebuilt from the Jobs; a rerun's source says
        # itself that it is unusable).
        return {k: v for k, v in status.items() if k not in _CORE_SETS}

    async def _load_parts(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """Another MicrotaskJob's status with its exact index sets."""
        data = {
            name: await self.api.get_config_map(self.namespace, name)
            for name in indexsets.needed(status)
        }
        return indexsets.join(status, data)

    async def _write_status(self, status: dict[str, Any], seen: Mapping[str, Any]) -> None:
        """Write the status (what changed); all of it when someone reset it meanwhile."""
        if status == self.last_status:
            return  # nothing changed: no API write
        reset = bool((self.writer.written or {}).get("startTime")) and not seen.get("startTime")
        await self.writer.write(self.meta, status, full=reset)
        self.last_status = status

    async def _hold(
        self,
        now: float,
        meta: Mapping[str, Any],
        phase: Phase,
        condition_type: str,
        holds: bool,
        reason: str,
        message: str,
        *,
        failed_condition: bool = False,
        retry: bool = False,
        store: str | None = None,
        wake: float | None = None,
    ) -> Outcome:
        """Write a status saying why no Jobs are made (invalid, waiting, dependency failed)."""
        previous = CoreState.from_status({"conditions": (self.last_status or {}).get("conditions")})
        conds = conditions.set_condition(
            previous.conditions, condition_type, holds, reason, message, now
        )
        if failed_condition:
            conds = conditions.set_condition(conds, conditions.FAILED, True, reason, message, now)
        elif phase != Phase.FAILED and conditions.is_true(conds, conditions.FAILED):
            # Failed only while held (a dependency cycle since broken): it may start after all.
            conds = conditions.set_condition(
                conds, conditions.FAILED, False, conditions.REASON_RESOLVED, "", now
            )
        conds = conditions.set_condition(conds, conditions.READY, False, reason, message, now)
        base = CoreState(phase=phase, message=message, conditions=conds).to_status()
        status = {
            "phase": str(phase),
            "message": message,
            "conditions": base["conditions"],
            "observedGeneration": int(meta.get("generation") or 0),
        }
        if store is not None:
            status["output"] = {"url": store}
        merged = dict(self.last_status or {})
        merged.update(status)
        if merged != self.last_status:
            await self.writer.write(meta, merged)
            self.last_status = merged
            self.emit(
                Event(
                    reason,
                    message,
                    warning=phase == Phase.FAILED or condition_type == conditions.INVALID,
                )
            )
        if not (self.last_status or {}).get("startTime"):
            self.state = None  # never started: start from scratch once it can run
        if retry:
            wake = now + self.resync_seconds
        return Outcome(wake, phase == Phase.FAILED)

    def _record(self, decision: Decision) -> None:
        self.metrics.record(self.namespace, decision.deltas, job=self.name)
        if decision.done:
            self.metrics.job_gone(self.namespace, self.name)
            return
        status = decision.status
        ended = int(status.get("succeeded", 0)) + int(status.get("failed", 0))
        self.metrics.job_active(
            self.namespace, self.name, ended, int(status.get("total", 0)), decision.in_flight
        )
