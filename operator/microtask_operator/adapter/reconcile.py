"""One MicrotaskJob's reconcile: observe its Jobs and pods, ask the core, act, write status once.

A `Reconciler` lives as long as its MicrotaskJob's daemon in the operator. It keeps the last status
it wrote as the truth (the watched copy may lag behind its own writes) and remembers Jobs it just
created or deleted until the watch shows them, so a lagging cache never leads to a duplicate Job or
a double count. After a restart it starts from the status and the Jobs that exist.

A rerun (`items.fromJob`) starts once its source has finished: the source is read from the
watched MicrotaskJobs, resolved by `api.sources` and written to `status.source` with the store
root (`status.output`); from then on it runs the source's items at the indexes left over, and
never looks at the source again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from ..core.planner import Decision, plan
from ..core.state import CoreState, StateError
from ..core.types import (
    CreateShard,
    DeleteShard,
    Event,
    ObservedShard,
    SuspendShard,
)
from ..labels import JOB_UID
from ..metrics import Metrics
from ..settings import Settings
from .kube import ApiError, KubeApi
from .observe import NodeInfo, cluster_view, observe

log = logging.getLogger(__name__)

# A Job we created but the watch has not shown yet is assumed to exist this long.
CREATE_MEMORY_SECONDS = 120.0
# A delete we sent is not repeated for this long while the watch still shows the Job.
DELETE_MEMORY_SECONDS = 30.0


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
    config_map: dict[str, str] | None = None
    rerun: Rerun | None = None  # items.fromJob, once resolved

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        started = time.perf_counter()
        try:
            return await self._reconcile(body)
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        now = self.clock()
        meta = body.get("metadata") or {}
        status = dict(body.get("status") or {})
        if self.last_status is None:
            self.last_status = status
        job, problems = validate_job(body)
        if job is None:
            message = "; ".join(
                f"{p.path}: {p.message}" if p.path else p.message for p in problems
            )[:2000]
            # A job that already runs keeps its phase: its Jobs in flight are harvested once the
            # spec is valid again; one that never started fails until it is fixed.
            phase = str(status.get("phase") or "Running") if status.get("startTime") else "Failed"
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
        waiting = None if status.get("startTime") else self._dependencies(job)
        if waiting is not None:
            failed, message = waiting
            store = None if job.spec.items.from_job else self._store(job, None)
            if failed:
                return await self._hold(
                    now,
                    meta,
                    "Failed",
                    conditions.WAITING_FOR_DEPENDENCIES,
                    False,
                    conditions.REASON_DEPENDENCY_FAILED,
                    message,
                    failed_condition=True,
                    store=store,
                )
            return await self._hold(
                now,
                meta,
                "Pending",
                conditions.WAITING_FOR_DEPENDENCIES,
                True,
                conditions.REASON_WAITING_FOR_DEPENDENCIES,
                message,
                store=store,
            )

        rerun = None
        if job.spec.items.from_job is not None:
            found = await self._rerun(job)
            if isinstance(found, SourceProblem):
                return await self._source_problem(now, meta, found)
            rerun = found
        store = self._store(job, rerun)

        try:
            spec = await self._core_spec(job, rerun)
        except ItemsError as error:
            return await self._hold(
                now,
                meta,
                "Pending",
                conditions.INVALID,
                True,
                "ItemsUnavailable",
                str(error),
                retry=True,
            )

        state = self._state(status)
        observed = self._observe(str(meta.get("uid", "")), now)
        nodes = self.cluster.nodes()
        decision = plan(spec, state, observed, cluster_view(nodes), now)

        # 1. Creates: a failure stops here; the next reconcile starts from what exists.
        for action in decision.actions:
            if isinstance(action, CreateShard):
                manifest = build_job(
                    job,
                    meta,
                    action.plan,
                    self.settings,
                    store=store,
                    source=rerun.items if rerun is not None else None,
                )
                await self.api.create_job(self.namespace, manifest)
                pending = action.plan.as_pending(now, reason="Created")
                self.created[action.plan.shard_id] = (pending, now)

        # 2. Status, once: it records harvests before their Jobs go away.
        new_status = self._full_status(decision, meta, store=store, rerun=rerun)
        await self._write_status(new_status)
        self.state = decision.state

        # 3. Deletes and suspends: safe to repeat, so errors are only logged.
        for action in decision.actions:
            try:
                if isinstance(action, DeleteShard):
                    await self._delete(action.shard_id, now)
                elif isinstance(action, SuspendShard):
                    await self.api.suspend_job(
                        self.namespace, job_name(self.name, action.shard_id), action.suspend
                    )
            except ApiError as error:
                log.info("will retry: %s", error)
        for action in decision.actions:
            if isinstance(action, Event):
                self.emit(action)
        self._record(decision)
        return Outcome(decision.next_wakeup, decision.done)

    # -- pieces ------------------------------------------------------------------------------

    def _state(self, status: Mapping[str, Any]) -> CoreState:
        if self.state is not None:
            return self.state
        held = status.get("phase") == "Failed" and any(
            c.get("type") in (conditions.INVALID, conditions.WAITING_FOR_DEPENDENCIES)
            and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        try:
            state = CoreState.from_status(status)
        except StateError as error:
            log.warning(
                "%s/%s: starting from the Jobs that exist: %s", self.namespace, self.name, error
            )
            state = CoreState.initial()
        if held:
            # It failed only because it was invalid; now that it is valid it may start.
            state = CoreState(conditions=state.conditions, next_shard=state.next_shard)
        return state

    async def _core_spec(self, job: MicrotaskJob, rerun: Rerun | None) -> Any:
        if rerun is not None:
            # The source's unfinished indexes, fixed at the start: the ConfigMap is not counted.
            return to_core_spec(job, universe=rerun.indexes)
        ref = job.spec.items.config_map_ref
        if ref is not None and self.config_map is None:
            data = await self.api.get_config_map(self.namespace, ref.name)
            if data is None:
                raise ItemsError(f"ConfigMap {ref.name!r} not found in namespace {self.namespace}")
            self.config_map = data
        total = None
        if self.last_status and self.last_status.get("startTime") and self.last_status.get("total"):
            # The item count is fixed once running: a ConfigMap edited later cannot move it.
            total = int(self.last_status["total"])
        return to_core_spec(job, self.config_map, total=total)

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
                now, meta, "Failed", conditions.INVALID, True, problem.reason, problem.message
            )
        waiting = problem.reason in (SourceReason.NOT_FOUND, SourceReason.NOT_FINISHED)
        return await self._hold(
            now,
            meta,
            "Pending",
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

    def _dependencies(self, job: MicrotaskJob) -> tuple[bool, str] | None:
        missing = []
        for dep in job.spec.depends_on:
            phase = self.cluster.phase_of(self.namespace, dep)
            if phase == "Failed":
                return True, f"dependency {dep} failed"
            if phase != "Succeeded":
                missing.append(f"{dep} ({phase or 'not found'})")
        if missing:
            return False, "waiting for " + ", ".join(missing)
        return None

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

    async def _delete(self, shard_id: int, now: float) -> None:
        name = job_name(self.name, shard_id)
        self.created.pop(shard_id, None)
        sent = self.deleting.get(name)
        if sent is not None and now - sent < DELETE_MEMORY_SECONDS:
            return
        await self.api.delete_job(self.namespace, name)
        self.deleting[name] = now

    def _full_status(
        self,
        decision: Decision,
        meta: Mapping[str, Any],
        *,
        store: str | None,
        rerun: Rerun | None,
    ) -> dict[str, Any]:
        status = dict(decision.status)
        status["observedGeneration"] = int(meta.get("generation") or 0)
        if store is not None:
            status["output"] = {"url": store}
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
        status["conditions"] = conds
        return status

    async def _write_status(self, status: dict[str, Any]) -> None:
        if status == self.last_status:
            return  # nothing changed: no API write
        await self.api.patch_status(self.namespace, self.name, status)
        self.last_status = status

    async def _hold(
        self,
        now: float,
        meta: Mapping[str, Any],
        phase: str,
        condition_type: str,
        holds: bool,
        reason: str,
        message: str,
        *,
        failed_condition: bool = False,
        retry: bool = False,
        store: str | None = None,
    ) -> Outcome:
        """Write a status saying why no Jobs are made (invalid, waiting, dependency failed)."""
        previous = CoreState.from_status({"conditions": (self.last_status or {}).get("conditions")})
        conds = conditions.set_condition(
            previous.conditions, condition_type, holds, reason, message, now
        )
        if failed_condition:
            conds = conditions.set_condition(conds, conditions.FAILED, True, reason, message, now)
        conds = conditions.set_condition(conds, conditions.READY, False, reason, message, now)
        base = CoreState(phase=phase, message=message, conditions=conds).to_status()
        status = {
            "phase": phase,
            "message": message,
            "conditions": base["conditions"],
            "observedGeneration": int(meta.get("generation") or 0),
        }
        if store is not None:
            status["output"] = {"url": store}
        merged = dict(self.last_status or {})
        merged.update(status)
        if merged != self.last_status:
            await self.api.patch_status(self.namespace, self.name, status)
            self.last_status = merged
            self.emit(
                Event(
                    reason,
                    message,
                    warning=phase == "Failed" or condition_type == conditions.INVALID,
                )
            )
        if not (self.last_status or {}).get("startTime"):
            self.state = None  # never started: start from scratch once it can run
        wake = now + self.resync_seconds if retry else None
        return Outcome(wake, phase == "Failed")

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
