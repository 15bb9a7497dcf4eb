"""Status vocabulary shared by the core, the adapter and the CLI: phases, condition types, reasons.

The values are part of the API (users filter on them with `kubectl wait --for=condition=Complete`),
so they are constants here rather than strings spread through the code.
"""

from __future__ import annotations

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
