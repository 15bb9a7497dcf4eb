"""Plain data the core reads and writes: the spec, what is observed, and the actions decided.

Everything here is framework-free (no pydantic, no kopf, no clock): the kopf adapter, the local
executor and the simulator all translate their world into these types and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report


class Pool(StrEnum):
    """Where a shard runs."""

    GPU = "gpu"
    CPU = "cpu"


class Accelerator(StrEnum):
    """What the user asked for: a pool, or `auto` (prefer GPU, fall back to CPU)."""

    GPU = "gpu"
    CPU = "cpu"
    AUTO = "auto"


class ShardPhase(StrEnum):
    """A shard's state as observed from its Job, pod and node."""

    PENDING = "Pending"  # created, not running yet (unscheduled, pulling its image, queued)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # the pod ended (exit 0 or "some microtasks failed"); report readable
    FAILED = "Failed"  # the pod ended badly (crash, OOM, deadline); report may be partial or absent
    LOST = "Lost"  # infrastructure took it away: node lost, evicted, preempted, Job/pod vanished


class PendingReason(StrEnum):
    """Why a shard waits, in the words bodies report and the core acts on.

    Kubernetes' own words for a waiting container (ImagePullBackOff, ...) pass through as they
    are; the core only acts on these.
    """

    UNSCHEDULABLE = "Unschedulable"  # no node can take its pod now (full, or none fits)
    QUEUED = "Queued"  # held by a queue (Kueue) on purpose: its turn comes
    SUSPENDED = "Suspended"  # its Job is suspended (by spec.suspend, or a queue)
    NO_POD = "NoPod"  # its Job exists, no pod yet (the operator looks for a refusal)
    PENDING = "Pending"  # its pod waits, no reason given


class Reason(StrEnum):
    """Why the core moved work (the `reason` label of rebalance metrics and events)."""

    UNSCHEDULABLE_FALLBACK = "unschedulable_fallback"
    NODE_LOST = "node_lost"  # the node went away, or was NotReady past the grace
    JOB_DELETED = "job_deleted"  # the shard's Job was deleted by someone else, or vanished
    POD_DISRUPTED = "pod_disrupted"  # the pod was evicted, preempted or deleted by someone else
    STRAGGLER = "straggler"
    BAD_NODE = "bad_node"


class DeleteReason(StrEnum):
    """Why the core deletes a shard's Job, unless it moved the work (then its rebalance Reason)."""

    HARVESTED = "harvested"  # its outcomes are recorded
    RETIRED = "retired"  # harvested or abandoned earlier, or no longer kept for debugging
    SPECULATION_LOSER = "speculation_loser"  # another member of its group won the race
    FALLBACK = "fallback"  # its work moved to the CPU pool
    UNPINNED = "unpinned"  # its work relaunched with today's avoid lists
    FINISHED = "finished"  # the job ended
    TOO_MANY_FAILURES = "too_many_failures"  # the job failed: too many microtasks failed
    DEADLINE = "deadline"  # the job failed: timeouts.jobSeconds ran out
    REFUSED = "refused"  # the job failed: the cluster refuses its pods


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 300.0
    non_retryable_exit_codes: frozenset[int] = frozenset()
    max_failed_microtasks: int = 0
    max_failed_fraction: float | None = None  # of the job's microtasks; the larger allowance wins
    retry_command_not_found: bool = False  # 126/127 fail at once unless this is set
    in_pod: bool = True  # a pod retries its own failed microtasks once (see retries.in_pod_delay)


@dataclass(frozen=True)
class SpeculationPolicy:
    enabled: bool = False
    slowdown_factor: float = 3.0
    min_samples: int = 5
    max_fraction: float = 0.1  # of parallelism, at most this many copies in flight (at least 1)


@dataclass(frozen=True)
class BadNodePolicy:
    enabled: bool = True
    soft_after_failures: int = 2
    hard_after_failures: int = 4
    exclude_seconds: float = 600.0
    max_excluded_fraction: float = 0.5  # of a pool's ready nodes, never more


