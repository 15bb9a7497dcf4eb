"""Our kubelet: the one Kubernetes component the tests fake, talking to the real API server.

Like kwok it registers Node objects and keeps them alive (a Lease renewed every second; the real
node lifecycle controller marks a node NotReady, taints it and evicts when that stops), but it
really runs each pod bound to its nodes: ``containers[0]`` becomes a local process (see
:mod:`.containers`), and the pod's status goes through the status subresource as a kubelet
writes it: Running, then Succeeded/Failed with the container's ``terminated`` state, exit code,
reason and termination message. Deletion is graceful (SIGTERM, the grace period, SIGKILL to the
process group, then the final delete with grace 0).

Knobs for tests: lost nodes (heartbeats stop, processes die, pods are left as they were), deleted
nodes, cordons, capacity changes, slow or always-failing nodes, evictions (by the kubelet or the
Eviction API) and OOM kills.

It runs its own event loop in a thread; the knobs are thread-safe, blocking calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import datetime
import itertools
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar

import aiohttp

from .apiclient import MERGE_PATCH, ApiError, AsyncApi
from .containers import (
    PENDING_REASONS,
    ContainerConfigError,
    ContainerSettings,
    Launch,
    prepare,
    termination_message,
)

__all__ = [
    "GPU_LABEL",
    "GPU_RESOURCE",
    "Kubelet",
    "KubeletSettings",
    "NodeSpec",
    "cpu_node",
    "default_nodes",
    "gpu_node",
    "process_alive",
    "schedulable",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
KUBELET_VERSION = "v1.33.13"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


def now_iso() -> str:
    """RFC 3339 with second precision, as the API server writes most times."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A MicroTime (Leases)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def set_condition(
    status: dict[str, Any], type_: str, value: str, reason: str | None = None, message: str = ""
) -> None:
    """Set a condition as the kubelet does; ``lastTransitionTime`` moves when the status flips."""
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    condition = next((c for c in conditions if c.get("type") == type_), None)
    if condition is None:
        condition = {"type": type_}
        conditions.append(condition)
    if condition.get("status") != value:
        condition["lastTransitionTime"] = now_iso()
    condition["status"] = value
    condition.pop("reason", None)
    condition.pop("message", None)
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message


