"""The fault proxy classifies requests like the API server and forwards them transparently.

``classify`` and ``Fault.matches`` are checked against tables. The proxy itself runs in front
of a small plain-HTTP aiohttp server started here, which records what reaches it and serves
a JSON object, an echo of the request body and a watch that sends one JSON line every 0.1 s
for five seconds, so a test can tell a delivered line from a finished stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.integration.harness.faultproxy import ApiRequest, Fault, FaultProxy, classify

pytestmark = pytest.mark.timeout(10)

CM_PATH = "/api/v1/namespaces/default/configmaps/cm"
CM_LIST = "/api/v1/namespaces/default/configmaps"
CM_BODY = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
WATCH_LINES = 50
WATCH_PERIOD = 0.1


# --- classification ---------------------------------------------------------------------------

CLASSIFY_TABLE: list[tuple[str, str, dict[str, str], tuple[Any, ...]]] = [
    # method, path, query -> (verb, group, version, resource, namespace, name, subresource)
    ("GET", "/api/v1/pods", {}, ("list", "", "v1", "pods", None, None, None)),
    ("GET", "/api/v1/namespaces/ns/pods", {}, ("list", "", "v1", "pods", "ns", None, None)),
    ("GET", "/api/v1/namespaces/ns/pods/p", {}, ("get", "", "v1", "pods", "ns", "p", None)),
    ("HEAD", "/api/v1/namespaces/ns/pods/p", {}, ("get", "", "v1", "pods", "ns", "p", None)),
    ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "", "v1", "pods", None, None, None)),
    ("GET", "/api/v1/pods", {"watch": "1"}, ("watch", "", "v1", "pods", None, None, None)),
    ("GET", "/api/v1/pods", {"watch": "false"}, ("list", "", "v1", "pods", None, None, None)),
    ("GET", "/api/v1/pods", {"watch": "0"}, ("list", "", "v1", "pods", None, None, None)),
    ("GET", "/api/v1/watch/pods", {}, ("watch", "", "v1", "pods", None, None, None)),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"watch": "true", "fieldSelector": "metadata.name=p"},
        ("watch", "", "v1", "pods", "ns", "p", None),
    ),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"fieldSelector": "metadata.name!=p"},
        ("list", "", "v1", "pods", "ns", None, None),
    ),
    ("POST", "/api/v1/namespaces/ns/pods", {}, ("create", "", "v1", "pods", "ns", None, None)),
    (
        "POST",
        "/api/v1/namespaces/ns/pods/p/eviction",
        {},
        ("create", "", "v1", "pods", "ns", "p", "eviction"),
    ),
    (
        "POST",
        "/api/v1/namespaces/ns/serviceaccounts/sa/token",
        {},
        ("create", "", "v1", "serviceaccounts", "ns", "sa", "token"),
    ),
    ("GET", "/api/v1/namespaces/ns/pods/p/log", {}, ("get", "", "v1", "pods", "ns", "p", "log")),
    ("PUT", "/api/v1/nodes/n1", {}, ("update", "", "v1", "nodes", None, "n1", None)),
    ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "v1", "nodes", None, "n1", "status")),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, ("delete", "", "v1", "pods", "ns", "p", None)),
    (
        "DELETE",
        "/api/v1/namespaces/ns/pods",
        {},
        ("deletecollection", "", "v1", "pods", "ns", None, None),
    ),
    # The Namespace object itself: namespaced by its own name, as the API server sees it.
    ("GET", "/api/v1/namespaces", {}, ("list", "", "v1", "namespaces", None, None, None)),
    ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "v1", "namespaces", "ns", "ns", None)),
    (
        "PUT",
        "/api/v1/namespaces/ns/finalize",
        {},
        ("update", "", "v1", "namespaces", "ns", "ns", "finalize"),
    ),
    (
        "GET",
        "/apis/batch/v1/namespaces/ns/jobs",
        {"watch": "true"},
        ("watch", "batch", "v1", "jobs", "ns", None, None),
    ),
    (
        "PATCH",
        "/apis/microtask.dev/v1alpha1/namespaces/ns/microtaskjobs/j/status",
        {},
        ("patch", "microtask.dev", "v1alpha1", "microtaskjobs", "ns", "j", "status"),
    ),
    (
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example.com",
        {},
        (
            "get",
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            None,
            "x.example.com",
            None,
        ),
    ),
    (
        "GET",
        "/api/v1/proxy/namespaces/ns/pods/p/some/path",
        {},
        ("proxy", "", "v1", "pods", "ns", "p", None),
    ),
    # Non-resource URLs (discovery included): the verb is the lower-cased method.
    ("GET", "/version", {}, ("get", "", "", "", None, None, None)),
    ("GET", "/api", {}, ("get", "", "", "", None, None, None)),
    ("GET", "/api/v1", {}, ("get", "", "", "", None, None, None)),
    ("GET", "/apis/batch/v1", {}, ("get", "", "", "", None, None, None)),
    ("POST", "/healthz", {}, ("post", "", "", "", None, None, None)),
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), CLASSIFY_TABLE)
def test_classify(method: str, path: str, query: dict[str, str], expected: tuple[Any, ...]) -> None:
    request = classify(method, path, query)
    got = (
        request.verb,
        request.group,
        request.version,
        request.resource,
        request.namespace,
        request.name,
        request.subresource,
    )
    assert got == expected
    assert (request.method, request.path) == (method, path)


def _request(verb: str, resource: str, **kwargs: Any) -> ApiRequest:
    return ApiRequest("GET", "/", verb, kwargs.pop("group", ""), "v1", resource, **kwargs)


POD = _request("patch", "pods", namespace="ns", name="p")
POD_STATUS = _request("patch", "pods", namespace="ns", name="p", subresource="status")
JOB = _request("patch", "jobs", group="batch", namespace="ns", name="j")


@pytest.mark.parametrize(
    ("matchers", "request_", "expected"),
    [
        ({}, POD, True),
        ({}, POD_STATUS, True),
        ({"verb": "patch", "resource": "pods"}, POD, True),
        ({"verb": "update"}, POD, False),
        ({"resource": "jobs"}, POD, False),
        ({"group": "batch"}, JOB, True),
        ({"group": ""}, JOB, False),
        ({"namespace": "other"}, POD, False),
        ({"name": "p"}, POD, True),
        ({"name": "q"}, POD, False),
        ({"subresource": None}, POD, True),
        ({"subresource": None}, POD_STATUS, False),
        ({"subresource": "status"}, POD_STATUS, True),
        ({"subresource": "status"}, POD, False),
        ({"remaining": 0}, POD, False),
    ],
)
def test_fault_matches(
    matchers: dict[str, str | int | EllipsisType | None], request_: ApiRequest, expected: bool
) -> None:
    assert Fault(409, **matchers).matches(request_) is expected  # type: ignore[arg-type]


# --- a small upstream server ------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """A plain-HTTP aiohttp server in its own thread that records what reaches it."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    open_watches: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self._loop).result(timeout=5)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()

    def hits(self, path: str) -> int:
        return sum(1 for seen in self.seen if seen.path_qs.split("?")[0] == path)

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_get(CM_PATH, self._get)
        app.router.add_patch(CM_PATH, self._get)
        app.router.add_get(CM_LIST, self._watch)
        app.router.add_post(CM_LIST, self._echo)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _record(self, request: web.Request) -> None:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers), body))

    async def _get(self, request: web.Request) -> web.Response:
        await self._record(request)
        payload = json.dumps(CM_BODY).encode()
        headers = CIMultiDict(
            [("Audit-Id", "abc"), ("Warning", "299 - one"), ("Warning", "299 - two")]
        )
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            payload = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=payload, content_type="application/json", headers=headers)

    async def _echo(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(
            status=201, body=self.seen[-1].body, headers={"Content-Type": request.content_type}
        )

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if request.query.get("watch") != "true":
            return web.json_response({"kind": "ConfigMapList", "items": [CM_BODY]})
        # A quiet watch sends one event and then nothing, like a watch on an idle resource.
        period = 5.0 if "quiet" in request.query else WATCH_PERIOD
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        self.open_watches += 1
        try:
            for index in range(WATCH_LINES):
                event = {"type": "ADDED", "object": {"metadata": {"name": f"cm{index}"}}}
                await response.write(json.dumps(event).encode() + b"\n")
                await asyncio.sleep(period)
        finally:
            self.open_watches -= 1
        await response.write_eof()
        return response


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream: Upstream, caplog: pytest.LogCaptureFixture) -> Iterator[FaultProxy]:
    caplog.set_level(logging.WARNING)
    with FaultProxy(upstream.url) as running:
        yield running
    # A broken relay shows up as aiohttp's "Error handling request" in either server.
    errors = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    proxy: FaultProxy,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
) -> Reply:
    """One request through the proxy with a stdlib client (no aiohttp on the client side)."""
    connection = _connect(proxy)
    started = time.monotonic()
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers or []
        for key, value in items:
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, response.headers, data, time.monotonic() - started)
    finally:
        connection.close()


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    host, port = proxy.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=3)


