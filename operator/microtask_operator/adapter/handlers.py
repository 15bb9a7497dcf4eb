"""The kopf registrations: watches, indexes and one daemon per MicrotaskJob.

Jobs, pods and nodes are watched once and kept in kopf indexes (no LIST per reconcile). A change to
a shard's Job or pod wakes its MicrotaskJob's daemon at once; the daemon reconciles (one at a time
per MicrotaskJob) and then sleeps until the next change, the core's next time-based decision, or
the resync interval.

Deleting a MicrotaskJob stops its work first (`deletion.py`): kopf's finalizer, there for the
daemon, holds the MicrotaskJob until the deletion handler has deleted its Jobs and their pods are
gone. The daemon creates no Job once the deletion has begun. Events go through our own client in
the background (`events.py`), so a reconcile never waits for one and a lost one is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf

from ..api.names import GROUP, PLURAL, VERSION
from ..core.types import Event
from ..labels import JOB, MANAGED_BY, MANAGED_BY_VALUE
from ..metrics import Metrics
from ..settings import Settings
from .config import OperatorConfig
from .deletion import DeletionGuard, being_deleted, stop_work
from .events import EventPoster, KopfEventDrops
from .kube import ApiError, KubeApi, kube_client
from .observe import NodeInfo, node_info
from .reconcile import Cluster, Reconciler

log = logging.getLogger(__name__)

OURS = {MANAGED_BY: MANAGED_BY_VALUE}
# At exit, Events still waiting get this long to be posted.
EVENTS_AT_EXIT_SECONDS = 5.0
# When a job's loop ends, the clean-up of its last reconcile gets this long to finish.
CLEANUP_AT_END_SECONDS = 10.0


@dataclass
class Watched:
    """A MicrotaskJob as last seen by the watch, and the flag that wakes its daemon."""

    body: dict[str, Any]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = -1
    phase: str | None = None


@dataclass
class OperatorState:
    """What the handlers share within one operator process."""

    settings: Settings
    config: OperatorConfig
    metrics: Metrics
    api: KubeApi | None = None
    events: EventPoster | None = None
    jobs: dict[tuple[str, str], Watched] = field(default_factory=dict)
    # Per MicrotaskJob uid: set once its daemon has ended (the deletion handler waits for it).
    daemons: dict[str, asyncio.Event] = field(default_factory=dict)
    node_ready: dict[str, bool] = field(default_factory=dict)

    def wake(self, namespace: str, name: str) -> None:
        watched = self.jobs.get((namespace, name))
        if watched is not None:
            watched.wake.set()

    def wake_all(self, namespace: str | None = None) -> None:
        for (ns, _), watched in self.jobs.items():
            if namespace is None or ns == namespace:
                watched.wake.set()

    def wake_waiting(self, namespace: str) -> None:
        """Wake the MicrotaskJobs of `namespace` that another one's fate may let start."""
        for (ns, _), watched in self.jobs.items():
            if ns == namespace and waits_for_others(watched.body):
                watched.wake.set()


def waits_for_others(body: Mapping[str, Any]) -> bool:
    """Can another MicrotaskJob's phase or deletion change what this one does?

    Only before it starts: dependencies gate the start, and a rerun reads its source once. Waking
    every MicrotaskJob of the namespace instead made each phase change cost a reconcile of all of
    them: with a hundred jobs, most reconciles were for nothing.
    """
    if (body.get("status") or {}).get("startTime"):
        return False
    spec = body.get("spec") or {}
    return bool(spec.get("dependsOn")) or bool((spec.get("items") or {}).get("fromJob"))