@dataclass
class NodeSpec:
    """A node our kubelet plays."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)

    def allocatable(self) -> dict[str, str]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
        return resources

    def to_object(self) -> dict[str, Any]:
        """The Node as a kubelet registers it."""
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "microtask-test",
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": copy.deepcopy(self.taints)},
        }


def cpu_node(name: str, cpu: str = "8", **kwargs: Any) -> NodeSpec:
    """A plain CPU node."""
    return NodeSpec(name=name, cpu=cpu, **kwargs)


def gpu_node(name: str, gpus: int = 2, cpu: str = "8", **kwargs: Any) -> NodeSpec:
    """A GPU node with the common NVIDIA conventions: label, taint and ``nvidia.com/gpu``."""
    labels = {GPU_LABEL: "true", "nvidia.com/gpu.count": str(gpus)}
    labels.update(kwargs.pop("labels", {}))
    taints = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    taints.extend(kwargs.pop("taints", []))
    return NodeSpec(name=name, cpu=cpu, gpus=gpus, labels=labels, taints=taints, **kwargs)


def default_nodes() -> list[NodeSpec]:
    """Two CPU nodes and two GPU nodes with two GPUs each."""
    return [cpu_node("cpu-0"), cpu_node("cpu-1"), gpu_node("gpu-0"), gpu_node("gpu-1")]


@dataclass
class NodeBehaviour:
    """Per-node test behaviour."""

    start_delay: float = 0.0  # the container starts this much later (the pod is Running meanwhile)
    fail_exit_code: int | None = None  # pods fail with this exit code without running anything


@dataclass
class KubeletSettings(ContainerSettings):
    """Timings and process settings of our kubelet."""

    heartbeat_seconds: float = 1.0
    resync_seconds: float = 0.5  # a pass over the pods even without news (missed events)
    crash_backoff_seconds: float = 10.0  # first CrashLoopBackOff delay (the kubelet's)
    max_grace_seconds: float = 30.0  # cap for termination grace periods (keeps tests bounded)
    workdir: Path | None = None  # per-pod directories go here (a temporary directory otherwise)


@dataclass
class NodeState:
    spec: NodeSpec
    index: int
    uid: str = ""
    lost: bool = False  # heartbeats stopped: the node lifecycle controller will notice
    deleted: bool = False


@dataclass
class PodRun:
    """Our bookkeeping for one pod we run."""

    uid: str
    namespace: str
    name: str
    node: str
    workdir: Path
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    ended: bool = False
    kill_reason: str | None = None  # deleted | evicted | oom | lost
    eviction: tuple[str, str] | None = None  # (DisruptionTarget reason, message)


class Kubelet:
    """``with Kubelet(server, token, ca_file, nodes) as kubelet: ...``"""

    def __init__(
        self,
        server: str,
        token: str,
        ca_file: Path | None,
        nodes: Iterable[NodeSpec] = (),
        settings: KubeletSettings | None = None,
    ) -> None:
        self.server, self.token, self.ca_file = server, token, ca_file
        self.settings = settings or KubeletSettings()
        self._initial = list(nodes)
        self.nodes: dict[str, NodeState] = {}
        self.behaviours: dict[str, NodeBehaviour] = defaultdict(NodeBehaviour)
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> the pod as last watched
        self.runs: dict[str, PodRun] = {}
        self._finalizing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._ips = itertools.count(2)
        self._node_index = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._api: AsyncApi | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.root = Path()
        self.leaked_processes = 0

    # --- lifecycle (test thread) ---------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Kubelet:
        if self.settings.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="microtask-kubelet-")
            self.root = Path(self._tmp.name)
        else:
            self.root = self.settings.workdir
            self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("our kubelet did not register its nodes in time")
        if self._startup_error is not None:
            self._thread.join(10)
            raise RuntimeError("our kubelet failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Kill every container process and stop; raises when a process survived."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("our kubelet's thread did not stop")
            self._loop = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self.leaked_processes:
            raise RuntimeError(f"{self.leaked_processes} container processes survived the kubelet")

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        if self._loop is None:
            raise RuntimeError("the kubelet is not running")
        future = asyncio.run_coroutine_threadsafe(fn(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"kubelet call did not finish in {timeout}s") from None

    # --- the loop ------------------------------------------------------------------------------

    async def _main(self) -> None:
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        async with AsyncApi(self.server, self.token, self.ca_file) as api:
            self._api = api
            try:
                for spec in self._initial:
                    await self._register(spec)
                listed = asyncio.Event()
                tasks = [
                    asyncio.create_task(self._watch_pods(listed), name="kubelet-pods"),
                    asyncio.create_task(self._heartbeats(), name="kubelet-heartbeats"),
                    asyncio.create_task(self._sync_loop(), name="kubelet-sync"),
                ]
                async with asyncio.timeout(20):
                    await listed.wait()
            except BaseException as exc:
                self._startup_error = exc
                self._ready.set()
                for task in tasks:
                    task.cancel()
                return
            self._ready.set()
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._kill_everything()

    async def _kill_everything(self) -> None:
        runs = list(self.runs.values())
        for run in runs:
            _kill_group(run)
        for run in runs:
            if run.task is not None and not run.task.done():
                run.task.cancel()
                await asyncio.wait({run.task}, timeout=5)
            if run.process is not None and run.process.returncode is None:
                await asyncio.wait({asyncio.ensure_future(run.process.wait())}, timeout=5)
        self.leaked_processes = self.running_processes_now()
        self.runs.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """A task of its own, kept referenced until done (the loop holds tasks only weakly)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def api(self) -> AsyncApi:
        assert self._api is not None
        return self._api

    async def _watch_pods(self, listed: asyncio.Event) -> None:
        """List, then watch every pod; relist whenever the watch ends or fails."""
        while True:
            try:
                listing = await self.api.request("GET", "/api/v1/pods")
                self.pods = {p["metadata"]["uid"]: p for p in listing.get("items") or []}
                version = listing["metadata"]["resourceVersion"]
                listed.set()
                self._poke()
                params = {"resourceVersion": version, "timeoutSeconds": 240}
                async for event in self.api.watch("/api/v1/pods", params):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: relist
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        self.pods.pop(uid, None)
                    else:
                        self.pods[uid] = obj
                    self._poke()
            except (ApiError, aiohttp.ClientError, TimeoutError, KeyError) as exc:
                logger.debug("pod watch ended: %s", exc)
                await asyncio.sleep(0.5)

    async def _sync_loop(self) -> None:
        assert self._wake is not None and self._stop is not None
        while not self._stop.is_set():
            await self.api.sleep_or(self._wake, self.settings.resync_seconds)
            self._wake.clear()
            try:
                self._sync_once()
            except Exception:
                logger.exception("kubelet pass failed")

    def _live_nodes(self) -> set[str]:
        return {n for n, s in self.nodes.items() if not s.lost and not s.deleted}

    def _sync_once(self) -> None:
        live = self._live_nodes()
        for uid, pod in list(self.pods.items()):
            node = pod["spec"].get("nodeName")
            if node not in live:
                continue
            run = self.runs.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if run is None or run.ended:
                    if uid not in self._finalizing:
                        self._finalizing.add(uid)
                        self._spawn(self._finalize(pod))
                elif run.kill_reason is None:
                    run.kill_reason = "deleted"
                    grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                    self._spawn(self._terminate(run, grace))
                continue
            if run is None and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
                run = PodRun(
                    uid=uid,
                    namespace=pod["metadata"]["namespace"],
                    name=pod["metadata"]["name"],
                    node=node,
                    workdir=self.root / uid,
                )
                self.runs[uid] = run
                run.task = asyncio.create_task(self._run_pod(run), name=f"pod {run.name}")
        for uid, run in list(self.runs.items()):
            if uid in self.pods or run.kill_reason == "lost":
                continue
            if run.ended:
                self.runs.pop(uid, None)
                shutil.rmtree(run.workdir, ignore_errors=True)
            elif run.kill_reason is None:
                # Gone from the API while its container runs (a forced deletion whose
                # deletionTimestamp update and DELETED event came in one pass): a kubelet
                # kills the containers of pods it no longer finds.
                run.kill_reason = "deleted"
                self._spawn(self._terminate(run, 0))
        self._finalizing &= set(self.pods)

    # --- nodes ---------------------------------------------------------------------------------

    async def _register(self, spec: NodeSpec) -> None:
        state = NodeState(spec=spec, index=next(self._node_index))
        self.nodes[spec.name] = state
        try:
            node = await self.api.request("POST", "/api/v1/nodes", spec.to_object())
        except ApiError as error:
            if error.code != 409:
                raise
            node = await self.api.request("GET", f"/api/v1/nodes/{spec.name}")
        state.uid = node["metadata"]["uid"]
        await self._post_node_status(state)
        await self._renew_lease(state)

    async def _post_node_status(self, state: NodeState) -> None:
        """Report capacity, addresses and Ready=True, as a kubelet on start-up or recovery."""
        spec, address = state.spec, f"10.0.1.{10 + state.index}"

        def change(node: dict[str, Any]) -> None:
            status = node.setdefault("status", {})
            status["capacity"] = spec.allocatable()
            status["allocatable"] = spec.allocatable()
            status["addresses"] = [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": spec.name},
            ]
            status["nodeInfo"] = {
                "kubeletVersion": KUBELET_VERSION,
                "containerRuntimeVersion": "local-process://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "microtask test kubelet",
                "kernelVersion": os.uname().release,
                "machineID": spec.name,
                "systemUUID": state.uid,
                "bootID": state.uid,
                "kubeProxyVersion": "",
            }
            for type_, reason in (
                ("MemoryPressure", "KubeletHasSufficientMemory"),
                ("DiskPressure", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "KubeletHasSufficientPID"),
            ):
                set_condition(status, type_, "False", reason, f"kubelet has {reason[10:]}")
            set_condition(
                status, "Ready", "True", "KubeletReady", "kubelet is posting ready status"
            )
            for condition in status["conditions"]:
                condition["lastHeartbeatTime"] = now_iso()

        await self._update_status(f"/api/v1/nodes/{spec.name}", None, change)

    async def _renew_lease(self, state: NodeState) -> None:
        """Renew (or create) the node's Lease; a concurrent renewal's 409 means read again."""
        for _ in range(5):
            try:
                await self._renew_lease_once(state)
                return
            except ApiError as error:
                if error.code != 409:
                    raise
        raise RuntimeError(f"lease of {state.spec.name}: too many conflicts")

    async def _renew_lease_once(self, state: NodeState) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        name = state.spec.name
        try:
            lease = await self.api.request("GET", f"{path}/{name}")
        except ApiError as error:
            if error.code != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": state.uid}
                    ],
                },
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS},
            }
            lease["spec"]["renewTime"] = now_micro()
            await self.api.request("POST", path, lease)
            return
        lease["spec"]["renewTime"] = now_micro()
        await self.api.request("PUT", f"{path}/{name}", lease)

    async def _heartbeats(self) -> None:
        while True:
            await self._beat()
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _beat(self) -> None:
        """Renew every live node's lease at once.

        One after another, a slow API server made the last nodes' renewals late by the sum of
        the others' and they could miss the grace period. A renewal that fails (conflicts
        included) is retried at the next beat: the loop must outlive any one of them.
        """
        live = [s for s in list(self.nodes.values()) if not (s.lost or s.deleted)]
        results = await asyncio.gather(
            *(self._renew_lease(state) for state in live), return_exceptions=True
        )
        for state, result in zip(live, results, strict=True):
            if isinstance(result, ApiError | aiohttp.ClientError | TimeoutError | RuntimeError):
                logger.warning("lease of %s: %s (retried next beat)", state.spec.name, result)
            elif isinstance(result, Exception):
                logger.error("lease of %s (retried next beat)", state.spec.name, exc_info=result)
            elif isinstance(result, BaseException):
                raise result  # cancelled: the kubelet stops

    # --- pods ----------------------------------------------------------------------------------

    async def _update_status(
        self, path: str, uid: str | None, change: Callable[[dict[str, Any]], None]
    ) -> bool:
        """Read-modify-write an object's status (retried on conflicts); False when it is gone."""
        for _ in range(20):
            try:
                obj = await self.api.request("GET", path)
            except ApiError as error:
                if error.code == 404:
                    return False
                raise
            if uid is not None and obj["metadata"]["uid"] != uid:
                return False
            change(obj)
            try:
                await self.api.request("PUT", f"{path}/status", obj)
                return True
            except ApiError as error:
                if error.code == 404:
                    return False
                if error.code != 409:
                    raise
        raise RuntimeError(f"status of {path}: too many conflicts")

    async def _pod_status(self, run: PodRun, change: Callable[[dict[str, Any]], None]) -> bool:
        def on_pod(pod: dict[str, Any]) -> None:
            change(pod.setdefault("status", {}))

        path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"
        try:
            return await self._update_status(path, run.uid, on_pod)
        except ApiError as error:
            logger.warning("status of pod %s: %s", run.name, error)
            return False

    async def _finalize(self, pod: Mapping[str, Any]) -> None:
        """The kubelet's final delete (grace 0) once the containers are gone."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            await self.api.request("DELETE", path, body)
        except ApiError as error:
            if error.code not in (404, 409):
                logger.warning("final delete of %s: %s", meta["name"], error)
                self._finalizing.discard(meta["uid"])

    async def _terminate(self, run: PodRun, grace: float) -> None:
        """SIGTERM the container's main process, SIGKILL its whole group after the grace."""
        process = run.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(min(grace, self.settings.max_grace_seconds)):
                    await process.wait()
            except TimeoutError:
                _kill_group(run)
        elif run.task is not None and not run.task.done():
            run.task.cancel()  # not started yet (slow node): nothing to signal
        self._poke()

    async def _run_pod(self, run: PodRun) -> None:
        try:
            await self._run_pod_inner(run)
        except asyncio.CancelledError:
            if run.kill_reason in ("deleted", "evicted") and run.started_at:
                # Terminated before its container started (slow node): nothing exited cleanly.
                await self._finish(run, 137, "Error", "")
            raise
        except Exception:
            logger.exception("kubelet failed to run pod %s", run.name)
        finally:
            run.ended = True
            self._poke()

    async def _run_pod_inner(self, run: PodRun) -> None:
        pod = self.pods.get(run.uid)
        if pod is None:
            return
        container = pod["spec"]["containers"][0]
        behaviour = self.behaviours[run.node]
        run.workdir.mkdir(parents=True, exist_ok=True)
        failure = (0, "", "")
        try:
            launch: Launch | None = await prepare(self.api, pod, run.workdir, self.settings)
        except ContainerConfigError as exc:
            reason, message = exc.reason, exc.message
            if reason in PENDING_REASONS:
                # Stays Pending with a waiting container, as the kubelet keeps retrying.
                await self._pod_status(run, lambda s: _waiting(s, pod, reason, message))
                self.runs.pop(run.uid, None)
                return
            # Nothing to start (no command): the container fails to start, every time.
            launch, failure = None, (128, reason, message)
        await self._mark_running(run, pod)
        if behaviour.start_delay:
            await asyncio.sleep(behaviour.start_delay)
        if run.kill_reason is not None:
            if run.kill_reason != "lost":
                await self._finish(run, 137, "Error", "")
            return
        if behaviour.fail_exit_code is not None:
            await self._finish(run, behaviour.fail_exit_code, "Error", "")
            return
        restarts = 0
        while True:
            if launch is None:
                ended: tuple[int, str, str] | None = failure
            else:
                ended = await self._run_container(run, launch, container)
            if ended is None:
                return  # a lost node reports nothing
            exit_code, reason, message = ended
            if run.kill_reason is not None or not _restarts(pod, exit_code):
                await self._finish(run, exit_code, reason, message)
                return
            # restartPolicy Always (a Deployment's pod) or OnFailure: the container is started
            # again after a back-off that doubles, as the kubelet's CrashLoopBackOff does.
            restarts += 1
            delay = min(self.settings.crash_backoff_seconds * 2 ** (restarts - 1), 300.0)
            await self._crashed(run, ended, restarts, delay)
            await asyncio.sleep(delay)
            await self._pod_status(run, _restarted)

    async def _run_container(
        self, run: PodRun, launch: Launch, container: Mapping[str, Any]
    ) -> tuple[int, str, str] | None:
        """Run the container's process to its end: (exit code, reason, message); None if lost."""
        log_path = run.workdir / "container.log"
        with log_path.open("ab") as log:
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *launch.argv,
                    env=launch.env,
                    cwd=str(run.workdir),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"failed to create task: exec: {launch.argv[0]!r}: {exc.strerror}"
                return 128, "StartError", message
            returncode = await run.process.wait()
        # The main process is gone: tear down whatever it left behind, as a container would.
        _kill_group(run)
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if run.kill_reason == "lost":
            return None
        message = termination_message(container, launch.report_path, log_path, exit_code)
        reason = (
            "OOMKilled" if run.kill_reason == "oom" else "Completed" if not exit_code else "Error"
        )
        return exit_code, reason, message

    async def _crashed(
        self, run: PodRun, ended: tuple[int, str, str], restarts: int, delay: float
    ) -> None:
        exit_code, reason, message = ended
        finished = now_iso()

        def crashed(status: dict[str, Any]) -> None:
            for condition in ("ContainersReady", "Ready"):
                set_condition(status, condition, "False", "ContainersNotReady")
            entry = (status.get("containerStatuses") or [{}])[0]
            last = {"exitCode": exit_code, "reason": reason, "finishedAt": finished}
            last["startedAt"] = (entry.get("state") or {}).get("running", {}).get("startedAt")
            if message:
                last["message"] = message
            entry["lastState"] = {"terminated": {k: v for k, v in last.items() if v}}
            entry["restartCount"] = restarts
            entry["ready"], entry["started"] = False, False
            entry["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container",
                }
            }

        await self._pod_status(run, crashed)

    async def _mark_running(self, run: PodRun, pod: Mapping[str, Any]) -> None:
        run.started_at = now_iso()
        number = next(self._ips)
        ip = f"10.244.{number // 250}.{number % 250 + 2}"
        host_ip = f"10.0.1.{10 + self.nodes[run.node].index}"
        containers = pod["spec"]["containers"]

        def running(status: dict[str, Any]) -> None:
            status["phase"] = "Running"
            status["startTime"] = run.started_at
            status["hostIP"], status["podIP"] = host_ip, ip
            status["hostIPs"], status["podIPs"] = [{"ip": host_ip}], [{"ip": ip}]
            for condition in ("PodReadyToStartContainers", "Initialized", "ContainersReady"):
                set_condition(status, condition, "True")
            set_condition(status, "Ready", "True")
            status["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"local://{run.uid}-{c['name']}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": run.started_at}},
                }
                for c in containers
            ]

        await self._pod_status(run, running)

    async def _finish(self, run: PodRun, exit_code: int, reason: str, message: str) -> None:
        finished = now_iso()
        run.ended = True
        evicted = run.eviction
        pod = self.pods.get(run.uid)
        containers = pod["spec"]["containers"] if pod else []

        def terminated(status: dict[str, Any]) -> None:
            ok = exit_code == 0 and evicted is None
            status["phase"] = "Succeeded" if ok else "Failed"
            for condition in ("ContainersReady", "Ready"):
                set_condition(status, condition, "False", "PodCompleted" if ok else "PodFailed")
            if evicted is not None:
                set_condition(status, "DisruptionTarget", "True", evicted[0], evicted[1])
                status["reason"], status["message"] = "Evicted", evicted[1]
            state: dict[str, Any] = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": run.started_at or finished,
                "finishedAt": finished,
                "containerID": f"local://{run.uid}",
            }
            if message:
                state["message"] = message
            statuses = status.get("containerStatuses") or [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "restartCount": 0}
                for c in containers
            ]
            for index, entry in enumerate(statuses):
                entry["ready"], entry["started"] = False, False
                entry["state"] = {
                    "terminated": dict(state)
                    if index == 0
                    else {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": state["startedAt"],
                        "finishedAt": finished,
                    }
                }
            status["containerStatuses"] = statuses

        await self._pod_status(run, terminated)
        self._poke()

    # --- knobs (test thread) -------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        """Register another node."""
        self._call(lambda: self._register(spec))

    def delete_node(self, name: str) -> None:
        """The node is gone for good: its processes die, the Node object is deleted (the real
        pod GC then deletes the pods bound to it)."""

        async def delete() -> None:
            self.nodes[name].deleted = True
            self._lose_processes(name)
            with contextlib.suppress(ApiError):
                await self.api.request("DELETE", f"/api/v1/nodes/{name}")

        self._call(delete)

    def set_node_ready(self, name: str, ready: bool) -> None:
        """False: the node is lost (no heartbeats, processes die, pods left as they were).

        True: it is back: Ready again; pods whose containers were lost fail with
        ContainerStatusUnknown; pending deletions complete.
        """

        async def lose() -> None:
            self.nodes[name].lost = True
            self._lose_processes(name)

        async def recover() -> None:
            state = self.nodes[name]
            # Renewed before the heartbeat loop takes the node back, so the two do not race.
            await self._renew_lease(state)
            await self._post_node_status(state)
            state.lost = False
            for run in [r for r in self.runs.values() if r.node == name]:
                if run.kill_reason != "lost":
                    continue
                self.runs.pop(run.uid, None)
                pod = self.pods.get(run.uid)
                if pod is None or pod["metadata"].get("deletionTimestamp"):
                    continue  # the next pass finalizes it
                if (pod.get("status") or {}).get("phase") in ("Pending", "Running"):
                    await self._finish(
                        run,
                        137,
                        "ContainerStatusUnknown",
                        "The container could not be located when the pod was terminated",
                    )
            self._poke()

        self._call(recover if ready else lose)

    def _lose_processes(self, node: str) -> None:
        for run in self.runs.values():
            if run.node == node and not run.ended:
                run.kill_reason = "lost"
                _kill_group(run)
                if run.process is None and run.task is not None:
                    run.task.cancel()

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        """``kubectl cordon`` / ``uncordon``."""
        patch = {"spec": {"unschedulable": unschedulable or None}}
        self._call(
            lambda: self.api.request(
                "PATCH", f"/api/v1/nodes/{name}", patch, content_type=MERGE_PATCH
            )
        )

    def set_node_capacity(
        self, name: str, *, gpus: int | None = None, cpu: str | None = None, pods: int | None = None
    ) -> None:
        """Change a node's allocatable resources (``gpus=0`` makes a GPU node full)."""

        async def change() -> None:
            state = self.nodes[name]
            if gpus is not None:
                state.spec.gpus = gpus
            if cpu is not None:
                state.spec.cpu = cpu
            if pods is not None:
                state.spec.pods = pods
            await self._post_node_status(state)

        self._call(change)

    def set_node_behaviour(
        self,
        name: str,
        *,
        start_delay: float | None = None,
        fail_exit_code: int | EllipsisType | None = ...,
    ) -> None:
        """Make a node slow (``start_delay``) or fail every pod (``fail_exit_code``)."""

        async def change() -> None:
            behaviour = self.behaviours[name]
            if start_delay is not None:
                behaviour.start_delay = start_delay
            if not isinstance(fail_exit_code, EllipsisType):
                behaviour.fail_exit_code = fail_exit_code

        self._call(change)

    def _run_of(self, namespace: str, name: str) -> PodRun | None:
        for run in self.runs.values():
            if run.namespace == namespace and run.name == name:
                return run
        return None

    def evict(
        self,
        namespace: str,
        name: str,
        *,
        via_api: bool = False,
        message: str = "The node was low on resource: memory.",
    ) -> None:
        """Evict a pod: by the kubelet (Failed/Evicted, the object stays) or the Eviction API."""

        async def evict() -> None:
            if via_api:
                body = {
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": name, "namespace": namespace},
                }
                path = f"/api/v1/namespaces/{namespace}/pods/{name}/eviction"
                await self.api.request("POST", path, body)
                return
            run = self._run_of(namespace, name)
            if run is None or run.ended:
                raise LookupError(f"pod {namespace}/{name} is not running here")
            run.eviction = ("TerminationByKubelet", message)
            run.kill_reason = "evicted"
            pod = self.pods.get(run.uid) or {}
            await self._terminate(run, float(pod["spec"].get("terminationGracePeriodSeconds", 30)))

        self._call(evict, timeout=60)

    def oom_kill(self, namespace: str, name: str) -> None:
        """Kill a pod's container as the kernel OOM killer would (exit 137, OOMKilled)."""

        async def kill() -> None:
            run = self._run_of(namespace, name)
            if run is None or run.process is None or run.process.returncode is not None:
                raise LookupError(f"pod {namespace}/{name} has no running container")
            run.kill_reason = "oom"
            _kill_group(run)

        self._call(kill)

    def pod_pid(self, namespace: str, name: str) -> int | None:
        """The pid of a pod's running container process (None when not running)."""

        async def pid() -> int | None:
            run = self._run_of(namespace, name)
            if run is None or run.process is None or run.process.returncode is not None:
                return None
            return run.process.pid

        return self._call(pid)

    def pod_log(self, namespace: str, name: str) -> str | None:
        """The container's output; None when the pod never ran here."""

        async def find() -> Path | None:
            run = self._run_of(namespace, name)
            return None if run is None else run.workdir / "container.log"

        path = self._call(find)
        if path is None:
            return None
        try:
            return path.read_text(errors="replace")
        except OSError:
            return None

    def running_processes(self) -> int:
        """How many container processes are alive."""

        async def count() -> int:
            return self.running_processes_now()

        return self._call(count)

    def running_processes_now(self) -> int:
        return sum(
            1 for r in self.runs.values() if r.process is not None and r.process.returncode is None
        )


