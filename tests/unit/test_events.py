"""The operator's Events: posted in the background, in order per object, counted when lost.

A fake API fails as the real one can (500s, refusals, no answer at all); the reconcile goes on
regardless, and every Event is either posted, in the order it was emitted, or counted in
`microtask_events_dropped_total`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from microtask_operator.adapter.events import (
    KOPF_POSTING_LOGGER,
    MAX_MESSAGE_CHARS,
    EventPoster,
    KopfEventDrops,
    event_body,
    kopf_reason,
    reference,
)
from microtask_operator.adapter.kube import ApiError
from microtask_operator.adapter.observe import NodeInfo
from microtask_operator.adapter.reconcile import Cluster, Reconciler
from microtask_operator.core.types import Event, Pool
from microtask_operator.metrics import Metrics
from microtask_operator.settings import Settings

NS = "team"
JOB = {
    "apiVersion": "microtask.dev/v1alpha1",
    "kind": "MicrotaskJob",
    "metadata": {"name": "thumbs", "namespace": NS, "uid": "uid-1", "generation": 1},
    "spec": {
        "items": {"range": {"start": 0, "end": 20}},
        "microtasksPerShard": 5,
        "parallelism": 2,
        "template": {
            "spec": {"containers": [{"name": "w", "image": "busybox", "command": ["true"]}]}
        },
    },
}
OTHER = {**JOB, "metadata": {**JOB["metadata"], "name": "other", "uid": "uid-2"}}


class FakeEvents:
    """create_event, answered from a script of outcomes (None: posted), then posted."""

    def __init__(self, script: Sequence[int | str | None] = (), **per_name: Sequence[Any]) -> None:
        self.script = list(script)
        self.per_name = {k: list(v) for k, v in per_name.items()}
        self.tries: list[tuple[str, str]] = []  # (object name, reason) of every try
        self.posted: list[tuple[str, str]] = []

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        assert namespace == body["metadata"]["namespace"] == body["involvedObject"]["namespace"]
        about = (body["involvedObject"]["name"], body["reason"])
        self.tries.append(about)
        script = self.per_name.get(about[0], self.script)
        outcome = script.pop(0) if script else None
        await asyncio.sleep(0)  # an answer takes a moment
        if outcome is not None:
            raise ApiError("create", "event", outcome, "scripted")
        self.posted.append(about)


def dropped(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("microtask_events_dropped_total", {"reason": reason}) or 0
    )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_events_of_one_object_keep_their_order_through_retries() -> None:
    api = FakeEvents([500, 503, 429, "error"])

    async def scenario() -> None:
        poster = EventPoster(api, Metrics(), pauses=(0.001,) * 5)
        for reason in ("Started", "ShardFailed", "Rebalanced", "Succeeded"):
            poster.post(JOB, Event(reason, "..."))
        assert await poster.flush(timeout=30)

    run(scenario())
    reasons = ["Started", "ShardFailed", "Rebalanced", "Succeeded"]
    assert api.posted == [("thumbs", r) for r in reasons]
    # The first one was tried until it went through; none of the others went before it.
    assert api.tries[:5] == [("thumbs", "Started")] * 5


def test_an_event_that_keeps_failing_is_dropped_and_counted_once_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeEvents([500] * 100)
    metrics = Metrics()

    async def scenario() -> None:
        poster = EventPoster(api, metrics, pauses=(0.001, 0.001))
        poster.post(JOB, Event("Started", "hello"))
        poster.post(JOB, Event("Succeeded", "bye"))
        assert await poster.flush(timeout=30)
        assert poster.waiting == 0

    with caplog.at_level(logging.INFO, logger="microtask_operator.adapter.events"):
        run(scenario())
    assert len(api.tries) == 6  # three tries each
    assert api.posted == []
    assert dropped(metrics, "Started") == 1 and dropped(metrics, "Succeeded") == 1
    lines = [r for r in caplog.records if r.name == "microtask_operator.adapter.events"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]
    assert "Started" in lines[0].getMessage() and "thumbs" in lines[0].getMessage()


def test_a_refused_event_is_not_retried() -> None:
    api = FakeEvents([422, 403])
    metrics = Metrics()

    async def scenario() -> None:
        poster = EventPoster(api, metrics, pauses=(0.001,) * 5)
        poster.post(JOB, Event("Started", "x"))
        poster.post(JOB, Event("Suspended", "y"))
        poster.post(JOB, Event("Resumed", "z"))
        assert await poster.flush(timeout=30)

    run(scenario())
    assert api.tries == [("thumbs", "Started"), ("thumbs", "Suspended"), ("thumbs", "Resumed")]
    assert api.posted == [("thumbs", "Resumed")]
    assert dropped(metrics, "Started") == dropped(metrics, "Suspended") == 1


def test_one_object_failing_does_not_hold_up_another() -> None:
    api = FakeEvents(thumbs=[500] * 1000)

    async def scenario() -> None:
        poster = EventPoster(api, Metrics(), pauses=(0.05,) * 20)
        poster.post(JOB, Event("Started", "stuck"))
        poster.post(OTHER, Event("Started", "fine"))
        for _ in range(200):
            if ("other", "Started") in api.posted:
                break
            await asyncio.sleep(0.01)
        assert api.posted == [("other", "Started")]
        assert poster.waiting == 1  # thumbs' Event, still being retried
        await poster.close(timeout=0)

    run(scenario())


def test_a_full_backlog_drops_the_oldest_waiting_event() -> None:
    gate = asyncio.Event()
    posted: list[str] = []

    class Slow:
        async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            await gate.wait()
            posted.append(body["reason"])

    metrics = Metrics()

    async def scenario() -> None:
        poster = EventPoster(Slow(), metrics, backlog=2)
        poster.post(JOB, Event("A", ""))
        await asyncio.sleep(0)  # A is being posted
        for reason in ("B", "C", "D"):
            poster.post(JOB, Event(reason, ""))
        gate.set()
        assert await poster.flush(timeout=30)

    run(scenario())
    assert posted == ["A", "C", "D"]
    assert dropped(metrics, "B") == 1


def test_events_still_waiting_at_exit_are_counted() -> None:
    never = asyncio.Event()

    class Hanging:
        async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            await never.wait()

    metrics = Metrics()

    async def scenario() -> None:
        poster = EventPoster(Hanging(), metrics)
        poster.post(JOB, Event("Started", ""))
        poster.post(JOB, Event("Succeeded", ""))
        await asyncio.sleep(0)
        await poster.close(timeout=0.05)
        assert poster.waiting == 0

    run(scenario())
    assert dropped(metrics, "Started") == 1 and dropped(metrics, "Succeeded") == 1


class FakeJobs:
    """The calls a first reconcile makes (Jobs and the status), answered at once."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.statuses: list[dict[str, Any]] = []

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        self.created.append(body["metadata"]["name"])
        return True

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def __getattr__(self, name: str) -> Any:
        async def elsewhere(*args: Any, **kwargs: Any) -> None:
            return None

        return elsewhere


