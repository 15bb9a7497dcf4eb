"""Whether a MicrotaskJob may start: its `dependsOn`, judged from the MicrotaskJobs the watch holds.

A dependency gates the start only. While it runs or does not exist yet the job waits (a missing one
may still be created); when it failed, or when the jobs wait on each other in a cycle that nothing
can break, the job fails with a condition that names the culprit. `timeouts.dependenciesSeconds`
bounds the wait, counted from the job's creation.

Pure functions over plain bodies, so each verdict is a table test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core import conditions

# (namespace-local) name -> the MicrotaskJob as watched, or None when there is none.
Lookup = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Waiting:
    """Not yet: the condition's reason and message, and when the wait times out (if ever)."""

    reason: str
    message: str
    deadline: float | None = None


@dataclass(frozen=True)
class Blocked:
    """Never: the job fails with this reason and message."""

    reason: str
    message: str


Verdict = Waiting | Blocked | None  # None: every dependency succeeded


def _depends_on(body: Mapping[str, Any]) -> list[str]:
    value = (body.get("spec") or {}).get("dependsOn") or []
    return [str(v) for v in value] if isinstance(value, list) else []


def _waits(body: Mapping[str, Any]) -> bool:
    """Does this job still wait for its dependencies (never started, never succeeded)?

    One that failed without starting counts: it failed for its dependencies (or this very
    cycle) and starts once they are met.
    """
    status = body.get("status") or {}
    return not status.get("startTime") and status.get("phase") != "Succeeded"


def find_cycle(name: str, depends_on: Sequence[str], lookup: Lookup) -> list[str] | None:
    """A cycle of waiting jobs through `name` (`[name, b, ..., name]`), or None.

    Only jobs that still wait are followed: a dependency that started, or finished, no longer
    waits for anyone, so it cannot close a cycle.
    """
    path = [name]
    on_path = {name}
    seen: set[str] = set()

    def visit(deps: Sequence[str]) -> list[str] | None:
        for dep in sorted(set(deps)):
            if dep == name:
                return [*path, name]
            if dep in on_path or dep in seen:
                continue
            body = lookup(dep)
            if body is None or not _waits(body):
                continue
            seen.add(dep)
            path.append(dep)
            on_path.add(dep)
            found = visit(_depends_on(body))
            path.pop()
            on_path.discard(dep)
            if found is not None:
                return found
        return None

    return visit(depends_on)


def judge(
    name: str,
    depends_on: Sequence[str],
    lookup: Lookup,
    *,
    created_at: float | None,
    timeout_seconds: float | None,
    now: float,
) -> Verdict:
    """May `name` start? None when every dependency succeeded."""
    if not depends_on:
        return None
    # A cycle first: its members fail one after the other, and each must say "cycle", not
    # that the other failed.
    cycle = find_cycle(name, depends_on, lookup)
    if cycle is not None:
        return Blocked(
            conditions.REASON_DEPENDENCY_CYCLE,
            "dependency cycle: " + " → ".join(cycle) + "; none of them can start: remove one "
            "of the dependsOn entries",
        )
    missing: list[str] = []
    waiting: list[str] = []
    for dep in depends_on:
        body = lookup(dep)
        if body is None:
            missing.append(dep)
            continue
        phase = (body.get("status") or {}).get("phase")
        if phase == "Failed":
            return Blocked(conditions.REASON_DEPENDENCY_FAILED, f"dependency {dep} failed")
        if phase != "Succeeded":
            waiting.append(f"{dep} ({phase or 'Pending'})")
    if not missing and not waiting:
        return None
    parts = []
    if missing:
        parts.append(
            ("dependency " if len(missing) == 1 else "dependencies ")
            + ", ".join(missing)
            + (" does not exist" if len(missing) == 1 else " do not exist")
            + " (yet)"
        )
    if waiting:
        parts.append("waiting for " + ", ".join(waiting))
    message = "; ".join(parts)
    reason = (
        conditions.REASON_DEPENDENCY_NOT_FOUND
        if missing
        else conditions.REASON_WAITING_FOR_DEPENDENCIES
    )
    deadline = None
    if timeout_seconds is not None and created_at is not None:
        deadline = created_at + timeout_seconds
        if now >= deadline:
            return Blocked(
                conditions.REASON_DEPENDENCY_TIMEOUT,
                f"timeouts.dependenciesSeconds={timeout_seconds:g} exceeded: {message}",
            )
    return Waiting(reason, message, deadline)
