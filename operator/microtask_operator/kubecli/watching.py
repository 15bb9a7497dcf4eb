"""Follow one MicrotaskJob to its end: a live progress bar fed by WATCH streams, never by polling.

Two feeds run in threads, each "list, then watch from the list's resourceVersion": the
MicrotaskJob itself (field selector `metadata.name`) and its Warning Events (`involvedObject`).
A watch the server ends is resumed from the last resourceVersion seen; 410 Gone (history
compacted) starts over with a fresh list; an unreachable server is retried with backoff. The
main thread only waits on a queue, so `--timeout` and Ctrl-C act at once.

Exit codes: 0 Succeeded, 1 Failed (or deleted), 2 invalid (condition Invalid), 124 --timeout,
130 Ctrl-C. Leaving the watch never stops the job: the messages say so.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..core.conditions import ConditionType, Phase
from .client import Body, Kube
from .errors import CliError
from .formatting import (
    Progress,
    condition_true,
    failure_key,
    failure_text,
    format_eta,
    format_rate,
    human_duration,
    status_line,
    unusual_conditions,
)

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

#: Without a terminal: a progress line when something changed, at most this often...
PLAIN_EVERY = 5.0
#: ...and one anyway after this long, so a log shows the watch is alive.
PLAIN_QUIET = 60.0
#: Once the job ended, Events still on their way are waited for this long.
EVENT_GRACE = 1.5
#: A known kind of failure whose count grows is printed again at most this often.
FAILURE_REPEAT = 10.0
#: After this long without a status, say the operator may not be running.
NO_STATUS_HINT = 20.0
#: Give up when the API server stays unreachable this long.
UNREACHABLE_LIMIT = 120.0
#: Seconds the feeds' threads are given to end once the watch is over.
FEEDS_STOP = 5.0
#: Conditions that end the watch (the summary tells them) or only echo the phase.
_NOT_NEWS = frozenset({ConditionType.FAILED, ConditionType.INVALID, ConditionType.READY})


@dataclass(frozen=True)
class _Message:
    source: str
    """`job`, `event`, `trouble`, `recovered` or `fatal`."""
    kind: str = ""
    """LIST, ADDED, MODIFIED, DELETED."""
    payload: Any = None


def follow(
    list_once: Callable[[], Body],
    watch_from: Callable[[str], Iterator[Body]],
    put: Callable[[_Message], None],
    *,
    stopped: threading.Event,
    source: str,
) -> None:
    """List, then watch from that resourceVersion, until `stopped`; re-list on 410 Gone.

    Each list is reported as one `LIST` message (its items), each watch event as its type.
    Transient trouble (no answer, 429, 5xx) is reported and retried with a growing delay; any
    other refusal is reported as `fatal` and ends the feed.
    """
    version: str | None = None
    delay = 0.0
    troubled = False
    while not stopped.is_set():
        if delay and stopped.wait(delay):
            return
        try:
            if version is None:
                listing = list_once()
                version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
                put(_Message(source, "LIST", list(listing.get("items") or [])))
                if troubled:
                    troubled = False
                    put(_Message("recovered"))
            opened = time.monotonic()
            for event in watch_from(version):
                if stopped.is_set():
                    return
                obj = event.get("object") or {}
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if troubled:
                    troubled = False
                    put(_Message("recovered"))
                if event.get("type") != "BOOKMARK":
                    put(_Message(source, str(event.get("type")), obj))
            # The server ended the watch (its timeout): resume where it stopped, at once unless
            # it keeps ending them at once.
            quick = time.monotonic() - opened < 1.0
            delay = min(max(delay * 2, 0.5), 5.0) if quick else 0.0
        except CliError as error:
            if error.status == 410:
                version = None  # too old: start over from a fresh list
                delay = 0.5 if delay == 0 else min(delay * 2, 5.0)
            elif error.status in (0, 429) or error.status >= 500:
                troubled = True
                put(_Message("trouble", payload=error))
                delay = min(max(delay * 2, 1.0), 10.0)
            else:
                put(_Message("fatal", source, error))
                return


# --- what the user sees ---------------------------------------------------------------------


class _PlainView:
    """No terminal (CI logs, pipes): a progress line now and then, other lines as they come."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name = name
        self.out = out
        self.body: Mapping[str, Any] = {}
        self.shown = ""
        self.shown_at = -1e9

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def update(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def tick(self, now: float) -> None:
        text = status_line(self.name, self.body, now)
        moment = time.monotonic()
        changed = _without_timing(text) != _without_timing(self.shown)
        wait = PLAIN_EVERY if changed else PLAIN_QUIET
        if moment - self.shown_at >= wait:
            self.line(text)
            self.shown, self.shown_at = text, moment

    def close(self) -> None:
        pass


def _without_timing(line: str) -> str:
    """A status line without its rate and ETA (which move every second)."""
    return line.split(";", 1)[0]


class _LiveView:
    """A terminal: a rich progress bar on stderr, other lines printed above it."""

    def __init__(self, name: str, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.name = name
        self.console = Console(file=out)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[counts]}"),
            TextColumn("[cyan]{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task(name, total=None, done="-", counts="", rate="-", eta="-")
        self.body: Mapping[str, Any] = {}
        self.progress.start()

    def line(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def update(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def tick(self, now: float) -> None:
        p = Progress.of(self.body)
        counts = f"[green]✓ {p.succeeded}[/] [red]✗ {p.failed}[/] ▶ {p.running}"
        if p.queued:
            counts += f" [yellow]↻ {p.queued}[/]"
        self.progress.update(
            self.task,
            description=f"{self.name} {p.phase or 'waiting'}",
            total=p.total,
            completed=p.ended,
            done=p.progress_text(),
            counts=counts,
            rate=format_rate(p.rate(now)),
            eta=format_eta(p.eta(now)),
        )

    def close(self) -> None:
        self.progress.stop()


# --- following one job ------------------------------------------------------------------------


@dataclass
class _Tracker:
    """What has been seen of the job, and what is new about it."""

    name: str
    uid: str
    say: Callable[[str], None]
    body: Mapping[str, Any] = field(default_factory=dict)
    outcome: int | None = None
    deleted: bool = False
    failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    conditions: set[tuple[str, str, str]] = field(default_factory=set)
    events: dict[str, int] = field(default_factory=dict)
    events_listed: bool = False
    show_existing: bool = False
    """Print the Warning Events already there when the watch starts (a job just created)."""

    def job(self, body: Mapping[str, Any], moment: float) -> None:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if uid and uid != self.uid:  # deleted, and another job took the name
            self.gone()
            return
        first = not self.body
        self.body = body
        status = body.get("status") or {}
        self._failures(status, moment, first)
        self._conditions(status)
        if condition_true(status, ConditionType.INVALID) is not None:
            self.outcome = EXIT_INVALID
        elif status.get("phase") == Phase.SUCCEEDED:
            self.outcome = EXIT_SUCCEEDED
        elif status.get("phase") == Phase.FAILED:
            self.outcome = EXIT_FAILED

    def gone(self) -> None:
        self.deleted = True
        self.outcome = EXIT_FAILED

    def _failures(self, status: Mapping[str, Any], moment: float, first: bool) -> None:
        for kind in status.get("failureSummary") or []:
            if not isinstance(kind, Mapping):
                continue
            key = failure_key(kind)
            attempts = int(kind.get("attempts") or 0)
            known = self.failures.get(key)
            if known is None:
                self.say(("failures so far: " if first else "failure: ") + failure_text(kind))
                self.failures[key] = (attempts, moment)
            elif attempts > known[0] and moment - known[1] >= FAILURE_REPEAT:
                self.say("failure: " + failure_text(kind))
                self.failures[key] = (attempts, moment)

    def _conditions(self, status: Mapping[str, Any]) -> None:
        for condition in unusual_conditions(status):
            key = (
                str(condition.get("type")),
                str(condition.get("status")),
                str(condition.get("reason")),
            )
            if key in self.conditions or key[0] in _NOT_NEWS:
                continue
            self.conditions.add(key)
            message = condition.get("message") or ""
            detail = f": {message}" if message else ""
            self.say(f"condition {key[0]}={key[1]} ({key[2]}){detail}")

    def event(self, kind: str, payload: Any) -> None:
        """A message of the Events feed: a LIST (of items) or one watch event."""
        if kind == "LIST":
            initial = not self.events_listed
            self.events_listed = True
            for item in payload or []:
                self._one_event(item, show=self.show_existing or not initial)
        elif kind in ("ADDED", "MODIFIED"):
            self._one_event(payload, show=True)

    def _one_event(self, event: Mapping[str, Any], *, show: bool) -> None:
        if event.get("type") != "Warning":
            return
        involved = event.get("involvedObject") or {}
        if involved.get("uid") and involved.get("uid") != self.uid:
            return
        meta = event.get("metadata") or {}
        key = str(meta.get("uid") or meta.get("name"))
        count = int(event.get("count") or (event.get("series") or {}).get("count") or 1)
        if count <= self.events.get(key, 0):
            return
        self.events[key] = count
        if show:
            times = f" (x{count})" if count > 1 else ""
            self.say(f"warning {event.get('reason') or ''}: {event.get('message') or ''}{times}")


def summary_lines(name: str, body: Mapping[str, Any], now: float, prog: str) -> list[str]:
    """The end of a watch: outcome, counts, time, why it failed, where the output is."""
    status = body.get("status") or {}
    invalid = condition_true(status, ConditionType.INVALID)
    if invalid is not None:
        return [
            f"microtaskjob/{name} is invalid: {invalid.get('message') or invalid.get('reason')}",
            "  nothing runs until the spec is fixed (`microtask validate FILE` checks it)",
        ]
    p = Progress.of(body)
    total = "?" if p.total is None else str(p.total)
    head = f"microtaskjob/{name} {p.phase}: {p.succeeded}/{total} succeeded, {p.failed} failed"
    if p.not_run:
        head += f", {p.not_run} never ran"
    elapsed = p.elapsed(now)
    if elapsed is not None:
        head += f" in {human_duration(round(elapsed))} ({format_rate(p.rate(now))})"
    lines = [head]
    if p.attempts is not None:
        retried = (
            f"; {p.succeeded_after_retry} succeeded after a retry"
            if p.succeeded_after_retry
            else ""
        )
        lines.append(f"  attempts: {p.attempts}{retried}")
    failed = condition_true(status, ConditionType.FAILED)
    if failed is not None:
        lines.append(f"  reason: {failed.get('reason')}: {failed.get('message') or ''}".rstrip())
    for kind in status.get("failureSummary") or []:
        if isinstance(kind, Mapping):
            lines.append(f"  failure: {failure_text(kind)}")
    indexes = status.get("failedIndexes")
    if p.failed and isinstance(indexes, str) and indexes and not indexes.startswith(("z:", "d:")):
        shown = indexes if len(indexes) <= 120 else indexes[:117] + "..."
        lines.append(f"  failed microtasks: {shown}")
    output = (status.get("output") or {}).get("url")
    if output:
        lines.append(f"  output: {output}")
    if p.phase == Phase.FAILED and p.unfinished:
        lines.append(f"  to run again what did not succeed: {prog} rerun {name} --failed")
    return lines


def watch_job(
    kube: Kube,
    name: str,
    namespace: str | None = None,
    *,
    timeout: float | None = None,
    prog: str = "microtask",
    out: TextIO | None = None,
    new_job: bool = False,
) -> int:
    """Follow `name` to its end; the exit code of its outcome (see the module's docstring).

    `new_job`: the job was just created, so every Warning Event it has is news.
    """
    out = out or sys.stderr
    ns = namespace or kube.namespace
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    body = kube.get_job(name, ns)  # NotFound and the like end here, before any thread starts
    uid = str((body.get("metadata") or {}).get("uid") or "")
    view: _PlainView | _LiveView = _LiveView(name, out) if out.isatty() else _PlainView(name, out)
    tracker = _Tracker(name, uid, view.line, show_existing=new_job)
    messages: queue.Queue[_Message] = queue.Queue()
    stopped = threading.Event()
    interrupted = timed_out = False
    feeds: list[threading.Thread] = []
    try:
        tracker.job(body, time.monotonic())
        view.update(tracker.body)
        if tracker.outcome is None:
            feeds = _start_feeds(kube, name, ns, uid=uid, messages=messages, stopped=stopped)
            timed_out = _follow_until_done(tracker, view, messages, started, deadline)
            if tracker.outcome is not None and not tracker.deleted:
                _drain_events(tracker, messages)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stopped.set()
        view.close()
        _stop_feeds(kube, feeds)
    now = time.time()
    current = status_line(name, tracker.body, now)
    if interrupted:
        print(
            f"stopped watching ({current}); the MicrotaskJob keeps running on the cluster: "
            f"`{prog} watch {name}` follows it again, `{prog} delete {name}` stops it",
            file=out,
        )
        return EXIT_INTERRUPTED
    if timed_out:
        print(
            f"timed out after {timeout:g}s ({current}); the MicrotaskJob keeps running on the "
            f"cluster (`{prog} watch {name}` follows it again)",
            file=out,
        )
        return EXIT_TIMEOUT
    if tracker.deleted:
        print(f"microtaskjob/{name} was deleted while it was watched ({current})", file=out)
        return EXIT_FAILED
    for line in summary_lines(name, tracker.body, now, prog):
        print(line, file=out)
    out.flush()
    assert tracker.outcome is not None
    return tracker.outcome


def _start_feeds(
    kube: Kube,
    name: str,
    namespace: str,
    *,
    uid: str,
    messages: queue.Queue[_Message],
    stopped: threading.Event,
) -> list[threading.Thread]:
    by_name = f"metadata.name={name}"
    events = (
        f"involvedObject.kind=MicrotaskJob,involvedObject.name={name},"
        f"involvedObject.uid={uid},type=Warning"
    )
    feeds = [
        (
            "job",
            lambda: kube.list_jobs(namespace, field_selector=by_name),
            lambda version: kube.watch_jobs(
                namespace, field_selector=by_name, resource_version=version
            ),
        ),
        (
            "event",
            lambda: kube.list_events(namespace, field_selector=events),
            lambda version: kube.watch_events(
                namespace, field_selector=events, resource_version=version
            ),
        ),
    ]
    threads = []
    for source, list_once, watch_from in feeds:
        thread = threading.Thread(
            target=follow,
            args=(list_once, watch_from, messages.put),
            kwargs={"stopped": stopped, "source": source},
            name=f"watch-{source}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads


def _stop_feeds(kube: Kube, threads: list[threading.Thread]) -> None:
    """End the feeds' watches and wait (briefly) for their threads, interrupted or not."""
    deadline = time.monotonic() + FEEDS_STOP
    for thread in threads:
        while thread.is_alive() and time.monotonic() < deadline:
            kube.end_watches()  # again: a watch may have opened since
            try:
                thread.join(timeout=0.1)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                return


def _follow_until_done(
    tracker: _Tracker,
    view: _PlainView | _LiveView,
    messages: queue.Queue[_Message],
    started: float,
    deadline: float | None,
) -> bool:
    """Handle messages until the job ends; True when the deadline came first."""
    trouble_since: float | None = None
    hinted = events_off = False
    while tracker.outcome is None:
        moment = time.monotonic()
        if deadline is not None and moment >= deadline:
            return True
        wait = 1.0 if deadline is None else min(1.0, deadline - moment)
        try:
            message = messages.get(timeout=max(wait, 0.01))
        except queue.Empty:
            message = None
        moment = time.monotonic()
        if message is not None:
            if message.source == "job":
                _job_message(tracker, message, moment)
                view.update(tracker.body)
            elif message.source == "event":
                tracker.event(message.kind, message.payload)
            elif message.source == "trouble":
                if trouble_since is None:
                    trouble_since = moment
                    view.line(f"lost the API server, retrying: {message.payload.lines[0]}")
                elif moment - trouble_since > UNREACHABLE_LIMIT:
                    raise message.payload.with_hint(
                        f"error: gave up after {UNREACHABLE_LIMIT:g}s; the MicrotaskJob keeps "
                        "running on the cluster"
                    )
            elif message.source == "recovered":
                if trouble_since is not None:
                    view.line("the API server answers again")
                trouble_since = None
            elif message.source == "fatal":
                error: CliError = message.payload
                if message.kind != "event":
                    raise error
                if not events_off:  # progress still shows without Events
                    events_off = True
                    view.line(f"note: Warning Events not shown: {error.lines[0]}")
        if not hinted and not tracker.body.get("status") and moment - started > NO_STATUS_HINT:
            hinted = True
            view.line(
                f"note: no status after {NO_STATUS_HINT:g}s: is the operator running, and "
                "watching this namespace?"
            )
        view.tick(time.time())
    return False


def _job_message(tracker: _Tracker, message: _Message, moment: float) -> None:
    if message.kind == "DELETED":
        tracker.gone()
    elif message.kind == "LIST":
        items = message.payload
        if not items:
            tracker.gone()
        else:
            tracker.job(items[0], moment)
    elif message.kind in ("ADDED", "MODIFIED"):
        tracker.job(message.payload, moment)


def _drain_events(tracker: _Tracker, messages: queue.Queue[_Message]) -> None:
    """Warning Events of the last moments still on their way (the operator posts them after
    the status write)."""
    end = time.monotonic() + EVENT_GRACE
    while (remaining := end - time.monotonic()) > 0:
        try:
            message = messages.get(timeout=remaining)
        except queue.Empty:
            return
        if message.source == "event":
            tracker.event(message.kind, message.payload)
