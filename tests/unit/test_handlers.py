"""The kopf registrations: handlers that run on the event loop, and the daemon's sleep."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import kopf
from microtask_operator.adapter.config import OperatorConfig
from microtask_operator.adapter.handlers import OperatorState, build_registry, sleep_until_woken
from microtask_operator.metrics import Metrics
from microtask_operator.settings import Settings


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def new_state() -> OperatorState:
    return OperatorState(settings=Settings(), config=OperatorConfig(), metrics=Metrics())


def handler(registry: kopf.OperatorRegistry, suffix: str) -> Any:
    for group in (registry._indexing, registry._watching):
        for h in group.get_all_handlers():
            if str(h.id).endswith(suffix):
                return h.fn
    raise KeyError(suffix)


def test_watch_and_index_handlers_run_on_the_event_loop() -> None:
    # kopf runs a plain function in its executor's threads: every watch event would wait for
    # a thread, and the wake-ups would set asyncio Events from outside their loop.
    registry = build_registry(new_state())
    handlers = [
        *registry._indexing.get_all_handlers(),
        *registry._watching.get_all_handlers(),
    ]
    assert len(handlers) == 7
    assert all(inspect.iscoroutinefunction(h.fn) for h in handlers), [
        h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)
    ]


def test_a_pod_event_wakes_its_microtaskjob_only() -> None:
    state = new_state()
    changed = handler(build_registry(state), "pod_changed")
    spec_changed = handler(build_registry(state), "job_spec_changed")

    async def story() -> tuple[bool, bool]:
        for name in ("a", "b"):
            body = {"metadata": {"name": name, "generation": 1}, "spec": {}}
            await spec_changed(namespace="ns", name=name, body=body, type="ADDED")
        for watched in state.jobs.values():
            watched.wake.clear()
        await changed(namespace="ns", labels={"microtask.dev/job": "a"})
        return state.jobs[("ns", "a")].wake.is_set(), state.jobs[("ns", "b")].wake.is_set()

    assert run(story()) == (True, False)


def test_a_deletion_wakes_the_daemon_at_once() -> None:
    state = new_state()
    spec_changed = handler(build_registry(state), "job_spec_changed")

    async def story() -> bool:
        body: dict[str, Any] = {"metadata": {"name": "a", "generation": 1}, "spec": {}}
        await spec_changed(namespace="ns", name="a", body=body, type="ADDED")
        state.jobs[("ns", "a")].wake.clear()
        deleted = {
            "metadata": {
                "name": "a",
                "generation": 1,
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {},
        }
        await spec_changed(namespace="ns", name="a", body=deleted, type="MODIFIED")
        return state.jobs[("ns", "a")].wake.is_set()

    assert run(story()) is True


def test_sleep_ends_when_a_flag_is_set() -> None:
    async def story() -> bool:
        wake, other = asyncio.Event(), asyncio.Event()
        before = asyncio.all_tasks()
        sleeper = asyncio.create_task(sleep_until_woken(3600, other, wake))
        await asyncio.sleep(0)
        assert not sleeper.done()
        wake.set()
        await sleeper  # an hour's sleep: only the flag can end it before the test's timeout
        await asyncio.sleep(0)  # the cancelled waits end
        return not asyncio.all_tasks() - before

    assert run(story()) is True  # and no waiting task is left behind


def test_sleep_returns_at_once_when_a_flag_is_already_set() -> None:
    async def story() -> None:
        wake = asyncio.Event()
        wake.set()
        await sleep_until_woken(3600, asyncio.Event(), wake)

    run(story())


def test_sleep_lasts_its_timeout_without_news() -> None:
    async def story() -> bool:
        wake = asyncio.Event()
        await sleep_until_woken(0.01, wake)
        return wake.is_set()

    assert run(story()) is False


def test_sleep_stops_for_kopfs_stopped_flag() -> None:
    from kopf._cogs.aiokits.aioenums import AsyncFlagWaiter, FlagSetter

    async def story() -> None:
        setter: FlagSetter[Any] = FlagSetter()
        stopped: AsyncFlagWaiter[Any] = AsyncFlagWaiter(setter)
        sleeper = asyncio.create_task(sleep_until_woken(3600, asyncio.Event(), stopped))
        await asyncio.sleep(0)
        setter.set()
        await sleeper

    run(story())


def test_routine_handler_lines_are_dropped_and_the_rest_kept() -> None:
    from microtask_operator.adapter.runtime import QuietRoutine

    def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)

    quiet = QuietRoutine()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        assert not quiet.filter(record("Handler 'build_registry.<locals>.pod_changed' succeeded."))
        assert not quiet.filter(record("Handler 'build_registry.<locals>.job_changed' succeeded."))
        assert quiet.filter(record("Daemon 'build_registry.<locals>.run_job' succeeded."))
        assert quiet.filter(record("Handler 'stop_work' succeeded."))
        failed = "Handler 'build_registry.<locals>.pod_changed' failed with an exception."
        assert quiet.filter(record(failed, logging.ERROR))
        root.setLevel(logging.DEBUG)  # --verbose: everything
        assert quiet.filter(record("Handler 'build_registry.<locals>.pod_changed' succeeded."))
    finally:
        root.setLevel(level)


def test_a_phase_change_wakes_only_the_jobs_waiting_for_others() -> None:
    state = new_state()
    spec_changed = handler(build_registry(state), "job_spec_changed")
    bodies: dict[str, dict[str, Any]] = {
        "source": {"spec": {}, "status": {"phase": "Running", "startTime": "t"}},
        "dependant": {"spec": {"dependsOn": ["source"]}, "status": {"phase": "Pending"}},
        "rerun": {"spec": {"items": {"fromJob": {"name": "source"}}}},
        "started": {"spec": {"dependsOn": ["source"]}, "status": {"startTime": "t"}},
        "unrelated": {"spec": {}, "status": {"phase": "Running", "startTime": "t"}},
    }

    async def story() -> set[str]:
        for name, body in bodies.items():
            body["metadata"] = {"name": name, "generation": 1}
            await spec_changed(namespace="ns", name=name, body=body, type="ADDED")
        for watched in state.jobs.values():
            watched.wake.clear()
        done = {**bodies["source"], "status": {"phase": "Succeeded", "startTime": "t"}}
        await spec_changed(namespace="ns", name="source", body=done, type="MODIFIED")
        return {name for (_, name), watched in state.jobs.items() if watched.wake.is_set()}

    assert run(story()) == {"dependant", "rerun"}
