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


#: Short alias: `conditions.Reason.INVALID_SPEC`.
Reason = ConditionReason


# The short names the core's code uses; the enums above are the one source of the strings.
READY = ConditionType.READY
COMPLETE = ConditionType.COMPLETE
FAILED = ConditionType.FAILED
INVALID = ConditionType.INVALID
SUSPENDED = ConditionType.SUSPENDED
WAITING_FOR_DEPENDENCIES = ConditionType.WAITING_FOR_DEPENDENCIES

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
