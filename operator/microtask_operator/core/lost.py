"""Why a shard was lost, and the rebalance reason its work is moved under.

A lost shard is one the infrastructure took away: its node, its Job or its pod. What its report
says succeeded counts; the rest goes back without spending an attempt. Bodies name the cause in
`ObservedShard.failure_reason` with Kubernetes' words (a pod's DisruptionTarget reason, its status
reason, a container state) or with the few below; this module is the one table from those words to
the `Reason` a rebalance is counted under.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .types import Reason

#: The shard's node was NotReady (or Unknown) for longer than nodeLostGraceSeconds.
NODE_NOT_READY = "NodeNotReady"
#: Work in flight at the last decision whose Job is gone without having been seen going.
JOB_VANISHED = "JobVanished"
#: The shard's Job was suspended (by spec.suspend, or by a queue that preempted it).
SUSPENDED = "Suspended"

LOST_REASONS: Mapping[str, Reason] = MappingProxyType(
    {
        # The node went away, or the kubelet lost track of the pod's containers.
        "NodeDeleted": Reason.NODE_LOST,
        "NodeLost": Reason.NODE_LOST,
        NODE_NOT_READY: Reason.NODE_LOST,
        # A node back from a short outage reports the containers it no longer knows this way.
        "ContainerStatusUnknown": Reason.NODE_LOST,
        "DeletionByTaintManager": Reason.NODE_LOST,
        "DeletionByPodGC": Reason.NODE_LOST,
        "Shutdown": Reason.NODE_LOST,
        "NodeShutdown": Reason.NODE_LOST,
        "TerminationByKubelet": Reason.NODE_LOST,
        # Someone deleted the shard's Job, or it vanished unseen.
        "JobDeleted": Reason.JOB_DELETED,
        JOB_VANISHED: Reason.JOB_DELETED,
        # The pod itself was taken away: evicted, preempted, deleted, or its Job suspended.
        "PodDeleted": Reason.POD_DISRUPTED,
        "Evicted": Reason.POD_DISRUPTED,
        "EvictionByEvictionAPI": Reason.POD_DISRUPTED,
        "Preempting": Reason.POD_DISRUPTED,
        "PreemptionByScheduler": Reason.POD_DISRUPTED,
        "PreemptionByKubeScheduler": Reason.POD_DISRUPTED,
        SUSPENDED: Reason.POD_DISRUPTED,
    }
)


def rebalance_reason(failure_reason: str | None) -> Reason:
    """The Reason a lost shard counts under.

    A cause not in the table (none given, a new `Preemption...` reason of Kubernetes) is a pod
    taken away: only the causes known to mean a lost node count as one.
    """
    if failure_reason is None:
        return Reason.POD_DISRUPTED
    return LOST_REASONS.get(failure_reason, Reason.POD_DISRUPTED)


def describe(reason: Reason, shard_id: int, node: str | None, failure_reason: str | None) -> str:
    """What happened to the shard, in the words of its reason (the start of the rebalance event)."""
    cause = failure_reason or "lost"
    if reason == Reason.NODE_LOST:
        where = f"node {node}" if node else "its node"
        return f"shard {shard_id} lost with {where} ({cause})"
    if reason == Reason.JOB_DELETED:
        return f"the Job of shard {shard_id} was deleted by someone else ({cause})"
    where = f" on node {node}" if node else ""
    return f"the pod of shard {shard_id}{where} was taken away ({cause})"
