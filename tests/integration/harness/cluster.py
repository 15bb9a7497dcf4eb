"""An emulated cluster in a background thread: API server + control plane + test helpers.

``Cluster`` starts its own event loop in a daemon thread, serves the API on 127.0.0.1 with a
free port, writes a kubeconfig, and offers synchronous helpers for tests (create/get/list/
patch/delete objects, bounded waits, request-log queries, fault injection, node knobs).
Helpers act on the store inside the emulator's loop, so they are thread-safe and do not
show up in the request log: the log holds only what clients (the operator) asked over HTTP.

Stopping kills every container process, closes every watch and joins the thread; it fails
loudly if anything is left behind, so a leak breaks the test that caused it.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

import yaml

from .controlplane import ControlPlane, ControlPlaneSettings, NodeSpec, default_nodes
from .emulator import ApiEmulator, ApiRequest, ApiServer, Fault, RequestLog
from .resources import ResourceDef
from .selectors import FieldSelector, LabelSelector
from .store import ApiError, DeleteOptions, Store

__all__ = ["Cluster", "load_crds"]

T = TypeVar("T")


def load_crds(path: Path) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in a (multi-document) YAML file."""
    with path.open() as handle:
        docs = [doc for doc in yaml.safe_load_all(handle) if doc]
    return [doc for doc in docs if doc.get("kind") == "CustomResourceDefinition"]


