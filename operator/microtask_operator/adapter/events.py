"""The operator's Kubernetes Events, posted in the background so they never hold up a reconcile.

Events are for people (`kubectl describe`, `kubectl get events`); nothing reads them back, and the
status never depends on them. Each MicrotaskJob's Events go out one after another, in the order
they were emitted, from a queue of their own. A failing API (429, 5xx, no answer) is tried again
after growing pauses; an Event the API refuses (403, 422...) or that still fails after the last
pause is dropped: counted in `microtask_events_dropped_total` by its reason, with one INFO line.
An object's backlog is bounded (the oldest waiting Event makes room), so a long outage costs
memory for a few Events per object, not more.

kopf's own Event posts, should any be made, log "Failed to post an event" when they fail;
`KopfEventDrops` counts those in the same metric.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import logging
import random
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..core.types import Event
from ..metrics import Metrics
from .kube import RETRIABLE, ApiError

log = logging.getLogger(__name__)

#: The `source.component` of our Events (the "From" column of `kubectl describe`).
COMPONENT = "microtask-operator"
#: Longer messages are cut in the middle, as kopf does: the start and the end say the most.
MAX_MESSAGE_CHARS = 1024
#: Pauses (seconds) between the tries of one Event; after the last failed try it is dropped.
RETRY_PAUSES: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Events waiting per object at most.
BACKLOG = 100
#: Event posts in flight at once: the API client's threads are shared with the reconciles.
CONCURRENT_POSTS = 2


class EventApi(Protocol):
    async def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...


def reference(body: Mapping[str, Any]) -> dict[str, str]:
    """An Event's `involvedObject`: the object as `kubectl describe` finds its Events."""
    meta = body.get("metadata") or {}
    ref = {
        "apiVersion": str(body.get("apiVersion") or ""),
        "kind": str(body.get("kind") or ""),
        "namespace": str(meta.get("namespace") or ""),
        "name": str(meta.get("name") or ""),
        "uid": str(meta.get("uid") or ""),
    }
    return {k: v for k, v in ref.items() if v}


def cut(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    infix = "..."
    head = (limit - len(infix)) // 2
    tail = limit - len(infix) - head
    return message[:head] + infix + message[-tail:]


def event_body(
    involved: Mapping[str, str], event: Event, *, at: datetime, name: str, instance: str
) -> dict[str, Any]:
    """A core/v1 Event about `involved`, named `name` so that a repeated post cannot double it."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": involved.get("namespace", "")},
        "involvedObject": dict(involved),
        "reason": str(event.reason),
        "message": cut(str(event.message)),
        "type": "Warning" if event.warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@dataclass(frozen=True)
class _Pending:
    body: dict[str, Any]
    reason: str

    @property
    def about(self) -> str:
        ref = self.body["involvedObject"]
        return f"{ref.get('kind', '')} {ref.get('namespace', '')}/{ref.get('name', '')}"


class EventPoster:
    """Posts Events in the background: in order per object, retried, and counted when lost.

    `post` returns at once; it needs the running event loop (the workers are tasks in it).
    """

    def __init__(
        self,
        api: EventApi,
        metrics: Metrics,
        *,
        pauses: Sequence[float] = RETRY_PAUSES,
        backlog: int = BACKLOG,
        concurrency: int = CONCURRENT_POSTS,
        instance: str | None = None,
    ) -> None:
        if backlog < 1:
            raise ValueError(f"backlog={backlog}: must be at least 1")
        self.api = api
        self.metrics = metrics
        self.pauses = tuple(pauses)
        self.backlog = backlog
        self.instance = instance or socket.gethostname()
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._queues: dict[str, collections.deque[_Pending]] = {}
        self._sending: dict[str, _Pending] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def post(self, involved: Mapping[str, Any], event: Event) -> None:
        """Queue an Event about the object `involved` (its body); never blocks, never raises."""
        ref = reference(involved)
        key = ref.get("uid") or f"{ref.get('namespace')}/{ref.get('name')}"
        name = f"{ref.get('name', 'object')}.{secrets.token_hex(8)}"
        body = event_body(ref, event, at=datetime.now(UTC), name=name, instance=self.instance)
        queue = self._queues.setdefault(key, collections.deque())
        if len(queue) >= self.backlog:
            self._drop(queue.popleft(), f"more than {self.backlog} Events waiting for this object")
        queue.append(_Pending(body, body["reason"]))
        if key not in self._workers:
            loop = asyncio.get_running_loop()
            self._workers[key] = loop.create_task(self._drain(key), name=f"events of {key}")

    @property
    def waiting(self) -> int:
        """Events not posted yet (queued or being posted)."""
        return sum(len(q) for q in self._queues.values()) + len(self._sending)

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued Event is posted or dropped; False if time ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._workers:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(list(self._workers.values()), timeout=left)
        return True

    async def close(self, timeout: float) -> None:
        """Post what can be posted within `timeout`; the rest is dropped (and counted)."""
        if await self.flush(timeout):
            return
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        left = list(self._sending.values()) + [p for q in self._queues.values() for p in q]
        self._sending.clear()
        self._queues.clear()
        for pending in left:
            self.metrics.event_dropped(pending.reason)
        if left:
            log.info("%d Event(s) not posted: the operator is stopping", len(left))

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                pending = queue.popleft()
                self._sending[key] = pending
                await self._send(pending)
                del self._sending[key]
        finally:
            # No await between the last look at the queue and here: a later `post` either found
            # this worker still looping or finds no worker and starts one.
            self._workers.pop(key, None)
            if not queue and self._queues.get(key) is queue:
                del self._queues[key]

    async def _send(self, pending: _Pending) -> None:
        namespace = pending.body["metadata"]["namespace"]
        for pause in (*self.pauses, None):
            try:
                async with self._slots:
                    await self.api.create_event(namespace, pending.body)
                return
            except ApiError as error:
                if error.status not in RETRIABLE and error.status != "error":
                    self._drop(pending, str(error))
                    return
                if pause is None:
                    self._drop(pending, f"{error} (after {len(self.pauses) + 1} tries)")
                    return
            except Exception as error:  # never let one Event end the object's queue
                self._drop(pending, repr(error))
                return
            await asyncio.sleep(pause * (1 + random.random() / 2))

    def _drop(self, pending: _Pending, why: str) -> None:
        self.metrics.event_dropped(pending.reason)
        log.info("Event %s about %s not posted: %s", pending.reason, pending.about, why)


#: The logger of kopf's Event poster (kopf/_core/engines/posting.py), which reports failed posts.
KOPF_POSTING_LOGGER = "kopf._core.engines.posting"
_KOPF_FAILED = "Failed to post an event"
# kopf's message ends with `Event: type='Normal', reason='Logging', message='...'` (reprs).
_KOPF_REASON = re.compile(r"\breason=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


class KopfEventDrops(logging.Filter):
    """Counts kopf's own failed Event posts, and logs them at INFO like ours (not as warnings)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(_KOPF_FAILED):
            self.metrics.event_dropped(kopf_reason(text))
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True

    def install(self) -> None:
        logging.getLogger(KOPF_POSTING_LOGGER).addFilter(self)

    def uninstall(self) -> None:
        logging.getLogger(KOPF_POSTING_LOGGER).removeFilter(self)


def kopf_reason(text: str) -> str:
    """The Event reason in kopf's "Failed to post an event" message ("" if it is not there)."""
    match = _KOPF_REASON.search(text)
    if match is None:
        return ""
    try:
        return str(ast.literal_eval(match.group(1)))
    except (SyntaxError, ValueError):
        return ""
