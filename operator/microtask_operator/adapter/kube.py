"""The few Kubernetes API calls the operator makes itself, with the races treated as normal.

A 409 on create means the Job is already there (a restart, or a retried request): adopt it.
A 404 on delete means it is already gone. 429 and 5xx are retried a few times with backoff; if they
persist the reconcile stops before writing status, and the next one starts again from what exists —
nothing is lost or counted twice. Every call is counted in `microtask_api_requests_total`.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..api.names import GROUP, PLURAL, VERSION
from ..metrics import Metrics

T = TypeVar("T")

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
    return client.ApiClient(configuration)


class ApiError(Exception):
    """A call failed for good (after retries); the reconcile stops and tries again later."""

    def __init__(self, verb: str, what: str, status: int | str, reason: str) -> None:
        super().__init__(f"{verb} {what}: {status} {reason}")
        self.status = status


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
        self, verb: str, what: str, fn: Callable[[], T], ok: frozenset[int] = frozenset()
    ) -> T | None:
        delay = self.backoff
        for attempt in range(self.attempts):
            try:
                result = await asyncio.to_thread(fn)
            except ApiException as error:
                status = int(error.status or 0)
                self.metrics.api_requests.labels(verb, str(status)).inc()
                if status in ok:
                    return None
                if status in RETRIABLE and attempt + 1 < self.attempts:
                    await asyncio.sleep(delay * (1 + random.random()))
                    delay *= 2
                    continue
                raise ApiError(verb, what, status, str(error.reason)) from None
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

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a shard's Job; False when it already existed (409: adopt it).

        A conflict is confirmed with a read: the Job must really be there, or the create is
        tried again, so a misreported conflict cannot leave a shard that nobody runs.
        """
        name = body["metadata"]["name"]
        what = f"job {namespace}/{name}"
        for _ in range(3):
            result = await self._call(
                "create",
                what,
                # A plain manifest: the client serialises dicts as they are.
                lambda: self.batch.create_namespaced_job(
                    namespace, cast(Any, body), _preload_content=False
                ),
                ok=frozenset({409}),
            )
            if result is not None:
                return True
            existing = await self._call(
                "get",
                what,
                lambda: self.batch.read_namespaced_job(name, namespace, _preload_content=False),
                ok=frozenset({404}),
            )
            if existing is not None:
                return False
        raise ApiError("create", what, 409, "conflict, but the Job does not exist")

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods."""
        await self._call(
            "delete",
            f"job {namespace}/{name}",
            lambda: self.batch.delete_namespaced_job(
                name,
                namespace,
                body=client.V1DeleteOptions(propagation_policy="Background"),
                _preload_content=False,
            ),
            ok=frozenset({404}),
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

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._call(
            "patch",
            f"microtaskjob {namespace}/{name} status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
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
