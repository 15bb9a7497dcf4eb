"""Who is charged when a shard ends: what its runner reported, and whom its pod's death blames.

A harvested shard's microtasks fall into three parts:

* succeeded (the report says so);
* charged with a failed attempt, each charge with its kind: the exit code the runner reported for
  the microtask, or, when the pod died, a pod-level reason (`OOMKilled`, `DeadlineExceeded`, ...);
* unreported: never run or left out of the report; they go back without spending an attempt.

When the pod died, only the microtask it was running is charged (its report names it), or the
first one if it reported nothing (so a relaunch always progresses). Without a usable report every
microtask is charged, so a broken image cannot loop forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from microtask_runner.indexset import IndexSet

from .failures import describe_exit_code
from .types import ObservedShard, ShardPhase

#: Exit code charged to a microtask whose pod died without saying how (no exit code, or 0).
NO_REPORT_EXIT_CODE = 137
#: Pod-level reasons the core names itself (the others come from Kubernetes, e.g. OOMKilled).
RUNNER_ERROR = "RunnerError"
NO_REPORT = "NoReport"


@dataclass(frozen=True)
class Charge:
    """Microtasks charged one failed attempt, and why."""

    indexes: IndexSet
    code: int  # what the retry policy judges: the runner's exit code, or the pod's
    exit_code: int | None  # the kind's: the runner's code; None when the pod's death is blamed
    reason: str  # the kind's words: `command not found`, `exit 3`, `OOMKilled`...
    message: str = ""  # the error text of the first microtask charged (or what the pod said)

    @property
    def from_runner(self) -> bool:
        return self.exit_code is not None


@dataclass(frozen=True)
class Attribution:
    ok: IndexSet
    charges: tuple[Charge, ...]
    unreported: IndexSet

    def charged(self) -> IndexSet:
        return IndexSet.from_ranges(r for c in self.charges for r in c.indexes.ranges)

    def error_text(self) -> str:
        return next((c.message for c in self.charges if c.message), "")


def pod_exit_code(shard: ObservedShard) -> int:
    """The code charged for a microtask the pod died on: its exit code, or 137 if it had none."""
    if shard.exit_code is None or shard.exit_code == 0:
        return NO_REPORT_EXIT_CODE
    return shard.exit_code


def pod_reason(shard: ObservedShard) -> str:
    """The pod-level kind of a shard whose pod died or left no usable report."""
    if shard.report is not None and shard.report.runner_error:
        return RUNNER_ERROR
    if shard.failure_reason:
        return shard.failure_reason
    if shard.report is None:
        return NO_REPORT
    return describe_exit_code(pod_exit_code(shard))


def _pod_detail(shard: ObservedShard) -> str:
    parts = [shard.failure_reason] if shard.failure_reason else []
    if shard.exit_code is not None:
        parts.append(f"exit {shard.exit_code}")
    return f" ({', '.join(parts)})" if parts else ""


def _pod_charge(shard: ObservedShard, indexes: IndexSet, message: str) -> Charge:
    return Charge(indexes, pod_exit_code(shard), None, pod_reason(shard), message)


def interrupted(shard: ObservedShard, inside: IndexSet) -> IndexSet:
    """The microtask the pod was running when it ended (its report names it), if any.

    It ran, whatever happens to the shard: a pod that died was killed by it, a pod taken away
    took it along half done.
    """
    report = shard.report
    if report is None or report.runner_error or report.current is None:
        return IndexSet.EMPTY
    current = report.current
    if current not in inside or current in report.succeeded or current in report.failed_indexes():
        return IndexSet.EMPTY
    return IndexSet.from_range(current, current + 1)


def attribute(shard: ObservedShard, inside: IndexSet | None = None) -> Attribution:
    """Split `inside` (the shard's microtasks, by default all of them) by outcome."""
    if inside is None:
        inside = shard.indexes
    report = shard.report
    if report is None or report.runner_error:
        if report is not None and report.runner_error:
            message = report.runner_error
        else:
            message = f"the pod ended without a report{_pod_detail(shard)}"
        whole = (_pod_charge(shard, inside, message),) if inside else ()
        return Attribution(IndexSet.EMPTY, whole, IndexSet.EMPTY)

    ok = report.succeeded & inside
    charges: list[Charge] = []
    taken = ok
    for code in sorted(report.failed):
        indexes = (report.failed[code] & inside) - taken
        if indexes:
            reason = describe_exit_code(code)
            charges.append(Charge(indexes, code, code, reason, report.errors.get(code, "")))
            taken = taken | indexes
    if shard.phase == ShardPhase.FAILED:
        reported = ok | report.failed_indexes()
        culprit = interrupted(shard, inside)
        if culprit:
            # The pod died while this microtask ran (OOM, deadline, crash): it was the culprit.
            text = f"the pod died while it ran{_pod_detail(shard)}"
            charges.append(_pod_charge(shard, culprit, text))
            taken = taken | culprit
        elif inside and not (reported & inside):
            # Killed before reporting anything (e.g. a shard deadline shorter than one
            # microtask): charge the first, which runs first, so a relaunch always progresses.
            first = inside.first()
            assert first is not None
            one = IndexSet.from_range(first, first + 1)
            text = f"the pod died before reporting anything{_pod_detail(shard)}"
            charges.append(_pod_charge(shard, one, text))
            taken = taken | one
    return Attribution(ok, tuple(charges), inside - taken)
