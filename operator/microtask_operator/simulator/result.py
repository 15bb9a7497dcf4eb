"""What a simulation run measured, and its stable JSON form (same seed, byte-identical output)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from microtask_runner.indexset import IndexSet


class SimulationError(RuntimeError):
    """The simulation could not finish: the job got stuck or the core broke an invariant."""


@dataclass(frozen=True)
class Policies:
    """Which rebalancing policies were left on (the `--no-*` flags turn them off)."""

    fallback: bool = True
    speculation: bool = True
    exclusion: bool = True

    def label(self) -> str:
        off = [name for name, on in self.as_dict().items() if not on]
        return "all on" if not off else "no " + ", no ".join(off)

    def as_dict(self) -> dict[str, bool]:
        return {
            "fallback": self.fallback,
            "speculation": self.speculation,
            "exclusion": self.exclusion,
        }


@dataclass
class SimulationResult:
    mode: str  # "core" (Microtask) or "static" (a plain Indexed Job)
    cluster: str
    seed: int
    total: int
    policies: Policies
    phase: str = "Pending"
    finished: bool = False  # the job reached Succeeded/Failed (False: stuck or out of time)
    makespan: float = 0.0
    lower_bound: float = 0.0
    succeeded: IndexSet = IndexSet.EMPTY
    failed: IndexSet = IndexSet.EMPTY
    attempts: int = 0  # attempts charged: per microtask, the highest attempt number launched
    executions: int = 0  # microtask runs started (relaunches and speculative copies included)
    speculative_copies: int = 0
    rebalanced: dict[str, int] = field(default_factory=dict)
    wasted_seconds: float = 0.0
    busy_seconds: dict[str, float] = field(default_factory=dict)  # slot time used, per pool
    completed_by_pool: dict[str, int] = field(default_factory=dict)  # reported successes per pool
    excluded_nodes: list[dict[str, Any]] = field(default_factory=list)
    shards: int = 0  # shard pods created
    plan_calls: int = 0
    counted_succeeded: int = 0  # sum of the core's per-decision succeeded deltas
    counted_failed: int = 0
    exclusion_changes: int = 0  # node exclusion levels set or changed, as seen in the state
    anomalies: list[str] = field(default_factory=list)  # invariants the core broke
    message: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # the core's final status

    @property
    def ratio(self) -> float:
        """Makespan over the lower bound (1.0 is perfect; 0.0 when there is no finite bound)."""
        if not 0 < self.lower_bound < math.inf:
            return 0.0
        return self.makespan / self.lower_bound

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "cluster": self.cluster,
            "seed": self.seed,
            "policies": self.policies.as_dict(),
            "phase": self.phase,
            "finished": self.finished,
            "total": self.total,
            "makespanSeconds": _round(self.makespan),
            # JSON has no infinity: null says "no schedule can finish this work".
            "lowerBoundSeconds": _round(self.lower_bound) if self.lower_bound < math.inf else None,
            "makespanOverLowerBound": round(self.ratio, 4) if self.ratio else None,
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "failedIndexes": self.failed.format_bounded(200),
            "attempts": self.attempts,
            "executions": self.executions,
            "speculativeCopies": self.speculative_copies,
            "rebalanced": dict(sorted(self.rebalanced.items())),
            "wastedSeconds": _round(self.wasted_seconds),
            "busySeconds": {k: _round(v) for k, v in sorted(self.busy_seconds.items())},
            "completedByPool": dict(sorted(self.completed_by_pool.items())),
            "excludedNodes": self.excluded_nodes,
            "shards": self.shards,
            "anomalies": self.anomalies,
            "message": self.message,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _round(value: float) -> float:
    return round(value, 3)
