"""Status conditions: types, reasons, and transition times that move only on transitions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    """`status.phase`: one word for humans and printer columns; conditions carry the detail."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


#: Phases after which nothing changes any more.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """`status.conditions[].type`."""

    READY = "Ready"  # True while work proceeds normally (running or finished successfully)
    COMPLETE = "Complete"  # True once every microtask succeeded (within maxFailedMicrotasks)
    FAILED = "Failed"  # True once the job gave up (too many failures, deadline, dependency)
    INVALID = "Invalid"  # True when the spec (or a referenced ConfigMap) cannot be used
    SUSPENDED = "Suspended"  # True while spec.suspend holds the job
    WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"  # True until every dependsOn succeeded
    # True while the last reconcile failed unexpectedly (a bug, or an object the operator cannot
    # use); work already running is still harvested, no new shard is made until it clears.
    RECONCILE_ERROR = "ReconcileError"
    # True once the status was found reset or unreadable and rebuilt from the Jobs that exist.
    RECOVERED = "Recovered"
    # True while a change of a field fixed at the start (spec.items, the items' ConfigMap, the
    # output) is ignored: the job keeps what it started with.
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"


class ConditionReason(StrEnum):
    """`status.conditions[].reason` (CamelCase, as Kubernetes requires)."""

    PENDING = "Pending"
    RUNNING = "Running"
    ALL_SUCCEEDED = "AllSucceeded"
    SUCCEEDED_WITH_FAILURES = "SucceededWithTolerableFailures"  # within maxFailedMicrotasks
    FINISHED = "Finished"
    TOO_MANY_FAILURES = "TooManyFailures"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    INVALID_ITEMS = "InvalidItems"
    VALID = "Valid"
    DEPENDENCY_FAILED = "DependencyFailed"
    DEPENDENCY_NOT_FOUND = "DependencyNotFound"
    WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
    DEPENDENCIES_SUCCEEDED = "DependenciesSucceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    DEPENDENCY_CYCLE = "DependencyCycle"
    DEPENDENCY_TIMEOUT = "DependencyTimeout"
    PODS_REFUSED = "PodsRefused"  # the cluster refuses the shards' pods for good (admission)
    SHARD_BUILD_FAILED = "ShardBuildFailed"  # a shard's Job could not be made from the spec
    UNEXPECTED_ERROR = "UnexpectedError"
    STATUS_RESET = "StatusReset"
    STATUS_UNREADABLE = "StatusUnreadable"
    ITEMS_CHANGED = "ItemsChanged"
    RESOLVED = "Resolved"


#: Short alias: `conditions.Reason.INVALID_SPEC`.
Reason = ConditionReason


# The short names the core's code uses; the enums above are the one source of the strings.
READY = ConditionType.READY
COMPLETE = ConditionType.COMPLETE
FAILED = ConditionType.FAILED
INVALID = ConditionType.INVALID
SUSPENDED = ConditionType.SUSPENDED
WAITING_FOR_DEPENDENCIES = ConditionType.WAITING_FOR_DEPENDENCIES
RECONCILE_ERROR = ConditionType.RECONCILE_ERROR
RECOVERED = ConditionType.RECOVERED
SPEC_CHANGE_IGNORED = ConditionType.SPEC_CHANGE_IGNORED

REASON_PENDING = Reason.PENDING
REASON_RUNNING = Reason.RUNNING
REASON_ALL_SUCCEEDED = Reason.ALL_SUCCEEDED
REASON_SUCCEEDED_WITH_FAILURES = Reason.SUCCEEDED_WITH_FAILURES
REASON_TOO_MANY_FAILURES = Reason.TOO_MANY_FAILURES
REASON_DEADLINE_EXCEEDED = Reason.DEADLINE_EXCEEDED
REASON_INVALID_SPEC = Reason.INVALID_SPEC
REASON_SUSPENDED = Reason.SUSPENDED
REASON_RESUMED = Reason.RESUMED
REASON_DEPENDENCY_FAILED = Reason.DEPENDENCY_FAILED
REASON_WAITING_FOR_DEPENDENCIES = Reason.WAITING_FOR_DEPENDENCIES
REASON_DEPENDENCIES_MET = Reason.DEPENDENCIES_SUCCEEDED
REASON_FINISHED = Reason.FINISHED
REASON_VALID = Reason.VALID
REASON_DEPENDENCY_CYCLE = Reason.DEPENDENCY_CYCLE
REASON_DEPENDENCY_TIMEOUT = Reason.DEPENDENCY_TIMEOUT
REASON_DEPENDENCY_NOT_FOUND = Reason.DEPENDENCY_NOT_FOUND
REASON_PODS_REFUSED = Reason.PODS_REFUSED
REASON_SHARD_BUILD_FAILED = Reason.SHARD_BUILD_FAILED
REASON_UNEXPECTED_ERROR = Reason.UNEXPECTED_ERROR
REASON_STATUS_RESET = Reason.STATUS_RESET
REASON_STATUS_UNREADABLE = Reason.STATUS_UNREADABLE
REASON_ITEMS_CHANGED = Reason.ITEMS_CHANGED
REASON_RESOLVED = Reason.RESOLVED


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition: float


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: float,
) -> tuple[Condition, ...]:
    """The conditions with `type_` set; its transition time moves only when its status does."""
    wanted = "True" if status else "False"
    result: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            result.append(condition)
            continue
        found = True
        moved = condition.status != wanted
        result.append(
            replace(
                condition,
                status=wanted,
                reason=reason,
                message=message,
                last_transition=now if moved else condition.last_transition,
            )
        )
    if not found:
        result.append(Condition(type_, wanted, reason, message, now))
    return tuple(sorted(result, key=lambda c: c.type))


def get_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    for condition in conditions:
        if condition.type == type_:
            return condition
    return None


def is_true(conditions: Iterable[Condition], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"
