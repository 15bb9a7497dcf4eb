"""From Kubernetes objects to what the core reads: a shard's Job, pod and node → ObservedShard.

Pure functions over plain dicts (as kopf and the API give them), so every case of a pod's life —
unschedulable, pulling, running, OOM-killed, evicted, on a vanished node — is a table test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report, ReportError

from .. import labels
from ..core.timefmt import from_rfc3339
from ..core.types import ClusterView, ObservedShard, PendingReason, Pool, ShardPhase

# The runner's exit codes that mean "the shard ran; read the report for each microtask".
RUNNER_RAN = frozenset({0, 10})
# Pod conditions/reasons that mean the infrastructure took the pod away (not the work's fault).
DISRUPTION_REASONS = frozenset(
    {
        "PreemptionByScheduler",
        "PreemptionByKubeScheduler",
        "DeletionByTaintManager",
        "EvictionByEvictionAPI",
        "DeletionByPodGC",
        "TerminationByKubelet",
    }
)
LOST_POD_REASONS = frozenset({"Evicted", "Preempting", "NodeLost", "Shutdown", "NodeShutdown"})
# A container state set by the kubelet, not by the container: after a short node outage it no
# longer knows the containers it ran (exit code 137, "The container could not be located when the
# pod was terminated"). Nothing says how the work went, so the shard is lost, not failed.
CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"
WAITING_PENDING_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "ContainerCreating", "PodInitializing"}
)


@dataclass(frozen=True)
class NodeInfo:
    """What the operator keeps of a Node: is it ready, since when, and which pool it serves."""

    ready: bool
    since: float | None  # when Ready last changed
    pool: Pool
    schedulable: bool = True


def _time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return from_rfc3339(str(value))
    except ValueError:
        return None


def node_info(node: Mapping[str, Any], gpu_label: str, gpu_taint_key: str) -> NodeInfo:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready = False
    since = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            since = _time(condition.get("lastTransitionTime"))
    node_labels = meta.get("labels") or {}
    pool = Pool.GPU if node_labels.get(gpu_label) == "true" else Pool.CPU
    # Tainted nodes other than GPU nodes (e.g. a control plane) take no shards.
    blocking = [
        t
        for t in spec.get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") != gpu_taint_key
    ]
    schedulable = not spec.get("unschedulable") and not blocking
    return NodeInfo(ready=ready, since=since, pool=pool, schedulable=schedulable)


def cluster_view(nodes: Mapping[str, NodeInfo]) -> ClusterView:
    ready: dict[Pool, set[str]] = {Pool.GPU: set(), Pool.CPU: set()}
    for name, info in nodes.items():
        if info.ready and info.schedulable:
            ready[info.pool].add(name)
    return ClusterView(ready_nodes={pool: frozenset(names) for pool, names in ready.items()})


@dataclass(frozen=True)
class ShardIdentity:
    shard_id: int
    attempt: int
    pool: Pool
    indexes: IndexSet
    copy_of: int | None


def shard_identity(job: Mapping[str, Any]) -> ShardIdentity | None:
    """A Job's shard, from its labels and annotation; None when not ours or mangled."""
    meta = job.get("metadata") or {}
    job_labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    try:
        copy_of = job_labels.get(labels.COPY_OF)
        return ShardIdentity(
            shard_id=int(job_labels[labels.SHARD]),
            attempt=int(job_labels[labels.ATTEMPT]),
            pool=Pool(job_labels[labels.POOL]),
            indexes=IndexSet.from_compact(annotations[labels.INDEXES]),
            copy_of=int(copy_of) if copy_of not in (None, "") else None,
        )
    except (KeyError, ValueError):
        return None