@contextlib.contextmanager
def open_watch(proxy: FaultProxy, query: str = "") -> Iterator[http.client.HTTPResponse]:
    """A watch through the proxy, its response headers read; closed on exit."""
    connection = _connect(proxy)
    try:
        connection.request("GET", CM_LIST + "?watch=true&resourceVersion=1" + query)
        yield connection.getresponse()
    finally:
        connection.close()


# --- pass-through -----------------------------------------------------------------------------


def test_forwards_request_and_response_headers(proxy: FaultProxy, upstream: Upstream) -> None:
    reply = call(
        proxy,
        "GET",
        CM_PATH + "?resourceVersion=5&labelSelector=a%3Db",
        headers=[
            ("Authorization", "Bearer s3cr3t"),
            ("Accept", "application/json, */*"),
            ("User-Agent", "microtask-test/1"),
            ("Impersonate-Group", "g1"),
            ("Impersonate-Group", "g2"),
            # X-Hop is declared connection-specific, so it must stop at the proxy.
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
        ],
    )
    assert (reply.status, reply.json()) == (200, CM_BODY)
    assert reply.headers["Audit-Id"] == "abc"
    assert reply.headers.get_all("Warning") == ["299 - one", "299 - two"]
    (seen,) = upstream.seen
    assert (seen.method, seen.path_qs) == (
        "GET",
        CM_PATH + "?resourceVersion=5&labelSelector=a%3Db",
    )
    assert seen.headers["Authorization"] == "Bearer s3cr3t"
    assert seen.headers["Accept"] == "application/json, */*"
    assert seen.headers["User-Agent"] == "microtask-test/1"
    assert seen.headers.getall("Impersonate-Group") == ["g1", "g2"]
    assert "X-Hop" not in seen.headers
    assert "Accept-Encoding" not in seen.headers  # nothing the client did not send
    assert seen.headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert proxy.requests == [(classify("GET", CM_PATH, {}), 200)]


