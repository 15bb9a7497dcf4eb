"""A deleted MicrotaskJob's work stops before the MicrotaskJob goes away.

The garbage collector deletes a MicrotaskJob's Jobs (and so their pods) by itself, but only
later: for a custom resource it may first need a discovery resync, and meanwhile the pods go on
with their shards; a MicrotaskJob re-created under the same name would even run beside them. So
the operator does it itself, in kopf's deletion handler, while kopf's finalizer holds the
MicrotaskJob (kopf puts it there for the daemon already, and removes it once the daemon has ended
and the deletion handlers have succeeded):

1. delete the Jobs of this MicrotaskJob, selected by its uid label in one request (their pods in
   the background, so each runner gets SIGTERM and abandons its microtask);
2. wait for the daemon to end: kopf asks it to stop when the deletion starts, and it creates no
   Job from then on, but a create already sent may land after the first sweep: sweep again;
3. wait until the pods are gone, at most their grace period and a margin (a pod on a lost node
   may never report back; the garbage collector and the node lifecycle take it from there).

A MicrotaskJob re-created under the same name has another uid: nothing of it is touched here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..labels import JOB, JOB_UID
from .kube import KubeApi

log = logging.getLogger(__name__)

#: How long the daemon may take to end (kopf cancels it after its cancellation backoff/timeout).
DAEMON_PATIENCE = 30.0
#: Added to the longest termination grace period of the pods when waiting for them to go.
POD_MARGIN = 15.0
#: Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_GRACE = 30.0
#: Between two looks at the pods that are still there.
POLL_SECONDS = 0.25


def being_deleted(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def selector(name: str, uid: str) -> str:
    """The label selector of one MicrotaskJob's Jobs and pods (this uid only)."""
    return f"{JOB}={name},{JOB_UID}={uid}"


class DeletionGuard(KubeApi):
    """The API as one MicrotaskJob's reconciles use it: no new Job once it is being deleted.

    A reconcile that was under way when the deletion began goes on to its end; a shard it would
    start is not started (reported as existing: the MicrotaskJob and its status go away anyway).
    """

    def __init__(self, shared: KubeApi, deleting: Callable[[], bool]) -> None:
        super().__init__(shared.metrics, shared.api_client, shared.attempts, shared.backoff)
        self.deleting = deleting

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        if self.deleting():
            log.debug("%s/%s: being deleted, no new Job", namespace, body["metadata"]["name"])
            return False
        return await super().create_job(namespace, body)


@dataclass
class Cleanup:
    """What stopping one MicrotaskJob's work took."""

    jobs_deleted: int = 0
    pods_left: int = 0  # still there when the wait for them ended


async def stop_work(
    api: KubeApi,
    namespace: str,
    name: str,
    uid: str,
    *,
    daemon_done: asyncio.Event | None,
    daemon_patience: float = DAEMON_PATIENCE,
    pod_margin: float = POD_MARGIN,
) -> Cleanup:
    """Delete the MicrotaskJob's Jobs and wait for their pods (see the module's docstring).

    An ApiError (the API failed past the retries) leaves the rest to a later try: every step is
    safe to repeat.
    """
    what = f"{namespace}/{name}"
    labels = selector(name, uid)
    cleanup = Cleanup()
    cleanup.jobs_deleted += await _delete_jobs(api, namespace, labels)
    if daemon_done is not None and not daemon_done.is_set():
        try:
            await asyncio.wait_for(daemon_done.wait(), timeout=daemon_patience)
        except TimeoutError:
            log.info("%s: its loop did not end within %.0fs; going on", what, daemon_patience)
    cleanup.jobs_deleted += await _delete_jobs(api, namespace, labels)

    loop = asyncio.get_running_loop()
    deadline: float | None = None
    while True:
        pods = await api.list_pods(namespace, labels)
        cleanup.pods_left = len(pods)
        if not pods:
            break
        if deadline is None:
            grace = max(_grace(pod) for pod in pods)
            deadline = loop.time() + grace + pod_margin
        if loop.time() >= deadline:
            log.info(
                "%s: %d pod(s) still stopping after their grace period; leaving them to the "
                "garbage collector",
                what,
                len(pods),
            )
            break
        await asyncio.sleep(POLL_SECONDS)
    if cleanup.jobs_deleted:
        log.info("%s deleted: its %d Job(s) deleted, pods stopped", what, cleanup.jobs_deleted)
    return cleanup


async def _delete_jobs(api: KubeApi, namespace: str, labels: str) -> int:
    """Delete the Jobs still there, with one request; how many were not already going."""
    going = [
        job
        for job in await api.list_jobs(namespace, labels)
        if not (job.get("metadata") or {}).get("deletionTimestamp")
    ]
    if going:
        await api.delete_jobs(namespace, labels)
    return len(going)


def _grace(pod: Mapping[str, Any]) -> float:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    for value in (
        meta.get("deletionGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
    ):
        if value is not None:
            return float(value)
    return DEFAULT_GRACE