def _newest(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    best = None
    best_time = -1.0
    for pod in pods:
        created = _time((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0
        if created >= best_time:
            best, best_time = pod, created
    return best


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition  # type: ignore[no-any-return]
    return None


def _exit_code(terminated: Mapping[str, Any]) -> int | None:
    code = terminated.get("exitCode")
    return int(code) if code is not None else None


def _decode(message: str | None) -> Report | None:
    if not message:
        return None
    try:
        return Report.decode(message)
    except ReportError:
        return None


def avoided_nodes(job_spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The nodes a Job's pods may not use: its required ``hostname NotIn`` terms."""
    pod_spec = (job_spec.get("template") or {}).get("spec") or {}
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    # Terms are alternatives: a node is kept off only if every term keeps it off.
    avoided: set[str] | None = None
    for term in required.get("nodeSelectorTerms") or ():
        names: set[str] = set()
        for expression in term.get("matchExpressions") or ():
            if expression.get("key") == labels.HOSTNAME and expression.get("operator") == "NotIn":
                names.update(str(v) for v in expression.get("values") or ())
        avoided = names if avoided is None else avoided & names
    return tuple(sorted(avoided or ()))


def observe(
    job: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    now: float,
) -> ObservedShard | None:
    """The shard a Job carries, in the state its newest pod and that pod's node show."""
    identity = shard_identity(job)
    if identity is None:
        return None
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    created = _time(meta.get("creationTimestamp")) or now
    base: dict[str, Any] = {
        "shard_id": identity.shard_id,
        "indexes": identity.indexes,
        "attempt": identity.attempt,
        "pool": identity.pool,
        "created_at": created,
        "copy_of": identity.copy_of,
        "suspended": bool(spec.get("suspend")),
        "avoid_nodes_hard": avoided_nodes(spec),
    }
    if meta.get("deletionTimestamp"):
        # Someone else deleted it (we never observe our own deletes past the retire).
        return ObservedShard(phase=ShardPhase.LOST, failure_reason="JobDeleted", **base)

    pod = _newest(pods)
    if pod is None:
        failed = _condition(job, "Failed")
        if failed is not None and failed.get("status") == "True":
            # The Job failed and its pod is already gone: nothing tells which microtask it was.
            return ObservedShard(
                phase=ShardPhase.FAILED,
                finished_at=_time(failed.get("lastTransitionTime")) or now,
                failure_reason=str(failed.get("reason") or "Failed"),
                **base,
            )
        queued = bool(spec.get("suspend"))
        queue = (meta.get("labels") or {}).get(labels.KUEUE_QUEUE_NAME)
        return ObservedShard(
            phase=ShardPhase.PENDING,
            pending_reason=(
                (PendingReason.QUEUED if queue else PendingReason.SUSPENDED)
                if queued
                else PendingReason.NO_POD
            ),
            pending_since=created,
            **base,
        )
    return _observe_pod(pod, nodes, now, base)


def _observe_pod(
    pod: Mapping[str, Any], nodes: Mapping[str, NodeInfo], now: float, base: dict[str, Any]
) -> ObservedShard:
    pod_meta = pod.get("metadata") or {}
    pod_spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node_name = pod_spec.get("nodeName")
    phase = status.get("phase") or "Pending"
    statuses = status.get("containerStatuses") or []
    worker = statuses[0] if statuses else {}
    state = worker.get("state") or {}
    terminated = state.get("terminated")
    running = state.get("running")
    waiting = state.get("waiting")
    started = _time((running or terminated or {}).get("startedAt")) or _time(
        status.get("startTime")
    )
    common: dict[str, Any] = {**base, "node": node_name, "started_at": started}

    disruption = _condition(pod, "DisruptionTarget")
    if (disruption is not None and disruption.get("status") == "True") or (
        status.get("reason") in LOST_POD_REASONS
    ):
        reason = (disruption or {}).get("reason") or status.get("reason") or "Disrupted"
        report = _decode((terminated or {}).get("message"))
        return ObservedShard(
            phase=ShardPhase.LOST, failure_reason=str(reason), report=report, **common
        )
    if pod_meta.get("deletionTimestamp") or (base["suspended"] and terminated is not None):
        # Taken away (suspended, preempted by a queue, deleted): what it finished counts, the rest
        # goes back without spending an attempt. A shard deadline is not this: it fails the Job.
        report = _decode((terminated or {}).get("message"))
        reason = "Suspended" if base["suspended"] else "PodDeleted"
        return ObservedShard(phase=ShardPhase.LOST, failure_reason=reason, report=report, **common)

    if terminated is not None and terminated.get("reason") == CONTAINER_STATUS_UNKNOWN:
        report = _decode(terminated.get("message"))
        return ObservedShard(
            phase=ShardPhase.LOST,
            finished_at=_time(terminated.get("finishedAt")) or now,
            failure_reason=CONTAINER_STATUS_UNKNOWN,
            report=report,
            exit_code=_exit_code(terminated),
            **common,
        )
    if terminated is not None or phase in ("Succeeded", "Failed"):
        term = terminated or {}
        exit_code = _exit_code(term)
        report = _decode(term.get("message"))
        ran = exit_code in RUNNER_RAN
        return ObservedShard(
            phase=ShardPhase.SUCCEEDED if ran else ShardPhase.FAILED,
            finished_at=_time(term.get("finishedAt")) or now,
            report=report,
            exit_code=exit_code,
            failure_reason=None
            if ran
            else str(term.get("reason") or status.get("reason") or "Error"),
            **common,
        )

    node_lost_since = None
    if node_name:
        info = nodes.get(node_name)
        if info is None:
            # The node object is gone: nothing will ever run or report this pod.
            return ObservedShard(phase=ShardPhase.LOST, failure_reason="NodeDeleted", **common)
        if not info.ready:
            node_lost_since = info.since or now

    if phase == "Running" or running is not None:
        return ObservedShard(phase=ShardPhase.RUNNING, node_lost_since=node_lost_since, **common)

    # Pending: not scheduled, or scheduled and still pulling/creating.
    scheduled = _condition(pod, "PodScheduled")
    pending_reason: str = PendingReason.PENDING
    pending_since = _time(pod_meta.get("creationTimestamp")) or base["created_at"]
    if scheduled is not None and scheduled.get("status") == "False":
        pending_reason = str(scheduled.get("reason") or PendingReason.UNSCHEDULABLE)
        pending_since = _time(scheduled.get("lastTransitionTime")) or pending_since
    elif waiting is not None and waiting.get("reason") in WAITING_PENDING_REASONS:
        pending_reason = str(waiting.get("reason"))
    return ObservedShard(
        phase=ShardPhase.PENDING,
        pending_reason=pending_reason,
        pending_since=pending_since,
        node_lost_since=node_lost_since,
        **common,
    )