def test_forwards_binary_body_untouched(proxy: FaultProxy, upstream: Upstream) -> None:
    # A protobuf-like body: magic prefix, invalid UTF-8, NULs and CRLFs must survive as-is.
    body = b"k8s\x00\n\x02v1\x12\tConfigMap\xff\xfe\r\n" + bytes(range(256)) * 300
    content_type = "application/vnd.kubernetes.protobuf"
    reply = call(proxy, "POST", CM_LIST, body=body, headers={"Content-Type": content_type})
    assert reply.status == 201
    assert reply.body == body
    assert reply.headers["Content-Type"] == content_type
    (seen,) = upstream.seen
    assert seen.body == body
    assert seen.headers["Content-Type"] == content_type
    assert seen.headers["Content-Length"] == str(len(body))
    assert proxy.count("create", "configmaps", code=201, namespace="default") == 1


def test_compressed_response_is_not_decoded(proxy: FaultProxy) -> None:
    reply = call(proxy, "GET", CM_PATH, headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(reply.body)) == CM_BODY


def test_unreachable_upstream_answers_bad_gateway() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        reply = call(proxy, "GET", CM_PATH)
    assert reply.status == 502
    assert reply.json()["kind"] == "Status"
    assert "upstream unreachable" in reply.json()["message"]
    assert proxy.count(code=502) == 1


# --- faults -----------------------------------------------------------------------------------