class Cluster:
    """A running emulated cluster (use as a context manager or call start/stop)."""

    def __init__(
        self,
        *,
        nodes: Sequence[NodeSpec] | None = None,
        crds: Iterable[Mapping[str, Any] | Path] = (),
        namespaces: Sequence[str] = ("default",),
        settings: ControlPlaneSettings | None = None,
        control_plane: bool = True,
        bookmark_interval: float = 5.0,
        history_limit: int = 20_000,
        startup_timeout: float = 10.0,
    ) -> None:
        self._node_specs = list(default_nodes() if nodes is None else nodes)
        self._crds = list(crds)
        self._namespaces = list(namespaces)
        self._settings = settings or ControlPlaneSettings()
        self._with_control_plane = control_plane
        self._bookmark_interval = bookmark_interval
        self._history_limit = history_limit
        self._startup_timeout = startup_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.emulator: ApiEmulator | None = None
        self.control_plane: ControlPlane | None = None
        self.url = ""
        self.kubeconfig = Path()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start the thread and wait (bounded) until the API answers."""
        self._tmpdir = tempfile.TemporaryDirectory(prefix="microtask-cluster-")
        self._thread = threading.Thread(target=self._run, name="emulated-cluster", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout):
            raise TimeoutError("the emulated cluster did not start in time")
        if self._startup_error is not None:
            self._thread.join(5)
            raise RuntimeError("the emulated cluster failed to start") from self._startup_error
        self.kubeconfig = Path(self._tmpdir.name) / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        return self

    def stop(self) -> None:
        """Stop everything; raises if processes or the thread are left behind."""
        leaked = 0
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)
            if self._thread.is_alive():
                raise RuntimeError("the emulated cluster thread did not stop")
            if self.control_plane is not None:
                leaked = self.control_plane.leaked_processes
            self._loop = None  # stopping twice is harmless
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        if leaked:
            raise RuntimeError(f"{leaked} container processes survived the cluster shutdown")

    @property
    def running(self) -> bool:
        """Whether the cluster's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            store = Store(history_limit=self._history_limit)
            self.emulator = ApiEmulator(store=store, bookmark_interval=self._bookmark_interval)
            ns_res = store.resource("", "v1", "namespaces")
            for name in dict.fromkeys([*self._namespaces, "default", "kube-system"]):
                store.create(ns_res, None, {"metadata": {"name": name}})
            crd_res = store.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            for crd in self._crds:
                for doc in load_crds(crd) if isinstance(crd, Path) else [crd]:
                    store.create(crd_res, None, doc)
            server = ApiServer(self.emulator)
            await server.__aenter__()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        gc = asyncio.create_task(store.run_gc(), name="garbage-collector")
        try:
            if self._with_control_plane:
                settings = self._settings
                if settings.workdir is None and self._tmpdir is not None:
                    settings.workdir = Path(self._tmpdir.name) / "pods"
                self.control_plane = ControlPlane(store, self._node_specs, settings)
                await self.control_plane.start()
                self.emulator.log_provider = self.control_plane.pod_log
                plane = self.control_plane

                async def evict(namespace: str, name: str, body: Mapping[str, Any]) -> None:
                    await plane.evict(namespace, name, via_api=True)

                self.emulator.eviction_handler = evict
            self.url = server.url
            self._ready.set()
            await self._stop.wait()
        finally:
            if self.control_plane is not None:
                await self.control_plane.stop()
            await server.__aexit__(None, None, None)
            gc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gc

    # --- calling into the loop -----------------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the cluster's loop and return its result (exceptions propagate)."""
        if self._loop is None:
            raise RuntimeError("the cluster is not running")

        async def run() -> T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"cluster call did not finish in {timeout}s") from None

    def call_async(self, coro_fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run a coroutine function on the cluster's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the cluster is not running")
        future = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        return future.result(timeout)

    @property
    def store(self) -> Store:
        """The store (only touch it inside :meth:`call`)."""
        assert self.emulator is not None
        return self.emulator.store

    @property
    def plane(self) -> ControlPlane:
        """The control plane (only touch it inside :meth:`call`)."""
        if self.control_plane is None:
            raise RuntimeError("this cluster runs without a control plane")
        return self.control_plane

    # --- client configuration ------------------------------------------------------------------

    def kubeconfig_dict(self) -> dict[str, Any]:
        """A kubeconfig pointing at the emulator (a token is set; the emulator ignores it)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "emulated", "user": {"token": "emulated-token"}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {"cluster": "emulated", "user": "emulated", "namespace": "default"},
                }
            ],
            "current-context": "emulated",
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment for an operator process: KUBECONFIG and a PATH with the runner on it."""
        path = os.pathsep.join([*self._settings.path_prepend, os.environ.get("PATH", "")])
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def api_client(self) -> Any:
        """An official ``kubernetes`` ApiClient configured for this cluster."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"BearerToken": "emulated-token"}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    # --- objects -------------------------------------------------------------------------------

    def resource(self, ref: str) -> ResourceDef:
        """Resolve ``pods``, ``Job``, ``jobs.batch``, ``batch/v1/jobs``, ``mtj``, ..."""
        return self.call(lambda: self.store.registry.find(ref))

    def apply_crd(self, crd: Mapping[str, Any] | Path) -> None:
        """Create (or replace) CRDs so their resources are served."""
        docs = load_crds(crd) if isinstance(crd, Path) else [dict(crd)]

        def apply() -> None:
            res = self.store.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            for doc in docs:
                name = doc["metadata"]["name"]
                current = self.store.peek(res, None, name)
                if current is None:
                    self.store.create(res, None, doc)
                else:
                    body = dict(
                        doc,
                        metadata=dict(
                            doc["metadata"], resourceVersion=current["metadata"]["resourceVersion"]
                        ),
                    )
                    self.store.replace(res, None, name, body)

        self.call(apply)

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object (resource from apiVersion/kind); returns it as stored."""

        def create() -> dict[str, Any]:
            res = self._res_of(obj)
            ns = (
                namespace
                or (obj.get("metadata") or {}).get("namespace")
                or ("default" if res.namespaced else None)
            )
            return self.store.present(res, self.store.create(res, ns, obj))

        return self.call(create)

    def _res_of(self, obj: Mapping[str, Any]) -> ResourceDef:
        api_version, kind = obj.get("apiVersion", "v1"), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for res in self.store.registry.all():
            if res.group == group and res.version == version and res.kind == kind:
                return res
        raise KeyError(f"no resource serves {api_version} {kind}")

    def get(
        self, resource: str, name: str, namespace: str | None = "default"
    ) -> dict[str, Any] | None:
        """An object's current state (a copy), or None."""

        def get() -> dict[str, Any] | None:
            res = self.store.registry.find(resource)
            obj = self.store.peek(res, namespace if res.namespaced else None, name)
            return None if obj is None else self.store.present(res, obj)

        return self.call(get)

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects (copies) of a resource, optionally scoped and filtered by selectors."""

        def list_() -> list[dict[str, Any]]:
            res = self.store.registry.find(resource)
            found = self.store.select(
                res,
                namespace,
                LabelSelector.parse(labels),
                FieldSelector.parse(fields, res.group, res.plural),
            )
            return [self.store.present(res, obj) for obj in found]

        return self.call(list_)

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = "default",
        *,
        subresource: str | None = None,
        patch_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        """Patch an object (merge patch by default)."""

        def patch_() -> dict[str, Any]:
            res = self.store.registry.find(resource)
            return self.store.present(
                res,
                self.store.patch(
                    res,
                    namespace if res.namespaced else None,
                    name,
                    patch_type,
                    patch,
                    subresource=subresource,
                ),
            )

        return self.call(patch_)

    def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = "default",
        *,
        propagation: str | None = "Background",
        grace: int | None = None,
        missing_ok: bool = True,
    ) -> None:
        """Delete an object (Background propagation by default, as kubectl does)."""

        def delete() -> None:
            res = self.store.registry.find(resource)
            try:
                self.store.delete(
                    res,
                    namespace if res.namespaced else None,
                    name,
                    DeleteOptions(propagation=propagation, grace=grace),
                )
            except ApiError as exc:
                if not (missing_ok and exc.code == 404):
                    raise

        self.call(delete)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that (bounded)."""
        deadline = time.monotonic() + timeout
        last: T = predicate()
        while not last:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {message}; last value: {last!r}"
                )
            time.sleep(interval)
            last = predicate()
        return last

    def wait_gone(
        self, resource: str, name: str, namespace: str | None = "default", timeout: float = 10.0
    ) -> None:
        """Wait until an object no longer exists."""
        self.wait_for(
            lambda: self.get(resource, name, namespace) is None,
            timeout,
            message=f"{resource}/{name} to be gone",
        )

    # --- request log and faults ----------------------------------------------------------------

    @property
    def requests(self) -> RequestLog:
        """The request log (read it through the helpers below from the test thread)."""
        assert self.emulator is not None
        return self.emulator.request_log

    def mark(self) -> int:
        """A position in the request log, for ``since=`` in the queries below."""
        return self.call(lambda: self.requests.next_seq)

    def request_list(
        self, verb: str | None = None, resource: str | None = None, **criteria: Any
    ) -> builtins.list[ApiRequest]:
        """Recorded requests matching the criteria (see :meth:`RequestLog.select`)."""
        return self.call(lambda: self.requests.select(verb, resource, **criteria))

    def count_requests(
        self, verb: str | None = None, resource: str | None = None, **criteria: Any
    ) -> int:
        """How many recorded requests match."""
        return len(self.request_list(verb, resource, **criteria))

    def count_writes(
        self, resource: str | None = None, *, since: int = 0
    ) -> Counter[tuple[str, str, str | None]]:
        """Write requests by (verb, resource, subresource)."""
        return self.call(lambda: self.requests.writes(since=since, resource=resource))

    def verbs_used(self, *, since: int = 0) -> set[tuple[str, str, str]]:
        """(group, resource[/subresource], verb) triples clients used (compare with RBAC)."""
        return self.call(lambda: self.requests.verbs_used(since=since))

    def inject_fault(
        self,
        code: int,
        *,
        times: int = 1,
        verb: str | None = None,
        resource: str | None = None,
        group: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | EllipsisType | None = ...,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail with ``code``, changing nothing."""
        fault = Fault(
            code=code,
            remaining=times,
            verb=verb,
            resource=resource,
            group=group,
            namespace=namespace,
            name=name,
            subresource=subresource,
            retry_after=retry_after,
            message=message,
        )
        assert self.emulator is not None
        emulator = self.emulator
        return self.call(lambda: emulator.faults.add(fault))

    def clear_faults(self) -> None:
        """Disarm all injected faults."""
        assert self.emulator is not None
        emulator = self.emulator
        self.call(emulator.faults.clear)

    def compact(self) -> None:
        """Drop watch history so resuming watches get 410 Gone (as after etcd compaction)."""
        self.call(self.store.compact)

    # --- control-plane knobs -------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        """Register another node."""
        self.call(lambda: self.plane.add_node(spec))

    def delete_node(self, name: str) -> None:
        """Delete a node (its pods are force-deleted by the pod GC)."""
        self.call(lambda: self.plane.delete_node(name))

    def set_node_ready(self, name: str, ready: bool) -> None:
        """Lose a node (False: processes die, pods stay Running) or bring it back."""
        self.call(lambda: self.plane.set_node_ready(name, ready))

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        """Cordon or uncordon a node."""
        self.call(lambda: self.plane.cordon(name, unschedulable))

    def set_node_capacity(self, name: str, **changes: Any) -> None:
        """Change allocatable ``gpus``, ``cpu`` or ``pods`` of a node."""
        self.call(lambda: self.plane.set_node_capacity(name, **changes))

    def set_node_behaviour(self, name: str, **behaviour: Any) -> None:
        """``start_delay=`` seconds (slow node) or ``fail_exit_code=`` (every pod fails)."""
        self.call(lambda: self.plane.set_node_behaviour(name, **behaviour))

    def evict_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        via_api: bool = False,
        message: str = "The node was low on resource: memory.",
    ) -> None:
        """Evict a pod (kubelet-style by default: Failed/Evicted with DisruptionTarget)."""
        self.call_async(lambda: self.plane.evict(namespace, name, via_api=via_api, message=message))

    def oom_kill(self, name: str, namespace: str = "default") -> None:
        """Kill a pod's container like the OOM killer (exit 137, reason OOMKilled)."""
        self.call(lambda: self.plane.oom_kill(namespace, name))

    def pod_pid(self, name: str, namespace: str = "default") -> int | None:
        """The pid of a pod's running container process."""
        return self.call(lambda: self.plane.pod_pid(namespace, name))

    def pod_log(self, name: str, namespace: str = "default") -> str | None:
        """A pod's container output."""
        return self.call(lambda: self.plane.pod_log(namespace, name))

    def running_processes(self) -> int:
        """Container processes currently alive."""
        return self.call(self.plane.running_processes)

    # --- diagnostics ---------------------------------------------------------------------------

    def dump(self, resources: Sequence[str] = ("jobs", "pods", "nodes")) -> str:
        """A compact text dump of objects, for assertion messages."""
        lines = []
        for ref in resources:
            for obj in self.list(ref):
                meta, status = obj["metadata"], obj.get("status") or {}
                summary = {
                    k: status[k] for k in ("phase", "active", "succeeded", "failed") if k in status
                }
                conditions = [f"{c['type']}={c['status']}" for c in status.get("conditions") or []]
                lines.append(
                    f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']} "
                    f"{json.dumps(summary)} {' '.join(conditions)}"
                )
        return "\n".join(lines)
