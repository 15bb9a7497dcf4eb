"""What the core remembers between decisions, and how it is kept in a MicrotaskJob's status.

The state is small whatever the number of microtasks: outcomes are index sets (ranges), retries are
a bounded list of batches, node records are capped. Shards in flight are NOT stored here: they are
observed (the Jobs that exist), so a restarted body rebuilds the full picture from status plus the
Jobs it finds, and a shard created just before a crash is recognised instead of duplicated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from microtask_runner.indexset import IndexSet

from . import failures
from .conditions import Condition, Phase
from .failures import FailureEntry
from .resources import ResourceSeconds
from .timefmt import from_rfc3339, to_rfc3339
from .types import Pool

# Bounds that keep status small; chosen far above what a healthy job needs.
MAX_RETRY_BATCHES = 32
MAX_NODE_RECORDS = 50
# Ranges of suspected microtasks (failures awaiting judgement), job-wide: a node failing whole
# shards needs one range per shard until its victims succeed elsewhere, and an attempt spent on it
# is given back only while the suspicion is kept, so the node failing most may take the others'
# share; each node keeps MAX_SUSPECT_RANGES whatever the others hold. (Scattered failures are the
# program's more often than not, and losing some of those only slows judgement down.)
MAX_SUSPECT_RANGES = 16
MAX_SUSPECTED_RANGES = MAX_NODE_RECORDS * MAX_SUSPECT_RANGES


class StateError(ValueError):
    """The stored status cannot be read back (edited by hand, or from an incompatible version)."""


@dataclass(frozen=True)
class RetryBatch:
    """Microtasks that each spent `attempts` attempts and may run again from `not_before`."""

    attempts: int
    not_before: float
    indexes: IndexSet


@dataclass(frozen=True)
class NodeRecord:
    """Failures seen on one node across the whole MicrotaskJob (bad-node tracking)."""

    failures: int
    last_failure: float
    level: str | None = None  # None | "soft" | "hard"
    until: float | None = None  # the exclusion expires then
    # Shards harvested from this node since its first failure (failures included); one whose
    # only failures await judgement counts once one of them is confirmed.
    shards: int = 0
    # Microtasks whose reported failure here awaits judgement: it counts against the node if they
    # later succeed on another node, and is dropped if they fail elsewhere or for good.
    suspect: IndexSet = IndexSet.EMPTY
    # Times the node was excluded in this job: each exclusion lasts longer than the last, and a
    # node once excluded is on probation until its record is forgotten (see badnodes).
    exclusions: int = 0

    def rate(self) -> float:
        return self.failures / max(self.shards, self.failures, 1)


@dataclass(frozen=True)
class PoolDurations:
    """Finished work per pool: the baseline that straggler detection compares against."""

    shards: int = 0  # harvested shards that reported durations
    microtasks: int = 0
    seconds: float = 0.0
    failed_shards: int = 0  # harvested shards with a failed microtask (the pool's failure rate)
    harvested: int = 0  # all harvested shards
    # Seconds the pool's pods took before their first microtask, as last measured: kept, since
    # at a job's end no live pod may show it and new shards would be sized without it.
    startup_seconds: float | None = None

    def per_microtask(self) -> float | None:
        if self.microtasks <= 0:
            return None
        return self.seconds / self.microtasks


@dataclass(frozen=True)
class CoreState:
    succeeded: IndexSet = IndexSet.EMPTY
    failed: IndexSet = IndexSet.EMPTY  # permanently
    retry: tuple[RetryBatch, ...] = ()
    # What was in flight after the last decision, by attempt number: a shard whose Job vanishes
    # unseen (deleted by someone, lost to a long watch outage) comes back at its attempt level.
    in_flight: Mapping[int, IndexSet] = field(default_factory=dict)
    retired: IndexSet = IndexSet.EMPTY  # shard ids harvested or abandoned: never harvested again
    kept: IndexSet = IndexSet.EMPTY  # retired failed shards whose Jobs are kept for debugging
    next_shard: int = 0
    attempts: int = 0  # microtask attempts launched (speculative copies not included)
    speculative_copies: int = 0
    rebalances: Mapping[str, int] = field(default_factory=dict)
    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    durations: Mapping[Pool, PoolDurations] = field(default_factory=dict)
    gpu_fallback_until: float | None = None
    wasted_seconds: float = 0.0
    # The most frequent kinds of failure (bounded), microtasks that needed a retry to succeed,
    # pod time spent, and (once finished) microtasks never launched.
    failure_summary: tuple[FailureEntry, ...] = ()
    succeeded_after_retry: int = 0
    resources: ResourceSeconds = field(default_factory=ResourceSeconds)
    not_run: int | None = None
    start_time: float | None = None
    completion_time: float | None = None
    phase: Phase = Phase.PENDING
    message: str = ""
    conditions: tuple[Condition, ...] = ()
    # What the decision that made this state derived from its sets (the ledger: their union,
    # the retry queue's...), so the next decision need not derive it again from scratch. Used
    # only while the sets are these very objects; never stored, compared or shown.
    derived: object = field(default=None, compare=False, repr=False)

    @classmethod
    def initial(cls) -> CoreState:
        return cls()

    def queued(self) -> IndexSet:
        return IndexSet.from_ranges(r for b in self.retry for r in b.indexes.ranges)

    def to_status(self) -> dict[str, Any]:
        """The persistent part of the status (the planner adds derived counters)."""
        status: dict[str, Any] = {
            "phase": str(self.phase),
            "succeededIndexes": self.succeeded.to_compact(),
            "failedIndexes": self.failed.to_compact(),
            "retryQueue": [
                {
                    "attempts": b.attempts,
                    "notBefore": to_rfc3339(b.not_before, round_up=True),
                    "indexes": b.indexes.to_compact(),
                }
                for b in self.retry
            ],
            "inFlight": [
                {"attempt": attempt, "indexes": indexes.to_compact()}
                for attempt, indexes in sorted(self.in_flight.items())
            ],
            "retiredShards": self.retired.to_compact(),
            "keptShards": self.kept.to_compact(),
            "nextShard": self.next_shard,
            "attempts": self.attempts,
            "speculativeCopies": self.speculative_copies,
            "rebalances": dict(sorted(self.rebalances.items())),
            "excludedNodes": [
                {
                    "node": name,
                    "level": record.level,
                    "until": to_rfc3339(record.until or record.last_failure, round_up=True),
                    "failures": record.failures,
                }
                for name, record in sorted(self.nodes.items())
                if record.level is not None
            ],
            "nodeFailures": [
                _node_failure(name, record) for name, record in sorted(self.nodes.items())
            ],
            "durations": {
                str(pool): {
                    "shards": d.shards,
                    "count": d.microtasks,
                    "seconds": round(d.seconds, 3),
                    "harvested": d.harvested,
                    "failedShards": d.failed_shards,
                    **(
                        {"startupSeconds": round(d.startup_seconds, 1)}
                        if d.startup_seconds is not None
                        else {}
                    ),
                }
                for pool, d in sorted(self.durations.items())
            },
            "wastedSeconds": round(self.wasted_seconds, 3),
            "failureSummary": failures.to_status(self.failure_summary),
            "succeededAfterRetry": self.succeeded_after_retry,
            "resources": self.resources.to_status(),
            "message": self.message,
            "conditions": [
                {
                    "type": c.type,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": to_rfc3339(c.last_transition),
                }
                for c in self.conditions
            ],
        }
        if self.gpu_fallback_until is not None:
            status["gpuFallbackUntil"] = to_rfc3339(self.gpu_fallback_until, round_up=True)
        if self.not_run is not None:
            status["notRun"] = self.not_run
        if self.start_time is not None:
            status["startTime"] = to_rfc3339(self.start_time)
        if self.completion_time is not None:
            status["completionTime"] = to_rfc3339(self.completion_time)
        return status

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> CoreState:
        """Read back what `to_status` wrote; an empty or missing status is a fresh job."""
        if not status:
            return cls()
        try:
            return _parse_status(status)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StateError(f"status cannot be read back: {error}") from error


def _node_failure(name: str, record: NodeRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "node": name,
        "failures": record.failures,
        "shards": record.shards,
        "lastFailure": to_rfc3339(record.last_failure),
    }
    if record.suspect:
        entry["suspect"] = record.suspect.to_compact()
    if record.exclusions:
        entry["exclusions"] = record.exclusions
    return entry


def _time(value: Any) -> float | None:
    return None if value in (None, "") else from_rfc3339(str(value))


def _indexes(value: Any) -> IndexSet:
    return IndexSet.from_compact(str(value)) if value else IndexSet.EMPTY


def _parse_status(status: Mapping[str, Any]) -> CoreState:
    excluded = {e["node"]: e for e in status.get("excludedNodes") or []}
    nodes: dict[str, NodeRecord] = {}
    for entry in status.get("nodeFailures") or []:
        name = str(entry["node"])
        exclusion = excluded.get(name)
        nodes[name] = NodeRecord(
            failures=int(entry["failures"]),
            last_failure=from_rfc3339(entry["lastFailure"]),
            level=str(exclusion["level"]) if exclusion else None,
            until=_time(exclusion["until"]) if exclusion else None,
            shards=int(entry.get("shards", 0)),
            suspect=_indexes(entry.get("suspect")),
            exclusions=int(entry.get("exclusions", 0)),
        )
    durations = {
        Pool(pool): PoolDurations(
            shards=int(d.get("shards", 0)),
            microtasks=int(d["count"]),
            seconds=float(d["seconds"]),
            failed_shards=int(d.get("failedShards", 0)),
            harvested=int(d.get("harvested", 0)),
            startup_seconds=(
                None if d.get("startupSeconds") is None else float(d["startupSeconds"])
            ),
        )
        for pool, d in (status.get("durations") or {}).items()
    }
    conditions = tuple(
        Condition(
            type=str(c["type"]),
            status=str(c["status"]),
            reason=str(c.get("reason", "")),
            message=str(c.get("message", "")),
            last_transition=from_rfc3339(c["lastTransitionTime"]),
        )
        for c in status.get("conditions") or []
    )
    return CoreState(
        succeeded=_indexes(status.get("succeededIndexes")),
        failed=_indexes(status.get("failedIndexes")),
        retry=tuple(
            RetryBatch(
                attempts=int(b["attempts"]),
                not_before=from_rfc3339(b["notBefore"]),
                indexes=_indexes(b["indexes"]),
            )
            for b in status.get("retryQueue") or []
        ),
        in_flight={int(b["attempt"]): _indexes(b["indexes"]) for b in status.get("inFlight") or []},
        retired=_indexes(status.get("retiredShards")),
        kept=_indexes(status.get("keptShards")),
        next_shard=int(status.get("nextShard", 0)),
        attempts=int(status.get("attempts", 0)),
        speculative_copies=int(status.get("speculativeCopies", 0)),
        rebalances={str(k): int(v) for k, v in (status.get("rebalances") or {}).items()},
        nodes=nodes,
        durations=durations,
        gpu_fallback_until=_time(status.get("gpuFallbackUntil")),
        wasted_seconds=float(status.get("wastedSeconds", 0.0)),
        failure_summary=failures.from_status(status.get("failureSummary")),
        succeeded_after_retry=int(status.get("succeededAfterRetry") or 0),
        resources=ResourceSeconds.from_status(status.get("resources")),
        not_run=None if status.get("notRun") is None else int(status["notRun"]),
        start_time=_time(status.get("startTime")),
        completion_time=_time(status.get("completionTime")),
        phase=Phase(str(status.get("phase") or Phase.PENDING)),
        message=str(status.get("message") or ""),
        conditions=conditions,
    )