class Flag(Protocol):
    """A flag to wake up on: an `asyncio.Event`, or the `stopped` kopf gives a daemon."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[Any]: ...


async def sleep_until_woken(timeout: float, *flags: Flag) -> None:
    """Sleep `timeout` seconds, or less: until one of the `flags` is set.

    One wait per sleep, not a poll: with a hundred MicrotaskJobs, a daemon checking its flags five
    times a second kept the event loop busy with wake-ups that found nothing to do.
    """
    if timeout <= 0 or any(flag.is_set() for flag in flags):
        return
    waits = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _compact_job(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in (
                "name",
                "uid",
                "labels",
                "annotations",
                "creationTimestamp",
                "deletionTimestamp",
            )
            if meta.get(k) is not None
        },
        "spec": {"suspend": bool((body.get("spec") or {}).get("suspend"))},
        "status": {"conditions": list((body.get("status") or {}).get("conditions") or [])},
    }


def _compact_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "creationTimestamp", "deletionTimestamp")
            if meta.get(k) is not None
        },
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            k: status.get(k)
            for k in ("phase", "reason", "conditions", "containerStatuses", "startTime")
            if status.get(k) is not None
        },
    }


def _owner_job(body: Mapping[str, Any]) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job":
            return str(ref.get("name"))
    return None


def build_registry(state: OperatorState) -> kopf.OperatorRegistry:
    """All handlers of one operator, registered in a registry of their own."""
    registry = kopf.OperatorRegistry()
    settings = state.settings
    config = state.config

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # kopf's own Event posts, if any, are counted when they fail, as ours are.
    kopf_drops = KopfEventDrops(state.metrics)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        config.apply_to_kopf(settings)
        # The client of our own calls reads the same credentials as kopf's watches.
        api_client = await asyncio.to_thread(kube_client)
        state.api = KubeApi(state.metrics, api_client)
        # The poster retries on its own, with longer pauses than a reconcile's calls.
        state.events = EventPoster(KubeApi(state.metrics, api_client, attempts=1), state.metrics)
        kopf_drops.install()

    @kopf.on.cleanup(registry=registry)
    async def flush_events(**_: Any) -> None:
        kopf_drops.uninstall()
        if state.events is not None:
            await state.events.close(timeout=EVENTS_AT_EXIT_SECONDS)

    # Indexes and event handlers are coroutines: kopf runs a plain function in a thread of its
    # executor (six on two cores), so every watch event of every shard queued for a thread, and
    # the wake-ups below would set asyncio Events from outside the loop (not thread-safe). On the
    # loop they are a dict update and a flag each, in the order the events came.
    @kopf.index("batch", "v1", "jobs", labels=OURS, registry=registry, id="shard_jobs")
    async def shard_jobs(**kwargs: Any) -> Any:
        owner = kwargs["labels"].get(JOB)
        if not owner:
            return None
        return {(kwargs["namespace"], owner): _compact_job(kwargs["body"])}

    @kopf.index("", "v1", "pods", labels=OURS, registry=registry, id="shard_pods")
    async def shard_pods(**kwargs: Any) -> Any:
        job = _owner_job(kwargs["body"])
        if job is None:
            return None
        return {(kwargs["namespace"], job): _compact_pod(kwargs["body"])}

    @kopf.index("", "v1", "nodes", registry=registry, id="cluster_nodes")
    async def cluster_nodes(**kwargs: Any) -> Any:
        name = kwargs["name"]
        info = node_info(kwargs["body"], settings.gpu_node_label, settings.gpu_taint_key)
        if state.node_ready.get(name) != info.ready:
            # Readiness changed (or a new node): every job may have work to move or to place.
            state.node_ready[name] = info.ready
            state.wake_all()
        return {name: info}

    @kopf.on.event("batch", "v1", "jobs", labels=OURS, registry=registry)
    async def job_changed(**kwargs: Any) -> None:
        state.wake(kwargs["namespace"], kwargs["labels"].get(JOB, ""))

    @kopf.on.event("", "v1", "pods", labels=OURS, registry=registry)
    async def pod_changed(**kwargs: Any) -> None:
        state.wake(kwargs["namespace"], kwargs["labels"].get(JOB, ""))

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_changed(**kwargs: Any) -> None:
        if kwargs.get("type") == "DELETED":
            state.node_ready.pop(kwargs["name"], None)
            state.wake_all()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def job_spec_changed(**kwargs: Any) -> None:
        namespace, name, body = kwargs["namespace"], kwargs["name"], kwargs["body"]
        key = (namespace, name)
        if kwargs.get("type") == "DELETED":
            state.jobs.pop(key, None)
            state.wake_waiting(namespace)  # dependants learn their dependency is gone
            return
        watched = state.jobs.get(key)
        plain = dict(body)
        if watched is None:
            watched = state.jobs[key] = Watched(body=plain)
        watched.body = plain
        generation = int((plain.get("metadata") or {}).get("generation") or 0)
        phase = (plain.get("status") or {}).get("phase")
        if generation != watched.generation or being_deleted(plain):
            # A new spec, or a deletion: its daemon acts on it now, not at its next wake-up.
            watched.generation = generation
            watched.wake.set()
        if phase != watched.phase:
            watched.phase = phase
            state.wake_waiting(namespace)  # a dependency may have finished

    # Only for MicrotaskJobs being deleted: a handler matching every MicrotaskJob would make kopf
    # keep a copy of each spec in an annotation, too big for large inline item lists.
    @kopf.on.delete(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="stop_work",
        when=lambda body, **_: being_deleted(body),
    )
    async def stop_deleted_work(**kwargs: Any) -> None:
        namespace, name = kwargs["namespace"], kwargs["name"]
        uid = str(kwargs["meta"].get("uid") or "")
        assert state.api is not None
        try:
            await stop_work(state.api, namespace, name, uid, daemon_done=state.daemons.get(uid))
        except ApiError as error:
            raise kopf.TemporaryError(f"stopping its shards: {error}", delay=2.0) from None

    # The loop notices `stopped` within a fraction of a second; cancelling is the last resort.
    @kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        cancellation_backoff=5.0,
        cancellation_timeout=5.0,
    )
    async def run_job(**kwargs: Any) -> None:
        # kopf passes everything by keyword; the indexes come under their handler ids.
        namespace: str = kwargs["namespace"]
        name: str = kwargs["name"]
        body: Any = kwargs["body"]
        stopped: Any = kwargs["stopped"]
        logger: logging.Logger = kwargs["logger"]
        shard_jobs: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["shard_jobs"]
        shard_pods: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["shard_pods"]
        cluster_nodes: kopf.Index[str, NodeInfo] = kwargs["cluster_nodes"]
        key = (namespace, name)
        watched = state.jobs.setdefault(key, Watched(body=dict(body)))
        uid = str((body.get("metadata") or {}).get("uid") or "")
        ended = state.daemons[uid] = asyncio.Event()
        assert state.api is not None and state.events is not None
        events = state.events

        def deleting() -> bool:
            return being_deleted(watched.body)

        def jobs_of(ns: str, mtj: str) -> Sequence[Mapping[str, Any]]:
            return list(shard_jobs.get((ns, mtj), ()))

        def pods_of(ns: str, job: str) -> Sequence[Mapping[str, Any]]:
            return list(shard_pods.get((ns, job), ()))

        def nodes() -> Mapping[str, NodeInfo]:
            return {n: next(iter(store)) for n, store in cluster_nodes.items() if store}

        def phase_of(ns: str, mtj: str) -> str | None:
            other = state.jobs.get((ns, mtj))
            return other.phase if other else None

        def job_of(ns: str, mtj: str) -> Mapping[str, Any] | None:
            other = state.jobs.get((ns, mtj))
            return other.body if other else None

        def emit(event: Event) -> None:
            events.post(watched.body, event)

        reconciler = Reconciler(
            namespace=namespace,
            name=name,
            api=DeletionGuard(state.api, deleting),
            metrics=state.metrics,
            settings=settings,
            resync_seconds=config.resync_seconds,
            cluster=Cluster(
                jobs=jobs_of, pods=pods_of, nodes=nodes, phase_of=phase_of, job_of=job_of
            ),
            emit=emit,
            wake=watched.wake.set,
        )
        failures = 0
        try:
            while not stopped and not deleting():
                watched.wake.clear()
                timeout = config.resync_seconds
                settle = False  # nothing left to start: changes may gather longer
                try:
                    outcome = await reconciler.reconcile(watched.body)
                    failures = 0
                    settle = outcome.settle
                    if outcome.next_wakeup is not None:
                        timeout = min(timeout, max(0.0, outcome.next_wakeup - reconciler.clock()))
                except ApiError as error:
                    failures += 1
                    timeout = min(config.resync_seconds, 0.5 * 2 ** min(failures, 6))
                    logger.warning("reconcile interrupted, retrying in %.1fs: %s", timeout, error)
                    if failures >= 3:  # not a blip: say it where users look
                        with contextlib.suppress(Exception):
                            await reconciler.report_error(error)
                except Exception as error:  # a bug or an object we cannot use: never die silently
                    failures += 1
                    timeout = min(config.resync_seconds, 0.5 * 2 ** min(failures, 6))
                    logger.exception("reconcile failed, retrying in %.1fs", timeout)
                    try:
                        await reconciler.report_error(error)
                    except Exception as reporting:  # e.g. the API is down as well
                        logger.warning("could not record the failure in the status: %s", reporting)
                await sleep_until_woken(timeout, watched.wake, stopped)
                pause = config.pause_after_change(settle=settle)
                if watched.wake.is_set() and pause > 0:
                    # Let a burst of pod changes land, then decide once for all of them.
                    await sleep_until_woken(pause, stopped)
        finally:
            # The last reconcile's deletes run behind it: they end before the loop does.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reconciler.flush(), CLEANUP_AT_END_SECONDS)
            state.metrics.job_deleted(namespace, name)
            ended.set()
            if state.daemons.get(uid) is ended:
                del state.daemons[uid]

    return registry