def test_fault_answers_status_without_reaching_upstream(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    fault = proxy.inject_fault(409, verb="patch", resource="configmaps")
    patch = {"Content-Type": "application/merge-patch+json"}
    reply = call(proxy, "PATCH", CM_PATH, body=b"{}", headers=patch)
    assert reply.status == 409
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "Retry-After" not in reply.headers
    status = reply.json()
    assert {k: status[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Conflict",
        "code": 409,
    }
    assert 'configmaps "cm"' in status["message"]
    assert status["details"] == {"name": "cm", "kind": "configmaps"}
    assert upstream.hits(CM_PATH) == 0
    assert (fault.hits, fault.remaining) == (1, 0)
    # The fault is spent: the same request now goes through.
    assert call(proxy, "PATCH", CM_PATH, body=b"{}", headers=patch).status == 200
    assert upstream.hits(CM_PATH) == 1
    assert proxy.count("patch", code=409) == 1
    assert proxy.count("patch", code=200) == 1


def test_fault_honours_times_matchers_and_retry_after(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    fault = proxy.inject_fault(
        429, times=2, verb="get", name="cm", retry_after=3, message="slow down"
    )
    assert call(proxy, "GET", CM_LIST).status == 200  # a list: not targeted
    codes = [call(proxy, "GET", CM_PATH) for _ in range(3)]
    assert [reply.status for reply in codes] == [429, 429, 200]
    first = codes[0]
    assert first.headers["Retry-After"] == "3"
    assert first.json()["reason"] == "TooManyRequests"
    assert first.json()["message"] == "slow down"
    assert first.json()["details"]["retryAfterSeconds"] == 3
    assert (fault.hits, fault.remaining) == (2, 0)
    assert upstream.hits(CM_PATH) == 1
    assert proxy.count("get", "configmaps", code=429, name="cm") == 2
    assert proxy.count("get", code=429, subresource=None, namespace="default") == 2
    assert proxy.count("get", code=429, namespace=None) == 0
    with pytest.raises(TypeError):
        proxy.count(nmespace="default")
    proxy.clear_log()
    assert proxy.requests == []


def test_fault_on_watch_and_clear_faults(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.inject_fault(503, times=5, verb="watch")
    proxy.inject_fault(500, times=5, verb="get")
    with open_watch(proxy) as response:
        assert response.status == 503
        assert json.loads(response.read())["reason"] == "ServiceUnavailable"
    proxy.clear_faults()
    assert call(proxy, "GET", CM_PATH).status == 200
    assert upstream.hits(CM_LIST) == 0
    assert proxy.count("watch", code=503) == 1


def test_delay_holds_matching_requests_then_forwards(proxy: FaultProxy, upstream: Upstream) -> None:
    fault = proxy.delay(0.5, verb="get", name="cm")
    slow = call(proxy, "GET", CM_PATH)
    fast = call(proxy, "GET", CM_PATH)
    assert (slow.status, fast.status) == (200, 200)
    assert slow.seconds >= 0.5
    assert fast.seconds < 0.4
    assert upstream.hits(CM_PATH) == 2
    assert (fault.hits, fault.remaining) == (1, 0)


def test_fault_with_delay_answers_late(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.inject_fault(504, delay=0.3)
    reply = call(proxy, "GET", CM_PATH)
    assert (reply.status, reply.json()["reason"]) == (504, "Timeout")
    assert reply.seconds >= 0.3
    assert upstream.hits(CM_PATH) == 0


# --- watches ----------------------------------------------------------------------------------


def test_watch_is_streamed_incrementally(proxy: FaultProxy) -> None:
    started = time.monotonic()
    with open_watch(proxy) as response:
        assert response.status == 200
        first = json.loads(response.readline())
        first_at = time.monotonic() - started
        second = json.loads(response.readline())
    assert first["object"]["metadata"]["name"] == "cm0"
    assert second["object"]["metadata"]["name"] == "cm1"
    # The upstream stream lasts WATCH_LINES * WATCH_PERIOD = 5 s; a buffering proxy would
    # deliver nothing before then.
    assert first_at < 1.0
    assert proxy.count("watch", "configmaps", code=200) == 1


def test_cut_watches_ends_open_streams(proxy: FaultProxy) -> None:
    with open_watch(proxy) as response:
        assert json.loads(response.readline())["type"] == "ADDED"
        cut_at = time.monotonic()
        assert proxy.cut_watches() == 1
        rest = response.read()  # a clean end: the terminating chunk, no error
        ended_after = time.monotonic() - cut_at
    assert ended_after < 1.0
    assert len(rest.splitlines()) < 10
    assert proxy.cut_watches() == 0  # nothing left open


def test_cut_watches_abort_breaks_the_connection(proxy: FaultProxy) -> None:
    with open_watch(proxy) as response:
        assert json.loads(response.readline())["type"] == "ADDED"
        assert proxy.cut_watches(abort=True) == 1
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()


def test_client_leaving_closes_the_upstream_watch(proxy: FaultProxy, upstream: Upstream) -> None:
    with open_watch(proxy, "&quiet=1") as response:
        assert json.loads(response.readline())["type"] == "ADDED"
        assert upstream.open_watches == 1
    # Nothing more will be written to notice the client is gone: the proxy must notice.
    deadline = time.monotonic() + 1.0
    while upstream.open_watches and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.open_watches == 0


def test_stop_ends_open_watches_quickly(upstream: Upstream) -> None:
    proxy = FaultProxy(upstream.url).start()
    with open_watch(proxy) as response:
        assert json.loads(response.readline())["type"] == "ADDED"
        started = time.monotonic()
        proxy.stop()
        stopped_after = time.monotonic() - started
        response.read()
    assert stopped_after < 1.5
    with pytest.raises(RuntimeError):
        _ = proxy.url