@dataclass(frozen=True)
class CoreSpec:
    """The part of a validated MicrotaskJob spec that decisions depend on."""

    total: int
    microtasks_per_shard: int = 1  # with target_shard_seconds: the largest shard
    # Set: shards sized to run this long on their pool, smaller at first and at the end
    # (core/shardsize.py). None: every shard holds microtasks_per_shard.
    target_shard_seconds: float | None = None
    parallelism: int = 10
    accelerator: Accelerator = Accelerator.CPU
    fallback_after_seconds: float = 120.0
    fallback_cooldown_seconds: float = 300.0  # new shards go to CPU this long after a fallback
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    speculation: SpeculationPolicy = field(default_factory=SpeculationPolicy)
    bad_nodes: BadNodePolicy = field(default_factory=BadNodePolicy)
    node_lost_grace_seconds: float = 30.0
    job_timeout_seconds: float | None = None
    suspend: bool = False
    keep_failed_shards: int = 3
    # The microtasks' indexes when they are not 0..total-1 (a rerun of another job's failures);
    # total is then len(universe).
    universe: IndexSet | None = None
    # What one shard's pod holds, for the CPU- and GPU-seconds spent.
    cpu_per_pod: float = 1.0
    gpus_per_pod: int = 1

    def indexes(self) -> IndexSet:
        """All the job's microtasks: the universe when set, else 0..total-1."""
        if self.universe is not None:
            return self.universe
        return IndexSet.from_range(0, self.total)


@dataclass(frozen=True)
class Progress:
    """How far a running shard's pod has got, when the body can see it (the runner's progress).

    `done`: its microtasks finished so far (succeeded or failed); `seconds`: the time since its
    first microtask began (pod start-up excluded), so `seconds / done` is the pace it runs at.
    """

    done: int
    seconds: float


@dataclass(frozen=True)
class ObservedShard:
    """One shard in flight (a Job that exists), as the body observed it."""

    shard_id: int
    indexes: IndexSet
    attempt: int  # 1 for first attempts; k for the k-th attempt of every microtask in it
    pool: Pool
    created_at: float
    phase: ShardPhase
    copy_of: int | None = None  # set on speculative copies: the shard id they duplicate
    node: str | None = None
    started_at: float | None = None  # when its pod started running
    finished_at: float | None = None
    # A PendingReason, or Kubernetes' own word for a waiting container (ImagePullBackOff, ...).
    pending_reason: str | None = None
    pending_since: float | None = None
    node_lost_since: float | None = None  # its node went NotReady/Unknown at this time
    report: Report | None = None  # the runner's report (termination message), if any
    exit_code: int | None = None  # the worker container's exit code, if it terminated
    failure_reason: str | None = None  # e.g. OOMKilled, DeadlineExceeded, Evicted, Error
    suspended: bool = False  # the Job is suspended (by us or by a queue)
    # The cluster refuses this shard's pods for good (e.g. Pod Security admission): its words.
    refusal: str | None = None
    # Nodes its pods may not use (required anti-affinity): none of them can take it.
    avoid_nodes_hard: tuple[str, ...] = ()
    # A running shard's progress, if the body observes it (None: only its end is seen).
    progress: Progress | None = None


@dataclass(frozen=True)
class ClusterView:
    """Ready nodes per pool, so exclusion never takes a pool's whole capacity.

    `slots`: how many of the job's shard pods a node holds at once, by node name, when the
    body knows it (the simulator does). A pool with a ready node missing from it has unknown
    capacity: placement then learns it from observation (pods Pending Unschedulable there mean
    "full").
    """

    ready_nodes: dict[Pool, frozenset[str]] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)

    def capacity(self, pool: Pool, without: frozenset[str] = frozenset()) -> int | None:
        """Shard pods the pool's ready nodes (but `without`) hold at once; None if unknown."""
        names = self.ready_nodes.get(pool)
        if names is None or not self.slots or any(n not in self.slots for n in names):
            return None
        return sum(self.slots[n] for n in names if n not in without)


@dataclass(frozen=True)
class ShardPlan:
    """A shard the core wants launched; the body turns it into a Job (or a process)."""

    shard_id: int
    indexes: IndexSet
    attempt: int
    pool: Pool
    copy_of: int | None = None
    avoid_nodes_hard: tuple[str, ...] = ()  # required node anti-affinity
    avoid_nodes_soft: tuple[str, ...] = ()  # preferred node anti-affinity

    def as_pending(self, now: float, reason: str | None = None) -> ObservedShard:
        """The shard as it stands right after its launch, before anything was observed."""
        return ObservedShard(
            shard_id=self.shard_id,
            indexes=self.indexes,
            attempt=self.attempt,
            pool=self.pool,
            created_at=now,
            phase=ShardPhase.PENDING,
            copy_of=self.copy_of,
            pending_reason=reason,
            avoid_nodes_hard=self.avoid_nodes_hard,
        )


@dataclass(frozen=True)
class CreateShard:
    plan: ShardPlan


@dataclass(frozen=True)
class DeleteShard:
    shard_id: int
    reason: DeleteReason | Reason


@dataclass(frozen=True)
class SuspendShard:
    shard_id: int
    suspend: bool


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event worth emitting (started, shard failed, finished...)."""

    reason: str
    message: str
    warning: bool = False


Action = CreateShard | DeleteShard | SuspendShard | Event
