"""`microtask watch` without a cluster: the list-then-watch feed, what is printed, exit codes.

A scripted stand-in for the API plays the server: lists with resourceVersions, watch streams
that end, 410 Gone, refusals. The real API server is exercised by
tests/integration/test_cli_cluster.py.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from microtask_operator.kubecli import watching
from microtask_operator.kubecli.errors import CliError
from microtask_operator.kubecli.watching import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_SUCCEEDED,
    EXIT_TIMEOUT,
    follow,
    summary_lines,
    watch_job,
)

START = "2023-11-14T22:13:20Z"
END = "2023-11-14T22:13:40Z"


def job(rv: str, uid: str = "u1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": "thumbs", "uid": uid, "resourceVersion": rv},
        "status": status,
    }


def listing(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(items)}


def warning(uid: str, reason: str, message: str, count: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": uid, "resourceVersion": f"e{uid}{count}"},
        "type": "Warning",
        "reason": reason,
        "message": message,
        "count": count,
        "involvedObject": {"kind": "MicrotaskJob", "name": "thumbs", "uid": "u1"},
    }


RUNNING: dict[str, Any] = {"phase": "Running", "total": 10, "succeeded": 2, "startTime": START}
FAILURE: dict[str, Any] = {
    "exitCode": 3,
    "reason": "exit 3",
    "attempts": 2,
    "microtasks": 1,
    "sampleIndex": 7,
    "message": "bad input",
}


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "EVENT_GRACE", 0.2)


# --- the feed -------------------------------------------------------------------------------


class Script:
    """Lists and watch streams played in order; a watch step is events, then an end or error."""

    def __init__(self, lists: list[Any], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.listed = 0
        self.watched_from: list[str] = []

    def list_once(self) -> dict[str, Any]:
        step = self.lists.pop(0)
        self.listed += 1
        if isinstance(step, BaseException):
            raise step
        return dict(step)

    def watch_from(self, version: str) -> Iterator[dict[str, Any]]:
        self.watched_from.append(version)
        steps = self.watches.pop(0) if self.watches else None
        if steps is None:
            time.sleep(0.05)
            return
        for step in steps:
            if isinstance(step, BaseException):
                raise step
            yield step


def run_feed(script: Script, until: Callable[[list[Any]], bool]) -> list[Any]:
    got: list[Any] = []
    stopped = threading.Event()

    def put(message: Any) -> None:
        got.append(message)
        if until(got):
            stopped.set()

    thread = threading.Thread(
        target=follow,
        args=(script.list_once, script.watch_from, put),
        kwargs={"stopped": stopped, "source": "job"},
    )
    thread.start()
    thread.join(timeout=10)
    stopped.set()
    assert not thread.is_alive()
    return got


def test_the_feed_resumes_from_the_last_version_and_relists_on_gone() -> None:
    script = Script(
        lists=[listing("10", job("10")), listing("30", job("30"))],
        watches=[
            [{"type": "MODIFIED", "object": job("11")}],  # then the server ends the watch
            [
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
                CliError("too old", status=410, reason="Expired"),
            ],
            [{"type": "DELETED", "object": job("31")}],
        ],
    )
    got = run_feed(script, lambda got: got[-1].kind == "DELETED")
    assert [m.kind for m in got] == ["LIST", "MODIFIED", "LIST", "DELETED"]
    # Resumed from the event's version, then the bookmark's; after 410, from the new list's.
    assert script.watched_from == ["10", "11", "30"]
    assert script.listed == 2


def test_the_feed_retries_an_unreachable_server_and_stops_on_a_refusal() -> None:
    unreachable = CliError("error: cannot reach the Kubernetes API server", status=0)
    forbidden = CliError("Error from server (Forbidden): no", status=403, reason="Forbidden")
    script = Script(lists=[unreachable, listing("5")], watches=[[forbidden]])
    got = run_feed(script, lambda got: got[-1].source == "fatal")
    assert [m.source for m in got] == ["trouble", "job", "recovered", "fatal"]
    assert got[-1].payload is forbidden
    assert got[-1].kind == "job"


# --- following a job ------------------------------------------------------------------------


class FakeKube:
    """What watch_job asks of Kube, served from scripts; open watches block until ended."""

    namespace = "team"

    def __init__(
        self,
        first: dict[str, Any],
        job_lists: list[Any],
        job_watches: list[list[Any]],
        event_lists: list[Any] | None = None,
        event_watches: list[list[Any]] | None = None,
    ) -> None:
        self.first = first
        self.jobs = Script(job_lists, job_watches)
        self.events = Script(event_lists or [listing("1")], event_watches or [])
        self.ended = threading.Event()
        self.end_calls = 0

    def get_job(self, name: str, namespace: str) -> dict[str, Any]:
        if isinstance(self.first, BaseException):
            raise self.first
        return self.first

    def list_jobs(self, namespace: str, *, field_selector: str) -> dict[str, Any]:
        assert field_selector == "metadata.name=thumbs"
        return self.jobs.list_once()

    def watch_jobs(self, namespace: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return self._blocking(self.jobs, kwargs["resource_version"])

    def list_events(self, namespace: str, *, field_selector: str) -> dict[str, Any]:
        assert "involvedObject.uid=u1" in field_selector
        return self.events.list_once()

    def watch_events(self, namespace: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return self._blocking(self.events, kwargs["resource_version"])

    def _blocking(self, script: Script, version: str) -> Iterator[dict[str, Any]]:
        if script.watches:
            yield from script.watch_from(version)
        else:  # nothing more to say: an open watch, until ended
            self.ended.wait(30)

    def end_watches(self) -> None:
        self.end_calls += 1
        self.ended.set()


def follow_job(kube: FakeKube, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = watch_job(kube, "thumbs", out=out, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue()


def test_a_job_followed_to_success_with_failures_printed_as_they_come() -> None:
    later = {**RUNNING, "succeeded": 6, "failed": 0, "failureSummary": [FAILURE]}
    done = {
        **RUNNING,
        "phase": "Succeeded",
        "succeeded": 10,
        "attempts": 12,
        "succeededAfterRetry": 2,
        "completionTime": END,
        "failureSummary": [FAILURE],
        "output": {"url": "volume://results/out/thumbs"},
    }
    kube = FakeKube(
        job("1", **RUNNING),
        [listing("1", job("1", **RUNNING))],
        [
            [{"type": "MODIFIED", "object": job("2", **later)}],
            [],  # a watch the server ends at once: resumed (after a pause, not a busy loop)
            [{"type": "MODIFIED", "object": job("3", **done)}],
        ],
        event_lists=[listing("1", warning("old", "ShardFailed", "before the watch"))],
        event_watches=[[{"type": "ADDED", "object": warning("e1", "ShardFailed", "shard 1: x")}]],
    )
    code, text = follow_job(kube)
    assert code == EXIT_SUCCEEDED
    lines = text.splitlines()
    assert lines[0].startswith("thumbs: Running 2/10 succeeded")
    assert (
        "failure: exit 3: 2 failed attempts, 1 microtask failed for good; e.g. microtask 7: "
        "bad input"
    ) in lines
    assert "warning ShardFailed: shard 1: x" in lines
    assert "before the watch" not in text  # events older than the watch are history
    assert lines[-4:] == [
        "microtaskjob/thumbs Succeeded: 10/10 succeeded, 0 failed in 20s (0.50/s)",
        "  attempts: 12; 2 succeeded after a retry",
        "  failure: exit 3: 2 failed attempts, 1 microtask failed for good; "
        "e.g. microtask 7: bad input",
        "  output: volume://results/out/thumbs",
    ]
    assert kube.end_calls >= 1  # the feeds' watches were ended before returning


def test_a_new_job_shows_the_events_it_already_has() -> None:
    done = {**RUNNING, "phase": "Succeeded", "succeeded": 10, "completionTime": END}
    kube = FakeKube(
        job("1", **RUNNING),
        [listing("1", job("1", **RUNNING))],
        [[{"type": "MODIFIED", "object": job("2", **done)}]],
        event_lists=[listing("1", warning("e0", "ShardFailed", "early"))],
    )
    _, text = follow_job(kube, new_job=True)
    assert "warning ShardFailed: early" in text.splitlines()


@pytest.mark.parametrize(
    ("status", "code", "said"),
    [
        (
            {
                **RUNNING,
                "phase": "Failed",
                "failed": 1,
                "notRun": 7,
                "completionTime": END,
                "failedIndexes": "7",
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "TooManyFailures",
                        "message": "1 microtask failed",
                    }
                ],
            },
            EXIT_FAILED,
            [
                "microtaskjob/thumbs Failed: 2/10 succeeded, 1 failed, 7 never ran in 20s (0.15/s)",
                "  reason: TooManyFailures: 1 microtask failed",
                "  failed microtasks: 7",
                "  to run again what did not succeed: microtask rerun thumbs --failed",
            ],
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    {
                        "type": "Invalid",
                        "status": "True",
                        "reason": "InvalidSpec",
                        "message": "spec.items: set exactly one",
                    }
                ],
            },
            EXIT_INVALID,
            [
                "microtaskjob/thumbs is invalid: spec.items: set exactly one",
                "  nothing runs until the spec is fixed (`microtask validate FILE` checks it)",
            ],
        ),
    ],
)
def test_a_finished_job_ends_the_watch_at_once(
    status: dict[str, Any], code: int, said: list[str]
) -> None:
    kube = FakeKube(job("1", **status), [], [])
    got, text = follow_job(kube)
    assert got == code
    assert text.splitlines()[-len(said) :] == said
    assert kube.jobs.listed == 0  # nothing was watched


def test_a_deleted_job_ends_the_watch_with_failure() -> None:
    kube = FakeKube(
        job("1", **RUNNING),
        [listing("1", job("1", **RUNNING))],
        [[{"type": "DELETED", "object": job("2", **RUNNING)}]],
    )
    code, text = follow_job(kube)
    assert code == EXIT_FAILED
    assert "microtaskjob/thumbs was deleted while it was watched" in text


def test_another_job_under_the_same_name_is_not_followed() -> None:
    kube = FakeKube(job("1", **RUNNING), [listing("5", job("5", uid="u2"))], [])
    code, text = follow_job(kube)
    assert code == EXIT_FAILED
    assert "was deleted" in text


def test_the_timeout_leaves_the_job_running() -> None:
    kube = FakeKube(job("1", **RUNNING), [listing("1", job("1", **RUNNING))], [])
    started = time.monotonic()
    code, text = follow_job(kube, timeout=0.5)
    assert code == EXIT_TIMEOUT
    assert time.monotonic() - started < 5
    assert "timed out after 0.5s" in text and "keeps running on the cluster" in text


def test_ctrl_c_leaves_the_job_running(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube(job("1", **RUNNING), [listing("1", job("1", **RUNNING))], [])

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(watching, "_follow_until_done", interrupted)
    code, text = follow_job(kube, prog="kubectl microtask")
    assert code == EXIT_INTERRUPTED
    assert "keeps running on the cluster" in text
    assert "`kubectl microtask delete thumbs` stops it" in text


def test_a_refusal_while_watching_is_the_commands_error() -> None:
    forbidden = CliError("Error from server (Forbidden): no watch", status=403)
    kube = FakeKube(job("1", **RUNNING), [forbidden], [])
    with pytest.raises(CliError) as caught:
        follow_job(kube)
    assert caught.value is forbidden


def test_no_rights_on_events_only_mutes_them() -> None:
    done = {**RUNNING, "phase": "Succeeded", "succeeded": 10, "completionTime": END}
    forbidden = CliError("Error from server (Forbidden): events", status=403)
    kube = FakeKube(
        job("1", **RUNNING),
        [listing("1", job("1", **RUNNING))],
        [[], [{"type": "MODIFIED", "object": job("2", **done)}]],
        event_lists=[forbidden],
    )
    code, text = follow_job(kube)
    assert code == EXIT_SUCCEEDED
    assert "note: Warning Events not shown: Error from server (Forbidden): events" in text


def test_summary_of_a_job_without_counts_yet() -> None:
    lines = summary_lines("thumbs", {"status": {"phase": "Succeeded"}}, 0.0, "microtask")
    assert lines == ["microtaskjob/thumbs Succeeded: 0/? succeeded, 0 failed"]
