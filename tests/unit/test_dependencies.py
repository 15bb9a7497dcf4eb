"""dependsOn verdicts: waiting, missing, failed, cycles through waiting jobs, and the deadline."""

from __future__ import annotations

from typing import Any

import pytest
from microtask_operator.adapter.dependencies import Blocked, Waiting, find_cycle, judge
from microtask_operator.core import conditions


def mtj(
    deps: tuple[str, ...] | list[str] = (), phase: str | None = None, started: bool = False
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if started:
        status["startTime"] = "2026-01-01T00:00:00Z"
    return {"spec": {"dependsOn": list(deps)}, "status": status}


def lookup_of(jobs: dict[str, dict[str, Any]]) -> Any:
    return jobs.get


def verdict(name: str, jobs: dict[str, dict[str, Any]], **kwargs: Any) -> Any:
    deps = jobs[name]["spec"]["dependsOn"]
    kwargs.setdefault("created_at", 0.0)
    kwargs.setdefault("timeout_seconds", None)
    kwargs.setdefault("now", 10.0)
    return judge(name, deps, lookup_of(jobs), **kwargs)


def test_no_dependencies_or_all_succeeded_may_start() -> None:
    jobs = {"a": mtj(), "b": mtj(["a"]), "a2": mtj(phase="Succeeded")}
    assert verdict("a", jobs) is None
    jobs["b"] = mtj(["a2"])
    assert verdict("b", jobs) is None


def test_a_running_dependency_is_waited_for() -> None:
    jobs = {"a": mtj(phase="Running", started=True), "b": mtj(["a"])}
    got = verdict("b", jobs)
    assert isinstance(got, Waiting)
    assert got.reason == conditions.REASON_WAITING_FOR_DEPENDENCIES
    assert got.message == "waiting for a (Running)"


def test_a_missing_dependency_is_named_and_waited_for() -> None:
    jobs = {"b": mtj(["ghost", "a"]), "a": mtj(phase="Running", started=True)}
    got = verdict("b", jobs)
    assert isinstance(got, Waiting)
    assert got.reason == conditions.REASON_DEPENDENCY_NOT_FOUND
    assert got.message == "dependency ghost does not exist (yet); waiting for a (Running)"


def test_a_failed_dependency_blocks() -> None:
    jobs = {"a": mtj(phase="Failed"), "b": mtj(["a"])}
    got = verdict("b", jobs)
    assert isinstance(got, Blocked)
    assert got.reason == conditions.REASON_DEPENDENCY_FAILED


@pytest.mark.parametrize(
    ("jobs", "name", "cycle"),
    [
        ({"a": mtj(["b"]), "b": mtj(["a"])}, "a", ["a", "b", "a"]),
        ({"a": mtj(["b"]), "b": mtj(["a"])}, "b", ["b", "a", "b"]),
        ({"a": mtj(["b"]), "b": mtj(["c"]), "c": mtj(["a"])}, "c", ["c", "a", "b", "c"]),
        # A side branch that waits on the cycle is not in it, but the cycle is found through it.
        ({"a": mtj(["x", "b"]), "b": mtj(["a"]), "x": mtj()}, "a", ["a", "b", "a"]),
    ],
)
def test_cycles_of_waiting_jobs_block_with_the_cycle_named(
    jobs: dict[str, dict[str, Any]], name: str, cycle: list[str]
) -> None:
    assert find_cycle(name, jobs[name]["spec"]["dependsOn"], jobs.get) == cycle
    got = verdict(name, jobs)
    assert isinstance(got, Blocked)
    assert got.reason == conditions.REASON_DEPENDENCY_CYCLE
    assert " → ".join(cycle) in got.message


def test_a_job_waiting_on_a_cycle_it_is_not_part_of_just_waits() -> None:
    jobs = {"a": mtj(["b"]), "b": mtj(["a"]), "c": mtj(["a"])}
    got = verdict("c", jobs)
    assert isinstance(got, Waiting)


def test_a_started_job_closes_no_cycle() -> None:
    # b lists a, but b already started (its dependencies were met before the edit): a waits for b.
    jobs = {"a": mtj(["b"]), "b": mtj(["a"], phase="Running", started=True)}
    got = verdict("a", jobs)
    assert isinstance(got, Waiting)
    assert find_cycle("a", ["b"], jobs.get) is None


def test_the_deadline_counts_from_creation_and_then_blocks() -> None:
    jobs = {"b": mtj(["ghost"])}
    got = verdict("b", jobs, created_at=100.0, timeout_seconds=30.0, now=120.0)
    assert isinstance(got, Waiting)
    assert got.deadline == 130.0
    got = verdict("b", jobs, created_at=100.0, timeout_seconds=30.0, now=130.0)
    assert isinstance(got, Blocked)
    assert got.reason == conditions.REASON_DEPENDENCY_TIMEOUT
    assert "timeouts.dependenciesSeconds=30 exceeded: dependency ghost does not exist" in (
        got.message
    )


def test_a_cycle_member_that_already_failed_for_the_cycle_still_shows_the_cycle() -> None:
    jobs = {"a": mtj(["b"], phase="Failed"), "b": mtj(["a"])}
    got = verdict("b", jobs)
    assert isinstance(got, Blocked)
    assert got.reason == conditions.REASON_DEPENDENCY_CYCLE
    assert "b → a → b" in got.message