def schedulable(nodes: Iterable[Mapping[str, Any]], names: Iterable[str]) -> bool:
    """Whether every named node is registered, Ready and free of the not-ready taint."""
    nodes = list(nodes)
    if {n["metadata"]["name"] for n in nodes} < set(names):
        return False
    for node in nodes:
        taints = {t["key"] for t in node["spec"].get("taints") or []}
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}
        if "node.kubernetes.io/not-ready" in taints or conditions.get("Ready") != "True":
            return False
    return True


def process_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a detached process may go unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _restarts(pod: Mapping[str, Any], exit_code: int) -> bool:
    """Whether the kubelet starts the container again (pods default to restartPolicy Always)."""
    policy = pod["spec"].get("restartPolicy", "Always")
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def _restarted(status: dict[str, Any]) -> None:
    for condition in ("ContainersReady", "Ready"):
        set_condition(status, condition, "True")
    entry = (status.get("containerStatuses") or [{}])[0]
    entry["ready"], entry["started"] = True, True
    entry["state"] = {"running": {"startedAt": now_iso()}}


def _kill_group(run: PodRun) -> None:
    process = run.process
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _waiting(status: dict[str, Any], pod: Mapping[str, Any], reason: str, message: str) -> None:
    names = [c["name"] for c in pod["spec"]["containers"]]
    status["containerStatuses"] = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }
        for c in pod["spec"]["containers"]
    ]
    set_condition(
        status,
        "Ready",
        "False",
        "ContainersNotReady",
        f"containers with unready status: [{' '.join(names)}]",
    )
