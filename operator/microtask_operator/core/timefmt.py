"""Pure conversions between the core's clock (float seconds since the epoch) and RFC 3339 strings.

The core never reads a clock; bodies pass `now`. Status stores times as RFC 3339 (what Kubernetes
tools display), so state round-trips through these two functions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def to_rfc3339(seconds: float, *, round_up: bool = False) -> str:
    """Whole seconds, because that is what `kubectl` shows; `round_up` for deadlines never early."""
    whole = math.ceil(seconds) if round_up else math.floor(seconds)
    return datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str) -> float:
    """Parse what `to_rfc3339` (or a Kubernetes server) writes; ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp: {text!r}")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
