"""A fault-injecting reverse proxy between a Kubernetes client and a real kube-apiserver.

The operator (the official ``kubernetes`` client and kopf's aiohttp client) talks plain HTTP
to :class:`FaultProxy`, which forwards every request byte for byte to the API server (HTTPS
verified against a CA file, or plain HTTP) and streams the answer back chunk by chunk, so
watches and protobuf bodies pass through untouched. On top of that, a test can:

* :meth:`FaultProxy.inject_fault` - answer the next N matching requests with an error (409,
  429, 500, ...) and a Kubernetes ``Status`` body *without* forwarding them, so the cluster
  is left unchanged and only the client's error handling is exercised;
* :meth:`FaultProxy.delay` - hold the next N matching requests for a while, then forward them;
* :meth:`FaultProxy.set_chooser` - decide request by request (e.g. a seeded random profile of
  errors and delays, as the chaos suite's is);
* :meth:`FaultProxy.cut_watches` - end every open watch stream, as an API server restart or
  a load balancer would;
* :meth:`FaultProxy.count` - ask what the client tried and what it got back.

If the API server cannot be reached, the client gets a 502 ``Status`` naming the cause.
Protocol upgrades (exec, attach, port-forward) are not proxied: ``Upgrade`` is a hop-by-hop
header and is dropped like the others.

Requests are matched by what the API server's authorizer sees (verb, group, resource,
namespace, name, subresource), which :func:`classify` derives from the method and URL.

The proxy runs its own event loop in a daemon thread, so synchronous tests drive it directly::

    with FaultProxy("https://127.0.0.1:6443", ca_file=ca) as proxy:
        proxy.inject_fault(409, verb="patch", resource="microtaskjobs", times=2)
        ...  # point the client at proxy.url
        assert proxy.count("patch", "microtaskjobs", code=409) == 2
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = ["ApiRequest", "Fault", "FaultProxy", "classify"]

T = TypeVar("T")

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

# The API server's request-info rules (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go).
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}

# Connection-level headers (RFC 9110 section 7.6.1) belong to one hop and must not be forwarded;
# Host and Content-Length are recomputed by the client side for the upstream connection.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)
# aiohttp would otherwise add its own values when the client sent none, and the API server
# must see exactly what the client sent (e.g. no Accept-Encoding means no gzip).
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

# Kubernetes objects go up to ~1.5 MiB in etcd; aiohttp's default request limit is 1 MiB.
_MAX_REQUEST_BODY = 64 * 1024 * 1024
_CALL_TIMEOUT = 10.0
_SHUTDOWN_TIMEOUT = 1.0


# --- request classification -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A request as the API server's authorizer sees it.

    ``resource`` is empty for non-resource URLs (``/version``, ``/api``, discovery), whose
    verb is the lower-cased method. ``namespace`` is None for cluster-scoped requests; like the
    API server, a request for the Namespace object ``foo`` itself has namespace ``foo``.
    """

    method: str
    path: str
    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def is_write(self) -> bool:
        """Whether the request asks to change state."""
        return self.verb in WRITE_VERBS


def classify(method: str, path: str, query: Mapping[str, str]) -> ApiRequest:
    """Classify a request like the API server does (verb, group, resource, name, ...)."""
    method = method.upper()
    parts = _split_path(path)
    located = _locate_api(parts)
    if located is None:
        return ApiRequest(method, path, method.lower())
    group, version, rest = located
    verb = _METHOD_VERBS.get(method, "")
    if rest[0] in _SPECIAL_VERBS:
        if len(rest) < 2:
            return ApiRequest(method, path, verb, group, version)
        verb, rest = rest[0], rest[1:]
    namespace, rest = _split_namespace(rest)
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = rest[2] if len(rest) >= 3 and verb != "proxy" else None
    if name is None and verb == "get":
        verb = "watch" if _is_watch(query) else "list"
        # A list or watch of a single object by field selector is authorized as that object.
        name = _selected_name(query.get("fieldSelector", ""))
    if name is None and verb == "delete":
        verb = "deletecollection"
    return ApiRequest(method, path, verb, group, version, resource, namespace, name, subresource)


