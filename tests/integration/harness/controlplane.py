"""A fake control plane: job controller, scheduler, kubelet, node lifecycle and pod GC.

It runs as asyncio tasks on the emulator's event loop and writes through the same
:class:`~.store.Store` methods the HTTP API uses, so every change it makes is validated,
versioned and seen by watchers exactly like an API write. It does not go over HTTP on
purpose: real controllers are separate clients, but their traffic would drown the
operator's requests in the request log, which the tests use to count the operator's API
writes and to compare them with its RBAC rules. Direct writes also keep the tests fast.

* Job controller: one Pod per active slot from the Job's template (``<job>-<5 chars>``,
  controller labels, ownerReference), Job status (active/succeeded/failed/ready/terminating,
  startTime, completionTime, conditions SuccessCriteriaMet/Complete and FailureTarget/Failed
  with BackoffLimitExceeded or DeadlineExceeded), ``activeDeadlineSeconds``, ``suspend``
  (deletes active pods), a missing PriorityClass as FailedCreate.
* Scheduler: see :mod:`.scheduling`; leaves ``PodScheduled=False/Unschedulable`` with the
  scheduler's message otherwise.
* Kubelet: runs ``containers[0]`` (command + args, env with ``$(VAR)`` expansion, downward
  API, ConfigMap/Secret env and volumes) as a local process; the termination-message path
  and volume mount paths are rewritten to a per-pod directory. Running -> Succeeded/Failed
  with the container's terminated state and the termination message (at most 4096 bytes).
  Deletion sends SIGTERM to the process, then SIGKILL to its process group after the grace
  period, then removes the pod.
* Nodes: configurable CPU and GPU nodes; knobs for NotReady (lost) nodes, deleted nodes,
  slow or always-failing nodes, capacity changes, cordons, evictions and OOM kills.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import functools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

from .scheduling import choose_node, parse_quantity, pod_requests, unschedulable_message
from .store import ApiError, DeleteOptions, Store, now_iso, set_condition, wait_event

__all__ = [
    "ControlPlane",
    "ControlPlaneSettings",
    "NodeBehaviour",
    "NodeSpec",
    "cpu_node",
    "default_nodes",
    "expand_vars",
    "gpu_node",
]

logger = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
MAX_TERMINATION_MESSAGE = 4096  # kubelet's per-container limit
FALLBACK_LOG_BYTES = 2048  # FallbackToLogsOnError keeps the last 2048 bytes / 80 lines
FALLBACK_LOG_LINES = 80


@dataclass
class NodeSpec:
    """A node of the fake cluster."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, Any]] = field(default_factory=list)

    def to_object(self, index: int) -> dict[str, Any]:
        """The Node object as a kubelet would register it."""
        allocatable: dict[str, str] = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            allocatable[GPU_RESOURCE] = str(self.gpus)
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "emulated",
            **self.labels,
        }
        now = now_iso()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"podCIDR": f"10.244.{index}.0/24", "taints": copy.deepcopy(self.taints)},
            "status": {
                "capacity": dict(allocatable),
                "allocatable": allocatable,
                "conditions": [
                    {
                        "type": "MemoryPressure",
                        "status": "False",
                        "reason": "KubeletHasSufficientMemory",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "DiskPressure",
                        "status": "False",
                        "reason": "KubeletHasNoDiskPressure",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "PIDPressure",
                        "status": "False",
                        "reason": "KubeletHasSufficientPID",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                ],
                "addresses": [
                    {"type": "InternalIP", "address": f"10.0.0.{10 + index}"},
                    {"type": "Hostname", "address": self.name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.31.0+emulated",
                    "containerRuntimeVersion": "local-process://1",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "emulated",
                    "kernelVersion": "emulated",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            },
        }


def cpu_node(name: str, cpu: str = "8", **kwargs: Any) -> NodeSpec:
    """A plain CPU node."""
    return NodeSpec(name=name, cpu=cpu, **kwargs)


def gpu_node(name: str, gpus: int = 2, cpu: str = "8", **kwargs: Any) -> NodeSpec:
    """A GPU node with the common NVIDIA conventions: label, taint and ``nvidia.com/gpu``."""
    labels = {
        GPU_LABEL: "true",
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.product": "Emulated-GPU",
    }
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
class ControlPlaneSettings:
    """Timing and process settings of the fake control plane."""

    tick: float = 0.1  # periodic resync for time-based decisions (deadlines, retries)
    report_env: str | None = "MICROTASK_REPORT_PATH"  # env var set to the rewritten report path
    path_prepend: list[str] = field(default_factory=lambda: [str(Path(sys.executable).parent)])
    extra_env: dict[str, str] = field(default_factory=dict)  # added to every container's env
    max_grace_seconds: float = 30.0  # cap for termination grace periods (keeps tests bounded)
    lost_node_eviction_seconds: float | None = None  # delete pods of a NotReady node after this
    workdir: Path | None = None  # where per-pod directories go (a temp dir by default)


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables expand, unknown stay, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_RE.sub(replace, text)


def _parse_ts(text: str) -> float:
    return (
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.UTC)
        .timestamp()
    )


class ContainerConfigError(Exception):
    """The container cannot be started (missing ConfigMap key, no command, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class PodRun:
    """The kubelet's bookkeeping for one pod it runs."""

    uid: str
    namespace: str
    name: str
    node: str
    workdir: Path
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    ended: bool = False
    kill_reason: str | None = None  # deleted | evicted | oom | lost | suspended
    eviction: tuple[str, str] | None = None  # (condition reason, message)


class ControlPlane:
    """Job controller, scheduler, kubelet and node lifecycle over one :class:`Store`."""

    def __init__(
        self,
        store: Store,
        nodes: Iterable[NodeSpec] = (),
        settings: ControlPlaneSettings | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or ControlPlaneSettings()
        self._initial_nodes = list(nodes)
        self.behaviours: dict[str, NodeBehaviour] = defaultdict(NodeBehaviour)
        self.lost_nodes: dict[str, float] = {}  # node -> loop time it was lost
        self._runs: dict[str, PodRun] = {}
        self._counted: dict[str, dict[str, set[str]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._unsubscribe: list[Callable[[], None]] = []
        self._node_index = 0
        self._ip_counter = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._root = Path()
        self._warned: dict[str, str] = {}
        self.leaked_processes = 0
        self._stopping = False
        self.pods_res = store.resource("", "v1", "pods")
        self.jobs_res = store.resource("batch", "v1", "jobs")
        self.nodes_res = store.resource("", "v1", "nodes")
        self.events_res = store.resource("", "v1", "events")

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the nodes and start the controllers."""
        if self.settings.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="microtask-kubelet-")
            self._root = Path(self._tmp.name)
        else:
            self._root = self.settings.workdir
            self._root.mkdir(parents=True, exist_ok=True)
        for spec in self._initial_nodes:
            self.add_node(spec)
        for res in (self.pods_res, self.jobs_res, self.nodes_res):
            self._unsubscribe.append(self.store.subscribe(res, lambda _e: self._wake.set()))
        self._tasks.append(asyncio.create_task(self._loop(), name="control-plane"))

    async def stop(self) -> None:
        """Stop the controllers, kill every process, remove the per-pod directories."""
        self._stopping = True
        self._wake.set()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runs = list(self._runs.values())
        for run in runs:
            self._kill_group(run)
        for run in runs:
            if run.task is not None and not run.task.done():
                run.task.cancel()
                await asyncio.wait({run.task}, timeout=5)
            if run.process is not None and run.process.returncode is None:
                await asyncio.wait({asyncio.ensure_future(run.process.wait())}, timeout=5)
        self.leaked_processes = self.running_processes()
        self._runs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def running_processes(self) -> int:
        """How many container processes are alive (0 after a clean shutdown)."""
        return sum(
            1 for r in self._runs.values() if r.process is not None and r.process.returncode is None
        )

    async def _loop(self) -> None:
        # A flag as well as cancellation: Python 3.11's wait_for can swallow a cancellation
        # that races with the event it waits for; asyncio.timeout() and the flag cannot.
        while not self._stopping:
            await wait_event(self._wake, self.settings.tick)
            self._wake.clear()
            # Writes below wake the loop again; settle once per pass instead of per write.
            try:
                self._sync_once()
            except Exception:
                logger.exception("control plane pass failed")
            await asyncio.sleep(0)

    def _sync_once(self) -> None:
        self._node_lifecycle()
        self._pod_gc()
        self._job_controller()
        self._scheduler()
        self._kubelet()

    def poke(self) -> None:
        """Wake the controllers now (after a knob changed something)."""
        self._wake.set()

    # --- events --------------------------------------------------------------------------------

    def _event(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, component: str
    ) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = now_iso()
        # Events are best effort, as in Kubernetes (the namespace may be going away).
        with contextlib.suppress(ApiError):
            self.store.create(
                self.events_res,
                namespace,
                {
                    "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
                    "involvedObject": {
                        "kind": obj.get("kind"),
                        "apiVersion": obj.get("apiVersion"),
                        "name": meta["name"],
                        "namespace": namespace,
                        "uid": meta.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "source": {"component": component},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )

    # --- nodes ---------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> dict[str, Any]:
        """Register a node (as its kubelet would on start-up)."""
        obj = spec.to_object(self._node_index)
        self._node_index += 1
        created = self.store.create(self.nodes_res, None, obj, keep_status=True)
        self.poke()
        return created

    def delete_node(self, name: str) -> None:
        """Remove a node; the pod GC then force-deletes the pods bound to it."""
        for run in self._runs_on(name):
            run.kill_reason = run.kill_reason or "lost"
            self._kill_group(run)
        with contextlib.suppress(ApiError):
            self.store.delete(self.nodes_res, None, name)
        self.lost_nodes.pop(name, None)
        self.poke()

    def set_node_ready(self, name: str, ready: bool) -> None:
        """NotReady: the kubelet is lost, its processes die, its pods are left as they were.

        Ready again: pods whose containers were lost are failed (ContainerStatusUnknown),
        pending deletions complete.
        """
        loop = asyncio.get_running_loop()
        if not ready:
            self.lost_nodes[name] = loop.time()
            for run in self._runs_on(name):
                run.kill_reason = "lost"
                self._kill_group(run)

            def unreachable(node: dict[str, Any]) -> None:
                taints = [
                    t
                    for t in node["spec"].get("taints") or []
                    if t.get("key") != "node.kubernetes.io/unreachable"
                ]
                for effect in ("NoSchedule", "NoExecute"):
                    taints.append(
                        {
                            "key": "node.kubernetes.io/unreachable",
                            "effect": effect,
                            "timeAdded": now_iso(),
                        }
                    )
                node["spec"]["taints"] = taints

            # The node lifecycle controller: status says Unknown, taints keep new pods away.
            self._node_status(
                name, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
            )
            self.store.mutate(self.nodes_res, None, name, unreachable)
            # The node lifecycle controller marks the pods there not ready.
            for pod in self._pods_on(name):
                if pod["status"].get("phase") in ("Pending", "Running"):
                    self._status(
                        pod,
                        lambda s: set_condition(
                            s, "Ready", "False", "NodeNotReady", "Node is not ready"
                        ),
                    )
        else:
            self.lost_nodes.pop(name, None)

            def reachable(node: dict[str, Any]) -> None:
                node["spec"]["taints"] = [
                    t
                    for t in node["spec"].get("taints") or []
                    if t.get("key") != "node.kubernetes.io/unreachable"
                ]

            self._node_status(name, "True", "KubeletReady", "kubelet is posting ready status")
            self.store.mutate(self.nodes_res, None, name, reachable)
            for run in list(self._runs_on(name)):
                if run.kill_reason == "lost":
                    self._runs.pop(run.uid, None)
                    lost_pod = self.store.peek(self.pods_res, run.namespace, run.name)
                    if lost_pod is None:
                        continue
                    if lost_pod["metadata"].get("deletionTimestamp"):
                        self._finalize_pod(lost_pod)
                    elif lost_pod["status"].get("phase") in ("Pending", "Running"):
                        self._finish_status(
                            lost_pod,
                            run,
                            137,
                            "ContainerStatusUnknown",
                            "The container could not be located when the pod was terminated",
                        )
        self.poke()

    def _node_status(self, name: str, ready: str, reason: str, message: str) -> None:
        node = self.store.peek(self.nodes_res, None, name)
        if node is not None:
            self._status(
                node,
                lambda s: set_condition(s, "Ready", ready, reason, message),
                res=self.nodes_res,
            )

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        """``kubectl cordon`` / ``uncordon``."""
        self.store.mutate(
            self.nodes_res,
            None,
            name,
            lambda n: n["spec"].__setitem__("unschedulable", unschedulable),
        )
        self.poke()

    def set_node_capacity(
        self, name: str, *, gpus: int | None = None, cpu: str | None = None, pods: int | None = None
    ) -> None:
        """Change a node's allocatable resources (``gpus=0`` makes a GPU node full)."""

        def change(node: dict[str, Any]) -> None:
            alloc = node["status"]["allocatable"]
            if gpus is not None:
                alloc[GPU_RESOURCE] = str(gpus)
            if cpu is not None:
                alloc["cpu"] = cpu
            if pods is not None:
                alloc["pods"] = str(pods)

        self.store.mutate(self.nodes_res, None, name, change, subresource="status")
        self.poke()

    def set_node_behaviour(
        self,
        name: str,
        *,
        start_delay: float | None = None,
        fail_exit_code: int | EllipsisType | None = ...,
    ) -> None:
        """Make a node slow (``start_delay``) or fail every pod (``fail_exit_code``)."""
        behaviour = self.behaviours[name]
        if start_delay is not None:
            behaviour.start_delay = start_delay
        if not isinstance(fail_exit_code, EllipsisType):
            behaviour.fail_exit_code = fail_exit_code

    def _node_lifecycle(self) -> None:
        timeout = self.settings.lost_node_eviction_seconds
        if timeout is None:
            return
        now = asyncio.get_running_loop().time()
        for name, since in self.lost_nodes.items():
            if now - since < timeout:
                continue
            for pod in self._pods_on(name):
                if not pod["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.store.delete(
                            self.pods_res, pod["metadata"]["namespace"], pod["metadata"]["name"]
                        )

    def _pod_gc(self) -> None:
        """Force-delete pods bound to nodes that no longer exist (marking them failed first)."""
        nodes = {n["metadata"]["name"] for n in self.store.select(self.nodes_res)}
        for pod in list(self.store.select(self.pods_res)):
            node = pod["spec"].get("nodeName")
            if not node or node in nodes:
                continue
            if pod["status"].get("phase") not in ("Succeeded", "Failed"):

                def orphaned(status: dict[str, Any]) -> None:
                    status["phase"] = "Failed"
                    set_condition(
                        status,
                        "DisruptionTarget",
                        "True",
                        "DeletionByPodGC",
                        "PodGC: node no longer exists",
                    )

                self._status(pod, orphaned)
            with contextlib.suppress(ApiError):
                self.store.delete(
                    self.pods_res,
                    pod["metadata"]["namespace"],
                    pod["metadata"]["name"],
                    DeleteOptions(grace=0),
                )
            self._runs.pop(pod["metadata"]["uid"], None)

    def _pods_on(self, node: str) -> list[dict[str, Any]]:
        return [p for p in self.store.select(self.pods_res) if p["spec"].get("nodeName") == node]

    def _runs_on(self, node: str) -> list[PodRun]:
        return [r for r in self._runs.values() if r.node == node]

    # --- helpers -------------------------------------------------------------------------------

    def _status(
        self, pod: Mapping[str, Any], fn: Callable[[dict[str, Any]], Any], res: Any = None
    ) -> dict[str, Any] | None:
        """Read-modify-write a status; None when the object is gone."""
        meta = pod["metadata"]

        def change(obj: dict[str, Any]) -> None:
            fn(obj.setdefault("status", {}))

        try:
            return self.store.mutate(
                res or self.pods_res,
                meta.get("namespace"),
                meta["name"],
                change,
                subresource="status",
            )
        except ApiError as exc:
            logger.debug("status write of %s failed: %s", meta["name"], exc)
            return None

    # --- job controller ------------------------------------------------------------------------

    def _job_controller(self) -> None:
        pods_by_owner: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pod in self.store.select(self.pods_res):
            for ref in pod["metadata"].get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") == "Job":
                    pods_by_owner[ref["uid"]].append(pod)
        live = set()
        for job in list(self.store.select(self.jobs_res)):
            live.add(job["metadata"]["uid"])
            try:
                self._reconcile_job(job, pods_by_owner.get(job["metadata"]["uid"], []))
            except ApiError as exc:
                logger.debug("job %s: %s", job["metadata"]["name"], exc)
        for uid in list(self._counted):
            if uid not in live:
                del self._counted[uid]
        self._release_tracked_pods()

    def _release_tracked_pods(self) -> None:
        """Remove the job-tracking finalizer from pods whose outcome is recorded.

        Like the real controller: a pod keeps the finalizer until its Job's status counts
        it, so deleting a finished pod can never lose a success or a failure.
        """
        for pod in list(self.store.select(self.pods_res)):
            meta = pod["metadata"]
            if JOB_TRACKING_FINALIZER not in (meta.get("finalizers") or ()):
                continue
            ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
            job = self.store.peek(self.jobs_res, meta["namespace"], ref["name"]) if ref else None
            if job is not None and job["metadata"]["uid"] != (ref or {}).get("uid"):
                job = None
            phase = pod["status"].get("phase")
            if job is None or job["metadata"].get("deletionTimestamp"):
                releasable = True
            else:
                spec = job.get("spec") or {}
                job_conditions = conditions_of(job)
                only_failed_phase = spec.get("podReplacementPolicy") == "Failed" or bool(
                    spec.get("podFailurePolicy")
                )
                releasable = (
                    job_conditions.get("Complete") == "True"
                    or job_conditions.get("Failed") == "True"
                    or phase in ("Succeeded", "Failed")
                    or (bool(meta.get("deletionTimestamp")) and not only_failed_phase)
                )
            if releasable:

                def release(obj: dict[str, Any]) -> None:
                    remaining = [
                        f
                        for f in obj["metadata"].get("finalizers") or []
                        if f != JOB_TRACKING_FINALIZER
                    ]
                    obj["metadata"]["finalizers"] = remaining
                    if not remaining:
                        del obj["metadata"]["finalizers"]

                with contextlib.suppress(ApiError):
                    self.store.mutate(self.pods_res, meta["namespace"], meta["name"], release)

    def _reconcile_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """One sync of a Job, in the order of the real controller's ``syncJob``.

        Failure is evaluated before anything else (also while suspended); a terminating pod
        counts as failed at once unless ``podReplacementPolicy: Failed`` (or a pod failure
        policy) waits for its Failed phase; suspension deletes active pods, and those count
        as failures too, exactly as in Kubernetes.
        """
        meta, spec = job["metadata"], job.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        status = copy.deepcopy(job.get("status") or {})
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        if any(conditions.get(t, {}).get("status") == "True" for t in ("Complete", "Failed")):
            return  # finished Jobs are left alone
        only_failed_phase = spec.get("podReplacementPolicy") == "Failed" or bool(
            spec.get("podFailurePolicy")
        )
        counted = self._counted.setdefault(meta["uid"], {"succeeded": set(), "failed": set()})
        active: list[dict[str, Any]] = []
        terminating: list[dict[str, Any]] = []
        for pod in pods:
            phase = pod["status"].get("phase")
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            if phase == "Succeeded":
                counted["succeeded"].add(pod["metadata"]["uid"])
            elif phase == "Failed" or (deleting and not only_failed_phase):
                counted["failed"].add(pod["metadata"]["uid"])
            if phase not in ("Succeeded", "Failed"):
                (terminating if deleting else active).append(pod)
        # Counts never go down, even when finished pods are deleted (the real controller tracks
        # terminated pods with a finalizer for exactly this reason).
        succeeded = max(len(counted["succeeded"]), int(status.get("succeeded", 0)))
        failed = max(len(counted["failed"]), int(status.get("failed", 0)))
        now = now_iso()
        suspended = bool(spec.get("suspend"))
        if not suspended:
            status.setdefault("startTime", now)

        def delete_active() -> None:
            nonlocal active
            for pod in active:
                with contextlib.suppress(ApiError):
                    self.store.delete(
                        self.pods_res, pod["metadata"]["namespace"], pod["metadata"]["name"]
                    )
            terminating.extend(active)
            active = []

        failure: tuple[str, str] | None = None
        target = conditions.get("FailureTarget", {})
        if target.get("status") == "True":
            failure = (target.get("reason", ""), target.get("message", ""))
        elif failed > int(spec.get("backoffLimit", 6)):
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif (
            not suspended
            and spec.get("activeDeadlineSeconds") is not None
            and datetime.datetime.now(datetime.UTC).timestamp() - _parse_ts(status["startTime"])
            >= float(spec["activeDeadlineSeconds"])
        ):
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        completions = int(spec.get("completions") or 1)
        if failure is not None:
            set_condition(status, "FailureTarget", "True", *failure)
            delete_active()
            if not terminating:
                set_condition(status, "Failed", "True", *failure)
                self._event(job, "Warning", failure[0], failure[1], "job-controller")
        elif suspended:
            delete_active()
            if conditions.get("Suspended", {}).get("status") != "True":
                set_condition(status, "Suspended", "True", "JobSuspended", "Job suspended")
                self._event(job, "Normal", "Suspended", "Job suspended", "job-controller")
        elif succeeded >= completions and not active:
            message = "Reached expected number of succeeded pods"
            set_condition(status, "SuccessCriteriaMet", "True", "CompletionsReached", message)
            if not terminating:
                set_condition(status, "Complete", "True", "CompletionsReached", message)
                status["completionTime"] = now
                self._event(job, "Normal", "Completed", "Job completed", "job-controller")
        else:
            if conditions.get("Suspended", {}).get("status") == "True":
                set_condition(status, "Suspended", "False", "JobResumed", "Job resumed")
                # Resuming restarts the activeDeadlineSeconds clock.
                status["startTime"] = now
                self._event(job, "Normal", "Resumed", "Job resumed", "job-controller")
            wanted = min(int(spec.get("parallelism", 1)), completions - succeeded)
            if only_failed_phase:
                wanted -= len(terminating)  # wait for terminating pods before replacing them
            for _ in range(max(0, wanted - len(active))):
                created = self._create_pod(job)
                if created is None:
                    break
                active.append(created)
        ready = sum(1 for p in active if _condition(p, "Ready") == "True")
        for key, value in (("active", len(active)), ("succeeded", succeeded), ("failed", failed)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)  # these counters are omitted when zero, as in the real API
        status["ready"] = ready
        status["terminating"] = len(terminating)
        status.setdefault("uncountedTerminatedPods", {})
        if status != (job.get("status") or {}):

            def replace_status(current: dict[str, Any]) -> None:
                current.clear()
                current.update(status)

            self._status(job, replace_status, res=self.jobs_res)

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any] | None:
        meta, template = job["metadata"], copy.deepcopy(job["spec"].get("template") or {})
        tmeta = template.get("metadata") or {}
        spec = template.get("spec") or {}
        priority_class = spec.get("priorityClassName")
        if priority_class:
            pc_res = self.store.resource("scheduling.k8s.io", "v1", "priorityclasses")
            pc = self.store.peek(pc_res, None, priority_class)
            if pc is None and priority_class not in (
                "system-cluster-critical",
                "system-node-critical",
            ):
                message = (
                    f'Error creating: pods "{meta["name"]}-" is forbidden: no PriorityClass with '
                    f"name {priority_class} was found"
                )
                self._warn_once(job, "FailedCreate", message)
                return None
            spec["priority"] = int(pc["value"]) if pc is not None else 2000000000
        pod_meta: dict[str, Any] = {
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": dict(tmeta.get("labels") or {}),
            # The real controller tracks every pod with this finalizer until it is counted.
            "finalizers": [JOB_TRACKING_FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if tmeta.get("annotations"):
            pod_meta["annotations"] = dict(tmeta["annotations"])
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}
        try:
            return self.store.create(self.pods_res, meta["namespace"], pod)
        except ApiError as exc:
            self._warn_once(job, "FailedCreate", f"Error creating: {exc.message}")
            return None

    def _warn_once(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        key = f"{obj['metadata'].get('uid')}/{reason}"
        if self._warned.get(key) != message:
            self._warned[key] = message
            self._event(obj, "Warning", reason, message, "job-controller")

    # --- scheduler -----------------------------------------------------------------------------

    def _scheduler(self) -> None:
        nodes = list(self.store.select(self.nodes_res))
        pods = list(self.store.select(self.pods_res))
        usage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        pending = []
        for pod in pods:
            node = pod["spec"].get("nodeName")
            phase = pod["status"].get("phase")
            if node:
                if phase not in ("Succeeded", "Failed"):
                    for key, value in pod_requests(pod).items():
                        usage[node][key] += value
            elif (
                phase == "Pending"
                and not pod["metadata"].get("deletionTimestamp")
                and pod["spec"].get("schedulerName", "default-scheduler") == "default-scheduler"
                and not pod["spec"].get("schedulingGates")
            ):
                pending.append(pod)
        pending.sort(
            key=lambda p: (
                -int(p["spec"].get("priority", 0)),
                p["metadata"]["creationTimestamp"],
                p["metadata"]["name"],
            )
        )
        for pod in pending:
            target, failures = choose_node(pod, nodes, usage)
            meta = pod["metadata"]
            if target is None:
                message = unschedulable_message(len(nodes), failures)
                if _condition(pod, "PodScheduled", "message") != message:
                    self._status(
                        pod,
                        functools.partial(_set_unschedulable, message=message),
                    )
                    self._event(pod, "Warning", "FailedScheduling", message, "default-scheduler")
                continue

            def bind(obj: dict[str, Any], target: str = target) -> None:
                obj["spec"]["nodeName"] = target
                status = obj.setdefault("status", {})
                set_condition(status, "PodScheduled", "True")
                for cond in status["conditions"]:
                    if cond["type"] == "PodScheduled":
                        cond.pop("reason", None)
                        cond.pop("message", None)

            try:
                self.store.mutate(
                    self.pods_res, meta["namespace"], meta["name"], bind, subresource="binding"
                )
            except ApiError:
                continue
            for key, value in pod_requests(pod).items():
                usage[target][key] += value

    # --- kubelet -------------------------------------------------------------------------------

    def _kubelet(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self.store.select(self.nodes_res)}
        seen: set[str] = set()
        for pod in list(self.store.select(self.pods_res)):
            node = pod["spec"].get("nodeName")
            if not node or node not in nodes or node in self.lost_nodes:
                continue
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            run = self._runs.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if run is None or run.ended:
                    self._finalize_pod(pod)
                    self._runs.pop(uid, None)
                elif run.kill_reason is None:
                    run.kill_reason = "deleted"
                    grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                    asyncio.get_running_loop().create_task(self._terminate(run, grace))
                continue
            if run is None and pod["status"].get("phase") == "Pending":
                run = PodRun(
                    uid=uid,
                    namespace=pod["metadata"]["namespace"],
                    name=pod["metadata"]["name"],
                    node=node,
                    workdir=self._root / uid,
                )
                self._runs[uid] = run
                run.task = asyncio.get_running_loop().create_task(
                    self._run_pod(run), name=f"pod {run.name}"
                )
        for uid, run in list(self._runs.items()):
            if uid not in seen and run.ended and run.kill_reason != "lost":
                # The pod is gone (deleted and finalized): forget it and its files.
                self._runs.pop(uid, None)
                shutil.rmtree(run.workdir, ignore_errors=True)

    def _finalize_pod(self, pod: Mapping[str, Any]) -> None:
        """The kubelet's final delete (grace 0) once the containers are gone."""
        with contextlib.suppress(ApiError):
            self.store.delete(
                self.pods_res,
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                DeleteOptions(grace=0),
            )

    async def _terminate(self, run: PodRun, grace: float) -> None:
        """SIGTERM the container's main process, SIGKILL the whole group after the grace."""
        process = run.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(min(grace, self.settings.max_grace_seconds)):
                    await process.wait()
            except TimeoutError:
                self._kill_group(run)
        elif run.task is not None and not run.task.done():
            run.task.cancel()  # not started yet (slow node delay): nothing to signal
        self.poke()

    def _kill_group(self, run: PodRun) -> None:
        process = run.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def _pod(self, run: PodRun) -> dict[str, Any] | None:
        pod = self.store.peek(self.pods_res, run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return None
        return pod

    async def _run_pod(self, run: PodRun) -> None:
        try:
            await self._run_pod_inner(run)
        except asyncio.CancelledError:
            pod = self._pod(run)
            if pod is not None and run.kill_reason in ("deleted", "evicted") and run.started_at:
                # Terminated before its container started (slow node): nothing exited cleanly.
                self._finish_status(pod, run, 137, "Error", "")
            raise
        except Exception:
            logger.exception("kubelet failed to run pod %s", run.name)
        finally:
            run.ended = True
            self.poke()

    async def _run_pod_inner(self, run: PodRun) -> None:
        pod = self._pod(run)
        if pod is None:
            return
        container = pod["spec"]["containers"][0]
        behaviour = self.behaviours[run.node]
        run.workdir.mkdir(parents=True, exist_ok=True)
        try:
            argv, env, report_path = self._container_config(pod, container, run.workdir)
        except ContainerConfigError as exc:
            reason, message = exc.reason, exc.message
            if reason == "CreateContainerConfigError":
                # Stays Pending with a waiting container, as the kubelet keeps retrying.
                waiting_pod = pod
                self._status(pod, lambda s: _waiting(s, waiting_pod, reason, message))
                run.ended = True
                self._runs.pop(run.uid, None)
                return
            self._mark_running(pod, run)
            pod = self._pod(run)
            if pod is not None:
                self._finish_status(pod, run, 128, reason, message)
            return
        self._mark_running(pod, run)
        if behaviour.start_delay:
            await asyncio.sleep(behaviour.start_delay)
        pod = self._pod(run)
        if pod is None or run.kill_reason is not None:
            if pod is not None and run.kill_reason != "lost":
                self._finish_status(pod, run, 137, "Error", "")
            return
        if behaviour.fail_exit_code is not None:
            self._finish_status(pod, run, behaviour.fail_exit_code, "Error", "")
            return
        log_path = run.workdir / "container.log"
        with log_path.open("wb") as log:
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=str(run.workdir),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                self._finish_status(
                    pod,
                    run,
                    128,
                    "StartError",
                    f"failed to create containerd task: exec: {argv[0]!r}: {exc.strerror}",
                )
                return
            returncode = await run.process.wait()
        # The main process is gone: tear down whatever it left behind, as a container would.
        self._kill_group(run)
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if run.kill_reason == "lost":
            return  # a lost node reports nothing
        pod = self._pod(run)
        if pod is None:
            return
        message = self._termination_message(container, report_path, log_path, exit_code)
        reason = "Completed" if exit_code == 0 else "Error"
        if run.kill_reason == "oom":
            reason = "OOMKilled"
        self._finish_status(pod, run, exit_code, reason, message)

    def _mark_running(self, pod: Mapping[str, Any], run: PodRun) -> None:
        run.started_at = now_iso()
        self._ip_counter += 1
        ip = f"10.244.{self._ip_counter // 250}.{self._ip_counter % 250 + 2}"
        node = self.store.peek(self.nodes_res, None, run.node)
        host_ip = next(
            (
                a["address"]
                for a in ((node or {}).get("status") or {}).get("addresses", [])
                if a["type"] == "InternalIP"
            ),
            "10.0.0.1",
        )
        containers = pod["spec"]["containers"]

        def running(status: dict[str, Any]) -> None:
            status["phase"] = "Running"
            status["startTime"] = run.started_at
            status["hostIP"], status["podIP"] = host_ip, ip
            status["hostIPs"], status["podIPs"] = [{"ip": host_ip}], [{"ip": ip}]
            for cond in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
                set_condition(status, cond, "True")
            status["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"local://{run.uid}/{c['name']}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "lastState": {},
                    "state": {"running": {"startedAt": run.started_at}},
                }
                for c in containers
            ]

        self._status(pod, running)

    def _finish_status(
        self, pod: Mapping[str, Any], run: PodRun, exit_code: int, reason: str, message: str
    ) -> None:
        finished = now_iso()
        run.ended = True
        evicted = run.eviction

        def terminated(status: dict[str, Any]) -> None:
            ok = exit_code == 0 and evicted is None
            status["phase"] = "Succeeded" if ok else "Failed"
            for cond in ("ContainersReady", "Ready"):
                set_condition(status, cond, "False", "PodCompleted" if ok else "PodFailed")
            if evicted is not None:
                set_condition(status, "DisruptionTarget", "True", evicted[0], evicted[1])
                if evicted[0] == "TerminationByKubelet":
                    status["reason"] = "Evicted"
                    status["message"] = evicted[1]
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
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "restartCount": 0,
                    "lastState": {},
                }
                for c in pod["spec"]["containers"]
            ]
            for index, entry in enumerate(statuses):
                entry["ready"] = False
                entry["started"] = False
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

        self._status(pod, terminated)
        self.poke()

    def _termination_message(
        self, container: Mapping[str, Any], report: Path, log: Path, exit_code: int
    ) -> str:
        data = b""
        with contextlib.suppress(OSError), report.open("rb") as handle:
            data = handle.read(MAX_TERMINATION_MESSAGE)
        if (
            not data
            and exit_code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            with contextlib.suppress(OSError):
                tail = log.read_bytes()[-FALLBACK_LOG_BYTES:]
                data = b"\n".join(tail.split(b"\n")[-FALLBACK_LOG_LINES:])
        return data.decode("utf-8", errors="replace")

    # --- container configuration ---------------------------------------------------------------

    def _container_config(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], workdir: Path
    ) -> tuple[list[str], dict[str, str], Path]:
        """argv, env and the local termination-message path for the pod's first container."""
        namespace = pod["metadata"]["namespace"]
        rewrites: dict[str, str] = {}
        report_path = workdir / "termination-log"
        report_path.touch()
        rewrites[container.get("terminationMessagePath") or "/dev/termination-log"] = str(
            report_path
        )
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ContainerConfigError(
                    "CreateContainerConfigError", f"volume {mount['name']!r} not found"
                )
            local = workdir / "volumes" / mount["name"]
            self._materialize_volume(namespace, volume, local)
            target = local / mount["subPath"] if mount.get("subPath") else local
            rewrites[mount["mountPath"].rstrip("/")] = str(target)

        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            data = self._env_source(namespace, source)
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            if "valueFrom" in item:
                value = self._env_value_from(pod, container, item["valueFrom"])
                if value is None:
                    continue
            else:
                value = expand_vars(str(item.get("value", "")), env)
            env[item["name"]] = value
        # Paths that exist only inside a container are mapped to the pod's local directory.
        env = {k: _rewrite(v, rewrites) for k, v in env.items()}
        if self.settings.report_env and self.settings.report_env not in env:
            env[self.settings.report_env] = str(report_path)
        command = [expand_vars(str(a), env) for a in container.get("command") or []]
        args = [expand_vars(str(a), env) for a in container.get("args") or []]
        argv = [_rewrite(a, rewrites) for a in command + args]
        if not command:
            raise ContainerConfigError(
                "StartError",
                "the emulated kubelet has no image entrypoint: set the container's command",
            )
        process_env = {
            "PATH": os.pathsep.join(
                [*self.settings.path_prepend, os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOME": str(workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            **self.settings.extra_env,
            **env,
        }
        return argv, process_env, report_path

    def _materialize_volume(self, namespace: str, volume: Mapping[str, Any], local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        for kind, plural in (("configMap", "configmaps"), ("secret", "secrets")):
            if kind not in volume:
                continue
            ref = volume[kind]
            name = ref.get("name") or ref.get("secretName")
            res = self.store.resource("", "v1", plural)
            obj = self.store.peek(res, namespace, name)
            if obj is None:
                if ref.get("optional"):
                    return
                raise ContainerConfigError(
                    "CreateContainerConfigError", f'{kind} "{name}" not found'
                )
            data = dict(obj.get("data") or {})
            if kind == "secret":
                data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            items = ref.get("items")
            selected = (
                [(i["key"], i.get("path", i["key"])) for i in items]
                if items
                else [(k, k) for k in data]
            )
            for key, path in selected:
                if key not in data:
                    raise ContainerConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {key} in {kind} {namespace}/{name}",
                    )
                target = local / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[key])

    def _env_source(self, namespace: str, source: Mapping[str, Any]) -> dict[str, str]:
        for key, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            if key in source:
                ref = source[key]
                obj = self.store.peek(self.store.resource("", "v1", plural), namespace, ref["name"])
                if obj is None:
                    if ref.get("optional"):
                        return {}
                    raise ContainerConfigError(
                        "CreateContainerConfigError", f'{plural[:-1]} "{ref["name"]}" not found'
                    )
                data = dict(obj.get("data") or {})
                if plural == "secrets":
                    data = {
                        k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()
                    }
                return data
        return {}

    def _env_value_from(
        self, pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any]
    ) -> str | None:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if match:
                return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
            simple = {
                "metadata.name": meta.get("name"),
                "metadata.namespace": meta.get("namespace"),
                "metadata.uid": meta.get("uid"),
                "spec.nodeName": pod["spec"].get("nodeName"),
                "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                "status.hostIP": "127.0.0.1",
                "status.podIP": "127.0.0.1",
            }
            if path not in simple:
                raise ContainerConfigError(
                    "CreateContainerConfigError", f"unsupported fieldPath {path!r}"
                )
            return str(simple[path] or "")
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            kind, _, name = ref["resource"].partition(".")
            value = ((container.get("resources") or {}).get(kind) or {}).get(name)
            if value is None:
                return "0"
            divisor = parse_quantity(ref.get("divisor", "1"))
            return str(max(1, int(-(-parse_quantity(value) // divisor))))
        for key, plural in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            if key in source:
                ref = source[key]
                obj = self.store.peek(
                    self.store.resource("", "v1", plural), pod["metadata"]["namespace"], ref["name"]
                )
                data = (obj or {}).get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise ContainerConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {plural[:-1]} {ref['name']}",
                    )
                value = data[ref["key"]]
                if plural == "secrets":
                    value = base64.b64decode(value).decode(errors="replace")
                return str(value)
        return None

    # --- knobs on pods -------------------------------------------------------------------------

    async def evict(
        self,
        namespace: str,
        name: str,
        *,
        via_api: bool = False,
        message: str = "The node was low on resource: memory.",
    ) -> None:
        """Evict a pod: by the kubelet (Failed/Evicted, the object stays) or via the Eviction API.

        Either way the pod gets ``DisruptionTarget=True``; an API eviction deletes the pod.
        """
        pod = self.store.peek(self.pods_res, namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        if via_api:
            self._status(
                pod,
                lambda s: set_condition(
                    s, "DisruptionTarget", "True", "EvictionByEvictionAPI", "Eviction API: evicting"
                ),
            )
            with contextlib.suppress(ApiError):
                self.store.delete(self.pods_res, namespace, name)
            self.poke()
            return
        run = self._runs.get(pod["metadata"]["uid"])
        if run is None or run.ended:
            if pod["status"].get("phase") not in ("Succeeded", "Failed"):
                fake = PodRun(
                    uid=pod["metadata"]["uid"],
                    namespace=namespace,
                    name=name,
                    node=pod["spec"].get("nodeName") or "",
                    workdir=self._root,
                    eviction=("TerminationByKubelet", message),
                )
                self._finish_status(pod, fake, 137, "ContainerStatusUnknown", "")
            return
        run.eviction = ("TerminationByKubelet", message)
        run.kill_reason = "evicted"
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        await self._terminate(run, grace)

    def oom_kill(self, namespace: str, name: str) -> None:
        """Kill a pod's container as the kernel OOM killer would (exit 137, OOMKilled)."""
        pod = self.store.peek(self.pods_res, namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        run = self._runs.get(pod["metadata"]["uid"])
        if run is None or run.process is None or run.process.returncode is not None:
            raise ApiError(409, "Conflict", f"pod {name} has no running container")
        run.kill_reason = "oom"
        self._kill_group(run)

    def pod_pid(self, namespace: str, name: str) -> int | None:
        """The pid of a pod's running container process (None when not running)."""
        pod = self.store.peek(self.pods_res, namespace, name)
        run = self._runs.get(pod["metadata"]["uid"]) if pod is not None else None
        if run is None or run.process is None or run.process.returncode is not None:
            return None
        return run.process.pid

    def pod_log(
        self, namespace: str, name: str, query: Mapping[str, str] | None = None
    ) -> str | None:
        """The container's output (``kubectl logs``); None when the pod never ran here."""
        pod = self.store.peek(self.pods_res, namespace, name)
        if pod is None:
            return None
        path = self._root / pod["metadata"]["uid"] / "container.log"
        try:
            text: str = path.read_text(errors="replace")
        except OSError:
            return None
        tail = (query or {}).get("tailLines")
        if tail:
            text = "\n".join(text.splitlines()[-int(tail) :]) + "\n"
        return text


def _rewrite(value: str, rewrites: Mapping[str, str]) -> str:
    for source, target in sorted(rewrites.items(), key=lambda kv: -len(kv[0])):
        if source and source in value:
            value = value.replace(source, target)
    return value


def conditions_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """Condition type -> status."""
    return {
        c.get("type", ""): c.get("status", "")
        for c in (obj.get("status") or {}).get("conditions") or []
    }


def _condition(obj: Mapping[str, Any], type_: str, field_name: str = "status") -> Any:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond.get(field_name)
    return None


def _set_unschedulable(status: dict[str, Any], message: str) -> None:
    set_condition(status, "PodScheduled", "False", "Unschedulable", message)


def _waiting(status: dict[str, Any], pod: Mapping[str, Any], reason: str, message: str) -> None:
    status["containerStatuses"] = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "lastState": {},
            "state": {"waiting": {"reason": reason, "message": message}},
        }
        for c in pod["spec"]["containers"]
    ]
    set_condition(
        status,
        "Ready",
        "False",
        "ContainersNotReady",
        f"containers with unready status: "
        f"[{' '.join(c['name'] for c in pod['spec']['containers'])}]",
    )
