"""The few Kubernetes API calls the operator makes itself, with the races treated as normal.

A 409 on create means the Job is already there (a restart, or a retried request): adopt it.
Jobs are deleted by label selector: those already gone simply do not match. 429 and 5xx are
retried a few times with backoff; if they persist the reconcile stops before writing status, and
the next one starts again from what exists — nothing is lost or counted twice. Every call is
counted in `microtask_api_requests_total`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..api.names import GROUP, PLURAL, VERSION
from ..labels import JOB_UID
from ..metrics import Metrics

T = TypeVar("T")

#: Threads for blocking client calls, shared by every job's reconcile. asyncio's default pool
#: (min(32, CPUs + 4) threads: 6 on two cores) made 50 jobs queue behind each other's calls;
#: the client's connection pool is sized to match, so no thread waits for a connection.
API_THREADS = 32
_THREADS = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="microtask-api")

RETRIABLE = frozenset({429, 500, 502, 503, 504})


def kube_client() -> client.ApiClient:
    """A client with the pod's service account in a cluster, else $KUBECONFIG or ~/.kube/config."""
    from kubernetes import config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    configuration.connection_pool_maxsize = API_THREADS
    return client.ApiClient(configuration)


class ApiError(Exception):
    """A call failed for good (after retries); the reconcile stops and tries again later."""

    def __init__(
        self, verb: str, what: str, status: int | str, reason: str, detail: str = ""
    ) -> None:
        super().__init__(f"{verb} {what}: {status} {reason}" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail  # the API server's own words (its Status message), when it said any

    @property
    def refused(self) -> bool:
        """The request itself is refused (invalid, or by admission): repeating it cannot help."""
        if self.status in (400, 422):
            return True
        # RBAC ("cannot create") and quotas ("exceeded quota") may pass; admission's no will not.
        transient = ("cannot ", "exceeded quota")
        return self.status == 403 and not any(t in self.detail for t in transient)


def _status_message(error: ApiException) -> str:
    """The message of the Status object the API server answered with, if any."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""


def _read_to_end(call: Callable[[], T]) -> T:
    """Make the call, and read an unparsed answer (`_preload_content=False`) to its end.

    Only a response read to its end gives its connection back to the pool. Left unread, it was
    closed when the response was collected: every call paid for a new TCP and TLS connection,
    on both sides, which under load cost more than the API server's own work.
    """
    result = call()
    if isinstance(result, urllib3.HTTPResponse):
        result.data  # noqa: B018 (read, and kept: some callers parse it)
        result.release_conn()
    return result


class KubeApi:
    """Blocking client calls run in threads so the operator's event loop never stalls."""

    def __init__(
        self,
        metrics: Metrics,
        api_client: client.ApiClient | None = None,
        attempts: int = 4,
        backoff: float = 0.2,
    ) -> None:
        self.metrics = metrics
        self.api_client = api_client or client.ApiClient()
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.attempts = attempts
        self.backoff = backoff

    async def _call(
        self, verb: str, what: str, call: Callable[[], T], ok: frozenset[int] = frozenset()
    ) -> T | None:
        fn = functools.partial(_read_to_end, call)
        delay = self.backoff
        for attempt in range(self.attempts):
            try:
                result = await asyncio.get_running_loop().run_in_executor(_THREADS, fn)
            except ApiException as error:
                status = int(error.status or 0)
                self.metrics.api_requests.labels(verb, str(status)).inc()
                if status in ok:
                    return None
                if status in RETRIABLE and attempt + 1 < self.attempts:
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay *= 2
                    continue
                raise ApiError(
                    verb, what, status, str(error.reason), _status_message(error)
                ) from None
            except Exception as error:  # connection refused, timeouts: the API is unreachable
                self.metrics.api_requests.labels(verb, "error").inc()
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay *= 2
                    continue
                raise ApiError(verb, what, "error", str(error)) from None
            self.metrics.api_requests.labels(verb, "200" if verb != "create" else "201").inc()
            return result
        raise AssertionError("unreachable")

    async def _create_confirmed(
        self, what: str, create: Callable[[], Any], read: Callable[[], Any]
    ) -> bool:
        """Create an object; False when it already existed (409: adopt it).

        A conflict is confirmed with a read: the object must really be there, or the create is
        tried again, so a misreported conflict cannot pass for an object nobody made.
        """
        for _ in range(3):
            if await self._call("create", what, create, ok=frozenset({409})) is not None:
                return True
            if await self._call("get", what, read, ok=frozenset({404})) is not None:
                return False
        raise ApiError("create", what, 409, "conflict, but it does not exist")

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a shard's Job; False when it already existed (a restart, a retried request).

        A Job of that name left by an earlier MicrotaskJob of the same name (still being
        deleted: its `job-uid` label differs) is not this shard's: that conflict is raised, so
        the shard is created once the old Job is gone, not taken for created.
        """
        name = body["metadata"]["name"]
        what = f"job {namespace}/{name}"
        existing: list[Any] = []

        def read() -> Any:
            existing.append(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
            return existing[-1]

        created = await self._create_confirmed(
            what,
            # A plain manifest: the client serialises dicts as they are.
            lambda: self.batch.create_namespaced_job(
                namespace, cast(Any, body), _preload_content=False
            ),
            read,
        )
        if not created and existing:
            found = json.loads(existing[-1].data or b"{}")
            wanted = (body["metadata"].get("labels") or {}).get(JOB_UID)
            theirs = ((found.get("metadata") or {}).get("labels") or {}).get(JOB_UID)
            if wanted and theirs and theirs != wanted:
                raise ApiError(
                    "create",
                    what,
                    409,
                    "Conflict",
                    "a Job of an earlier MicrotaskJob of this name is still being deleted",
                )
        return created

    async def delete_jobs(self, namespace: str, selector: str) -> None:
        """Delete every Job matching a label selector in one request (pods in the background).

        One write however many shards a reconcile harvested: deleting them one by one made the
        deletes as many writes as the creates.
        """
        await self._call(
            "deletecollection",
            f"jobs {namespace} {selector}",
            lambda: self.batch.delete_collection_namespaced_job(
                namespace,
                label_selector=selector,
                propagation_policy="Background",
                _preload_content=False,
            ),
        )

    async def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        await self._call(
            "patch",
            f"job {namespace}/{name}",
            lambda: self.batch.patch_namespaced_job(
                name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False
            ),
            ok=frozenset({404}),
        )

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge `patch` into a MicrotaskJob's status (a JSON merge patch: null removes a key)."""
        await self._call(
            "patch",
            f"microtaskjob {namespace}/{name} status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": patch},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            ),
        )

    async def get_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A MicrotaskJob's status as the API server holds it now; None when the job is gone."""
        # A list of one (RBAC grants list and watch on MicrotaskJobs, not get).
        listed = await self._list(
            f"microtaskjob {namespace}/{name}",
            lambda: self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                _preload_content=False,
            ),
        )
        if not listed:
            return None
        return dict(listed[0].get("status") or {})

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge annotations into a MicrotaskJob's metadata (its status cannot lose them)."""
        await self._call(
            "patch",
            f"microtaskjob {namespace}/{name}",
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"annotations": annotations}},
                _preload_content=False,
            ),
        )

    async def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data, or None when it does not exist."""
        result = await self._call(
            "get",
            f"configmap {namespace}/{name}",
            lambda: self.core.read_namespaced_config_map(name, namespace),
            ok=frozenset({404}),
        )
        if result is None:
            return None
        data = getattr(result, "data", None) or {}
        return {str(k): str(v) for k, v in data.items()}

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a ConfigMap (a job's copy of its items); False when it already existed."""
        name = body["metadata"]["name"]
        return await self._create_confirmed(
            f"configmap {namespace}/{name}",
            lambda: self.core.create_namespaced_config_map(
                namespace, cast(Any, body), _preload_content=False
            ),
            lambda: self.core.read_namespaced_config_map(name, namespace, _preload_content=False),
        )

    async def put_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap, or replace the one of that name (its data is the new truth)."""
        name = body["metadata"]["name"]
        what = f"configmap {namespace}/{name}"
        created = await self._call(
            "create",
            what,
            lambda: self.core.create_namespaced_config_map(
                namespace, cast(Any, body), _preload_content=False
            ),
            ok=frozenset({409}),
        )
        if created is not None:
            return
        # It exists (an earlier write): replaced unconditionally, ConfigMaps allow it.
        await self._call(
            "update",
            what,
            lambda: self.core.replace_namespaced_config_map(
                name, namespace, cast(Any, body), _preload_content=False
            ),
        )

    # Refusals of a shard's pod that waiting does not cure (the template must change): Pod
    # Security admission, and a pod the API server finds invalid. Quota and other refusals pass
    # once capacity frees up, so the shard just waits.
    FINAL_REFUSALS = ("violates PodSecurity", "is invalid")

    async def pod_refusals(
        self, namespace: str, job_name: str, *, uid: str | None = None
    ) -> str | None:
        """Why the Job controller cannot create the pod of Job `job_name`, when that is final.

        The message of the latest such FailedCreate Event of the Job (of the Job with `uid`
        only, when given: a re-created Job of the same name inherits no old Events), or None.
        """
        selector = f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate"
        if uid:
            selector += f",involvedObject.uid={uid}"
        listed = await self._call(
            "list",
            f"events of job {namespace}/{job_name}",
            lambda: self.core.list_namespaced_event(namespace, field_selector=selector),
        )
        return self.final_refusal(getattr(listed, "items", None) or [])

    @classmethod
    def final_refusal(cls, events: list[Any]) -> str | None:
        """The message of the latest Event (CoreV1Event) that is a final refusal, or None."""
        final = [
            event
            for event in events
            if any(marker in (event.message or "") for marker in cls.FINAL_REFUSALS)
        ]
        if not final:
            return None

        def when(event: Any) -> str:
            moment = (
                event.last_timestamp
                or event.event_time
                or (event.metadata.creation_timestamp if event.metadata else None)
            )
            return moment.isoformat() if moment is not None else ""

        return str(max(final, key=when).message)

    async def create_event(
        self, namespace: str, body: dict[str, Any], *, timeout: float = 10.0
    ) -> None:
        """Post a core/v1 Event (`body` names it): a 409 means an earlier try got through.

        Bounded in time: a hung connection must not hold one of the threads forever.
        """
        name = body["metadata"]["name"]
        await self._call(
            "create",
            f"event {namespace}/{name}",
            lambda: self.core.create_namespaced_event(
                namespace, cast(Any, body), _preload_content=False, _request_timeout=timeout
            ),
            ok=frozenset({409}),
        )

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Jobs matching a label selector, read from the API server (not from a cache)."""
        return await self._list(
            f"jobs {namespace} {selector}",
            lambda: self.batch.list_namespaced_job(
                namespace, label_selector=selector, _preload_content=False
            ),
        )

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods matching a label selector, read from the API server (not from a cache)."""
        return await self._list(
            f"pods {namespace} {selector}",
            lambda: self.core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            ),
        )

    async def _list(self, what: str, fn: Callable[[], Any]) -> list[dict[str, Any]]:
        # The answer is read in the call's thread: reading it here would block the event loop.
        listed = await self._call("list", what, lambda: json.loads(fn().data))
        return list((listed or {}).get("items") or [])