def test_a_reconcile_never_waits_for_an_event() -> None:
    """The Event API hangs: the reconcile ends all the same, its Event still waiting."""
    never = asyncio.Event()
    tried: list[str] = []

    class Hanging:
        async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            tried.append(body["reason"])
            await never.wait()

    jobs = FakeJobs()
    metrics = Metrics()

    async def scenario() -> None:
        poster = EventPoster(Hanging(), metrics)
        reconciler = Reconciler(
            namespace=NS,
            name="thumbs",
            api=jobs,  # type: ignore[arg-type]
            metrics=metrics,
            settings=Settings(),
            cluster=Cluster(
                jobs=lambda ns, mtj: [],
                pods=lambda ns, job: [],
                nodes=lambda: {"cpu-0": NodeInfo(ready=True, since=None, pool=Pool.CPU)},
                phase_of=lambda ns, mtj: None,
            ),
            emit=lambda event: poster.post(JOB, event),
        )
        await asyncio.wait_for(reconciler.reconcile(JOB), timeout=30)
        assert jobs.created and jobs.statuses  # it did its work
        await asyncio.sleep(0.01)
        assert tried == ["Started"] and poster.waiting == 1  # the Event hangs, not the reconcile
        await poster.close(timeout=0)

    run(scenario())
    assert dropped(metrics, "Started") == 1


def test_the_event_names_the_microtaskjob_and_the_operator() -> None:
    from datetime import UTC, datetime

    body = event_body(
        reference(JOB),
        Event("ShardFailed", "x" * 5000, warning=True),
        at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        name="thumbs.0a1b",
        instance="operator-0",
    )
    assert body["metadata"] == {"name": "thumbs.0a1b", "namespace": NS}
    assert body["involvedObject"] == {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "namespace": NS,
        "name": "thumbs",
        "uid": "uid-1",
    }
    assert (body["type"], body["reason"]) == ("Warning", "ShardFailed")
    assert body["source"] == {"component": "microtask-operator"}
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2030-01-02T03:04:05Z"
    assert len(body["message"]) == MAX_MESSAGE_CHARS and "..." in body["message"]
    normal = event_body(
        reference(JOB), Event("Started", "go"), at=datetime.now(UTC), name="n", instance="i"
    )
    assert normal["type"] == "Normal" and normal["message"] == "go"


def test_kopfs_failed_event_posts_are_counted_and_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The logger kopf reports failed posts on: a kopf upgrade that moves it fails here.
    posting = importlib.import_module("kopf._core.engines.posting")
    assert posting.logger.name == KOPF_POSTING_LOGGER
    metrics = Metrics()
    drops = KopfEventDrops(metrics)
    drops.install()
    try:
        with caplog.at_level(logging.INFO, logger=KOPF_POSTING_LOGGER):
            posting.logger.warning(
                "Failed to post an event. Ignoring and continuing. Code: 500. Message: boom. "
                "Details: None"
                "Event: type='Normal', reason='Logging', message=\"it's done\"."
            )
            posting.logger.warning("something else")
    finally:
        drops.uninstall()
    assert dropped(metrics, "Logging") == 1
    levels = {r.getMessage()[:22]: r.levelno for r in caplog.records}
    assert levels == {"Failed to post an even": logging.INFO, "something else": logging.WARNING}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Failed ... Event: type='Normal', reason='Started', message='a'.", "Started"),
        ("Failed ... Event: type='Warning', reason=\"it's\", message='a'.", "it's"),
        ("Failed to post an event. Ignoring and continuing.", ""),
    ],
)
def test_the_reason_is_read_from_kopfs_message(text: str, reason: str) -> None:
    assert kopf_reason(text) == reason