def _split_path(path: str) -> list[str]:
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def _locate_api(parts: list[str]) -> tuple[str, str, list[str]] | None:
    """(group, version, the parts after them), or None for a non-resource URL."""
    if len(parts) >= 3 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 4 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def _split_namespace(rest: list[str]) -> tuple[str | None, list[str]]:
    """The namespace and the parts from the resource on."""
    if rest[0] != "namespaces" or len(rest) < 2:
        return None, rest
    # /namespaces/{ns}/status|finalize are subresources of the Namespace object itself.
    if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        return rest[1], rest[2:]
    return rest[1], rest


def _is_watch(query: Mapping[str, str]) -> bool:
    # The API server treats any value but "false" and "0" as true.
    value = query.get("watch")
    return value is not None and value.lower() not in ("false", "0")


def _selected_name(selector: str) -> str | None:
    for term in selector.split(","):
        if "!=" in term:
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if sep and key.strip() == "metadata.name" and _valid_segment(value.strip()):
            return value.strip()
    return None


def _valid_segment(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "%" not in name


# --- faults -----------------------------------------------------------------------------------

_CONFLICT = (
    'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
    "please apply your changes to the latest version and try again"
)
_REASONS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "injected: bad request"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "injected: forbidden"),
    404: ("NotFound", '{resource} "{name}" not found'),
    405: ("MethodNotAllowed", "injected: the server does not allow this method"),
    409: ("Conflict", _CONFLICT),
    410: ("Expired", "injected: too old resource version"),
    413: ("RequestEntityTooLarge", "injected: request entity too large"),
    415: ("UnsupportedMediaType", "injected: unsupported media type"),
    422: ("Invalid", "injected: invalid"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected failure"),
    503: ("ServiceUnavailable", "injected: service unavailable"),
    504: ("Timeout", "injected: the server was unable to return a response in time"),
}


@dataclass
class Fault:
    """Hits the next ``remaining`` matching requests: held ``delay`` s, then answered with ``code``.

    ``code`` None forwards the request after the delay. Matchers left None match anything;
    ``subresource`` uses Ellipsis for "any" and None for "no subresource".
    """

    code: int | None
    remaining: int = 1
    verb: str | None = None
    resource: str | None = None
    group: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | EllipsisType | None = ...
    retry_after: int | None = None
    message: str | None = None
    delay: float = 0.0
    hits: int = 0

    def matches(self, request: ApiRequest) -> bool:
        """Whether this fault is armed and targets the request."""
        return (
            self.remaining > 0
            and (self.verb is None or self.verb == request.verb)
            and (self.resource is None or self.resource == request.resource)
            and (self.group is None or self.group == request.group)
            and (self.namespace is None or self.namespace == request.namespace)
            and (self.name is None or self.name == request.name)
            and (self.subresource is ... or self.subresource == request.subresource)
        )

    def status(self, request: ApiRequest) -> dict[str, Any]:
        """The ``Status`` body the API server would send for this error."""
        code = self.code if self.code is not None else 500
        reason, template = _REASONS.get(code, ("InternalError", "injected failure"))
        message = self.message or template.format(
            resource=request.resource, name=request.name or ""
        )
        details: dict[str, Any] = {"name": request.name or "", "kind": request.resource}
        if request.group:
            details["group"] = request.group
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers of the error."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def _status_response(
    code: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=code,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


# --- the proxy --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """An open watch; ``upstream`` is None until the API server has answered."""

    upstream: aiohttp.ClientResponse | None = None
    cut: bool = False
    abort: bool = False

    def close(self, *, abort: bool) -> None:
        self.cut, self.abort = True, abort
        if self.upstream is not None:
            # Makes the pump's pending read fail at once, which ends the downstream stream.
            self.upstream.close()


@dataclass
class _Running:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    runner: web.AppRunner | None = None
    session: aiohttp.ClientSession | None = None
    port: int = 0
    streams: set[_Stream] = field(default_factory=set)
    closing: bool = False


