"""Status vocabulary shared by the core, the adapter and the CLI: phases, condition types, reasons.

The values are part of the API (users filter on them with `kubectl wait --for=condition=Complete`).
They are defined once, in the pure core that decides them, and re-exported here for API users.
"""

from __future__ import annotations

from microtask_operator.core.conditions import (
    TERMINAL_PHASES,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
)

__all__ = [
    "TERMINAL_PHASES",
    "ConditionReason",
    "ConditionStatus",
    "ConditionType",
    "Phase",
    "Reason",
]
