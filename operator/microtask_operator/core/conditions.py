"""Status conditions: types, reasons, and transition times that move only on transitions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# Condition types shown on a MicrotaskJob.
READY = "Ready"
COMPLETE = "Complete"
FAILED = "Failed"
INVALID = "Invalid"
SUSPENDED = "Suspended"
WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"

# Reasons (CamelCase, as Kubernetes conventions ask).
REASON_PENDING = "Pending"
REASON_RUNNING = "Running"
REASON_ALL_SUCCEEDED = "AllSucceeded"
REASON_SUCCEEDED_WITH_FAILURES = "SucceededWithTolerableFailures"
REASON_TOO_MANY_FAILURES = "TooManyFailures"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SUSPENDED = "Suspended"
REASON_RESUMED = "Resumed"
REASON_DEPENDENCY_FAILED = "DependencyFailed"
REASON_WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
REASON_DEPENDENCIES_MET = "DependenciesSucceeded"
REASON_FINISHED = "Finished"
REASON_VALID = "Valid"


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