class FaultProxy:
    """A transparent HTTP proxy to a kube-apiserver that injects errors, delays and cuts.

    Every public method is thread-safe and meant to be called from the test's thread.
    """

    def __init__(
        self,
        upstream: str,
        *,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.client_cert = client_cert  # (certificate, key) when the server wants mTLS
        self.host = host
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[tuple[ApiRequest, int]] = []
        self._chooser: Callable[[ApiRequest], Fault | None] | None = None
        self._running: _Running | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on a free port from a daemon thread with its own event loop."""
        if self._running is not None:
            raise RuntimeError("FaultProxy already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="faultproxy", daemon=True)
        self._running = _Running(loop, thread)
        thread.start()
        try:
            self._call(self._startup(self._running))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close open streams, the server and the upstream session; join the thread."""
        running, self._running = self._running, None
        if running is None:
            return
        if running.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(running), running.loop)
            try:
                future.result(timeout=_CALL_TIMEOUT)
            finally:
                running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(timeout=_CALL_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Where clients connect: ``http://HOST:PORT``."""
        if self._running is None or not self._running.port:
            raise RuntimeError("FaultProxy is not running")
        return f"http://{self.host}:{self._running.port}"

    # --- faults -------------------------------------------------------------------------------

    def inject_fault(
        self,
        code: int,
        *,
        times: int = 1,
        verb: str | None = None,
        resource: str | None = None,
        group: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | EllipsisType | None = ...,
        retry_after: int | None = None,
        message: str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``code``; they never reach the server.

        The fault is returned so a test can read its ``hits`` and ``remaining``.
        """
        return self._arm(
            Fault(
                code,
                times,
                verb,
                resource,
                group,
                namespace,
                name,
                subresource,
                retry_after,
                message,
                delay,
            )
        )

    def delay(
        self,
        seconds: float,
        *,
        times: int = 1,
        verb: str | None = None,
        resource: str | None = None,
        group: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | EllipsisType | None = ...,
    ) -> Fault:
        """Hold the next ``times`` matching requests for ``seconds``, then forward them."""
        return self._arm(
            Fault(None, times, verb, resource, group, namespace, name, subresource, delay=seconds)
        )

    def clear_faults(self) -> None:
        """Disarm every fault (requests already being delayed still complete)."""
        with self._lock:
            self._faults.clear()

    def set_chooser(self, chooser: Callable[[ApiRequest], Fault | None] | None) -> None:
        """Let ``chooser`` pick a fault for each request that no armed fault matches.

        It returns a fresh :class:`Fault` (its ``code`` and ``delay`` apply to this request
        only) or None to forward the request untouched; None as ``chooser`` removes it. It runs
        on the proxy's loop for every request, so it must be quick and must not block. Armed
        faults keep precedence, so a test can still aim one at a request a chooser governs.
        """
        with self._lock:
            self._chooser = chooser

    def cut_watches(self, *, abort: bool = False) -> int:
        """End every watch stream open right now; returns how many were cut.

        By default the client sees a clean end of stream (the last chunk), as when the API
        server closes a watch; ``abort=True`` drops the connection mid-stream instead.
        """
        running = self._require_running()
        return self._call(self._cut_streams(running, abort=abort))

    # --- request log --------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[ApiRequest, int]]:
        """Every request so far with the status code the client got, in answer order."""
        with self._lock:
            return list(self._log)

    def count(
        self,
        verb: str | None = None,
        resource: str | None = None,
        code: int | None = None,
        **criteria: Any,
    ) -> int:
        """How many logged requests match; each keyword criterion must equal an ApiRequest field.

        ``verb``, ``resource`` and ``code`` left None match anything, whereas an explicit
        ``namespace=None`` or ``subresource=None`` asks for cluster-scoped or plain requests.
        """
        unknown = set(criteria) - _API_REQUEST_FIELDS
        if unknown:
            raise TypeError(f"unknown criteria: {sorted(unknown)}")
        if verb is not None:
            criteria["verb"] = verb
        if resource is not None:
            criteria["resource"] = resource
        return sum(
            1
            for request, status in self.requests
            if (code is None or status == code)
            and all(getattr(request, key) == value for key, value in criteria.items())
        )

    def clear_log(self) -> None:
        """Forget the requests logged so far."""
        with self._lock:
            self._log.clear()

    # --- internals: thread plumbing -----------------------------------------------------------

    def _require_running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("FaultProxy is not running")
        return self._running

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        running = self._require_running()
        future = asyncio.run_coroutine_threadsafe(coroutine, running.loop)
        result: T = future.result(timeout=_CALL_TIMEOUT)
        return result

    def _arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take_fault(self, request: ApiRequest) -> Fault | None:
        # First armed match wins, in the order the faults were armed.
        with self._lock:
            for fault in self._faults:
                if fault.matches(request):
                    fault.remaining -= 1
                    fault.hits += 1
                    return fault
            chooser = self._chooser
        return None if chooser is None else chooser(request)

    def _record(self, request: ApiRequest, code: int) -> None:
        with self._lock:
            self._log.append((request, code))

    # --- internals: on the proxy's loop -------------------------------------------------------

    async def _startup(self, running: _Running) -> None:
        running.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl_context()),
            # Watches are long and may be silent for minutes: only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        app = web.Application(client_max_size=_MAX_REQUEST_BODY)
        app.router.add_route("*", "/{tail:.*}", partial(self._handle, running))
        # Cancellation on disconnect closes the upstream watch as soon as the client leaves.
        running.runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            access_log=None,
        )
        await running.runner.setup()
        await web.TCPSite(running.runner, self.host, 0).start()
        running.port = running.runner.addresses[0][1]

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.upstream.startswith("https:"):
            return True
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.client_cert is not None:
            context.load_cert_chain(*map(str, self.client_cert))
        return context

    async def _shutdown(self, running: _Running) -> None:
        running.closing = True
        await self._cut_streams(running, abort=False)
        if running.runner is not None:
            await running.runner.cleanup()
        if running.session is not None:
            await running.session.close()

    async def _cut_streams(self, running: _Running, *, abort: bool) -> int:
        streams = list(running.streams)
        for stream in streams:
            stream.close(abort=abort)
        return len(streams)

    async def _handle(self, running: _Running, request: web.Request) -> web.StreamResponse:
        api = classify(request.method, request.path, request.query)
        stream = _Stream() if api.verb == "watch" else None
        if stream is not None:
            running.streams.add(stream)
            if running.closing:
                stream.close(abort=False)
        try:
            return await self._serve(request, api, running, stream)
        finally:
            if stream is not None:
                running.streams.discard(stream)

    async def _serve(
        self, request: web.Request, api: ApiRequest, running: _Running, stream: _Stream | None
    ) -> web.StreamResponse:
        fault = self._take_fault(api)
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.code is not None:
                self._record(api, fault.code)
                return _status_response(fault.code, fault.status(api), fault.headers())
        assert running.session is not None
        body = await request.read()
        try:
            upstream = await running.session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=_forwarded_headers(request.headers),
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            # The API server did not answer (down, restarting): say so like a gateway would,
            # with a Status body naming the cause, rather than a bare connection reset.
            return self._bad_gateway(api, str(exc))
        async with upstream:
            return await self._relay(request, api, upstream, stream)

    def _bad_gateway(self, api: ApiRequest, reason: str) -> web.Response:
        fault = Fault(502, message=f"faultproxy: upstream unreachable: {reason}")
        self._record(api, 502)
        return _status_response(502, fault.status(api))

    async def _relay(
        self,
        request: web.Request,
        api: ApiRequest,
        upstream: aiohttp.ClientResponse,
        stream: _Stream | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        self._record(api, upstream.status)
        if stream is not None:
            stream.upstream = upstream
            if stream.cut:  # cut while the API server was still answering
                upstream.close()
        await self._pump(request, upstream, response, stream)
        return response

    async def _pump(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        stream: _Stream | None,
    ) -> None:
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            if stream is None or not stream.cut or stream.abort:
                # The upstream broke (or an abrupt cut was asked for): break the client's
                # response too, rather than pretend a truncated body is complete.
                _abort(request)
                return
        except ConnectionResetError:
            return  # the client went away; nothing left to deliver
        # The client may also go away right at the end (a watch it stopped, an operator that
        # exits): the end of a body nobody reads is not an error.
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()


_API_REQUEST_FIELDS = frozenset(f.name for f in fields(ApiRequest))


def _forwarded_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    dropped = set(_HOP_BY_HOP)
    connection = headers.get("Connection", "")
    dropped.update(token.strip().lower() for token in connection.split(",") if token.strip())
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in dropped:
            out.add(key, value)
    return out


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
