"""A Kubernetes API server emulator over HTTP, built on kmock's Kubernetes scaffold.

kmock 0.8 gives the HTTP plumbing, the request/reaction DSL and the discovery routes
(``kmock.KubernetesScaffold``). Its stateful ``KubernetesEmulator`` mutates objects in a
request pre-processing step that cannot be fixed piecemeal (no resourceVersion, no PUT,
selectors ignored, status/spec mixed, no GC, broken ``generateName``, ...), so this class
keeps the scaffold and replaces the stateful part with :class:`~.store.Store`:

* Kubernetes paths are parsed here (kmock's parser fails on ``/api/v1/namespaces``), every
  verb is served with real status codes (201 on create, 409/404/422 with Status bodies), and
  watches stream with resourceVersions, selectors, bookmarks and 410 Gone.
* Request matching stays O(1) per request: kmock's own log (``self._requests``) is bounded,
  and its DSL is consulted only for reactions a test added itself. Every request is also
  recorded in :class:`RequestLog` as (verb, resource, namespace, subresource, code).
* :class:`FaultInjector` makes the next N matching requests fail with 409/429/500/... without
  touching the store, to prove that a client loses nothing on API errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering  # the Request type kmock's DSL matches against

from .resources import ResourceDef
from .selectors import FieldSelector, LabelSelector, SelectorError
from .store import ApiError, DeleteOptions, Store, WatchEvent, bad_request, set_condition

__all__ = [
    "ApiEmulator",
    "ApiRequest",
    "Fault",
    "FaultInjector",
    "RequestLog",
    "parse_k8s_path",
]

logger = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class K8sPath:
    """A parsed resource URL: ``/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}``."""

    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False  # the deprecated /watch/ path prefix


def parse_k8s_path(path: str) -> K8sPath | None:
    """Parse a resource or discovery path; None for non-resource paths (``/version``...)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = False
    if rest and rest[0] == "watch":
        watch, rest = True, rest[1:]
    if not rest:
        return K8sPath(group, version, legacy_watch=watch)
    namespace: str | None = None
    if rest[0] == "namespaces":
        # /namespaces, /namespaces/{name}, /namespaces/{name}/status|finalize are the
        # Namespace resource itself; /namespaces/{ns}/{plural}/... is a namespaced resource.
        if len(rest) <= 2 or (len(rest) == 3 and rest[2] in ("status", "finalize")):
            return K8sPath(
                group,
                version,
                "namespaces",
                None,
                rest[1] if len(rest) >= 2 else None,
                rest[2] if len(rest) == 3 else None,
                watch,
            )
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    sub = "/".join(rest[2:]) or None
    return K8sPath(group, version, plural, namespace, name, sub, watch)


def _verb(method: str, path: K8sPath, query: Mapping[str, str]) -> str:
    """The RBAC verb of a request, as the API server's authorizer sees it."""
    if method == "GET":
        if query.get("watch") in ("true", "1") or path.legacy_watch:
            return "watch"
        return "get" if path.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if path.name else "deletecollection"
    return method.lower()


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One served request as the request log keeps it."""

    seq: int
    time: float
    method: str
    verb: str  # get/list/watch/create/update/patch/delete/deletecollection, or the method
    group: str
    version: str
    resource: str  # plural; "" for non-resource URLs
    namespace: str | None
    name: str | None
    subresource: str | None
    code: int
    user_agent: str
    path: str

    @property
    def is_write(self) -> bool:
        """Whether the request asked to change state (whatever the outcome)."""
        return self.verb in WRITE_VERBS


@dataclass
class RequestLog:
    """Every request the emulator served; recent ones kept in full, all of them counted.

    The full records are bounded (``maxlen``) so a long test does not grow memory or slow
    down; the counters are exact for the whole run.
    """

    maxlen: int = 200_000
    entries: deque[ApiRequest] = field(default_factory=deque)
    counts: Counter[tuple[str, str, str, str | None, int]] = field(default_factory=Counter)
    total: int = 0
    issued: int = 0

    def __post_init__(self) -> None:
        self.entries = deque(maxlen=self.maxlen)

    def issue(self) -> int:
        """A sequence number for a request that has just arrived (ordered by arrival)."""
        self.issued += 1
        return self.issued - 1

    def record(self, entry: ApiRequest) -> None:
        """Add a finished request."""
        self.entries.append(entry)
        self.counts[(entry.verb, entry.group, entry.resource, entry.subresource, entry.code)] += 1
        self.total += 1

    def select(
        self,
        verb: str | None = None,
        resource: str | None = None,
        *,
        group: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | EllipsisType | None = ...,
        code: int | None = None,
        writes_only: bool = False,
        since: int = 0,
        user_agent: str | None = None,
    ) -> list[ApiRequest]:
        """Recorded requests matching every given criterion (``since`` is a sequence number)."""
        out = []
        for entry in self.entries:
            if entry.seq < since:
                continue
            if verb is not None and entry.verb != verb:
                continue
            if resource is not None and entry.resource != resource:
                continue
            if group is not None and entry.group != group:
                continue
            if namespace is not None and entry.namespace != namespace:
                continue
            if name is not None and entry.name != name:
                continue
            if subresource is not ... and entry.subresource != subresource:
                continue
            if code is not None and entry.code != code:
                continue
            if writes_only and not entry.is_write:
                continue
            if user_agent is not None and user_agent not in entry.user_agent:
                continue
            out.append(entry)
        return out

    def count(self, verb: str | None = None, resource: str | None = None, **criteria: Any) -> int:
        """How many recorded requests match (see :meth:`select`)."""
        return len(self.select(verb, resource, **criteria))

    def writes(
        self, *, since: int = 0, resource: str | None = None
    ) -> Counter[tuple[str, str, str | None]]:
        """Write requests by (verb, resource, subresource)."""
        return Counter(
            (e.verb, e.resource, e.subresource)
            for e in self.select(resource=resource, writes_only=True, since=since)
        )

    def verbs_used(self, *, since: int = 0) -> set[tuple[str, str, str]]:
        """(group, resource[/subresource], verb) triples used: compare them with an RBAC Role."""
        return {
            (e.group, e.resource + (f"/{e.subresource}" if e.subresource else ""), e.verb)
            for e in self.entries
            if e.seq >= since and e.resource
        }

    @property
    def next_seq(self) -> int:
        """The sequence number the next request will get (a mark for ``since=``)."""
        return self.issued


@dataclass
class Fault:
    """Make the next ``remaining`` matching requests fail with ``code`` (None = any)."""

    code: int
    remaining: int = 1
    verb: str | None = None
    resource: str | None = None
    group: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | EllipsisType | None = ...
    retry_after: int | None = None
    message: str | None = None
    hits: int = 0

    def matches(self, entry: ApiRequest) -> bool:
        """Whether a request is targeted by this fault."""
        return (
            self.remaining > 0
            and (self.verb is None or self.verb == entry.verb)
            and (self.resource is None or self.resource == entry.resource)
            and (self.group is None or self.group == entry.group)
            and (self.namespace is None or self.namespace == entry.namespace)
            and (self.name is None or self.name == entry.name)
            and (self.subresource is ... or self.subresource == entry.subresource)
        )

    def error(self, entry: ApiRequest) -> ApiError:
        """The API error this fault answers with."""
        reason, default = {
            400: ("BadRequest", "injected bad request"),
            403: ("Forbidden", "injected: forbidden"),
            404: ("NotFound", f'{entry.resource} "{entry.name}" not found'),
            409: (
                "Conflict",
                f'Operation cannot be fulfilled on {entry.resource} "{entry.name}": '
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            ),
            410: ("Expired", "injected: too old resource version"),
            422: ("Invalid", "injected: invalid"),
            429: ("TooManyRequests", "Too many requests, please try again later."),
            500: ("InternalError", "Internal error occurred: injected failure"),
            503: ("ServiceUnavailable", "injected: service unavailable"),
            504: ("Timeout", "injected: the server was unable to return a response in time"),
        }.get(self.code, ("InternalError", "injected failure"))
        details: dict[str, Any] = {
            "name": entry.name or "",
            "group": entry.group,
            "kind": entry.resource,
        }
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
            headers["Retry-After"] = str(self.retry_after)
        return ApiError(
            self.code, reason, self.message or default, details=details, headers=headers
        )


@dataclass
class FaultInjector:
    """Pending injected failures; the first matching fault with hits left answers."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, fault: Fault) -> Fault:
        """Arm a fault (returned, so a test can read ``hits``/``remaining``)."""
        self.faults.append(fault)
        return fault

    def check(self, entry: ApiRequest) -> ApiError | None:
        """The error to answer for this request, consuming one hit; None to serve it."""
        for fault in self.faults:
            if fault.matches(entry):
                fault.remaining -= 1
                fault.hits += 1
                return fault.error(entry)
        return None

    def clear(self) -> None:
        """Disarm every fault."""
        self.faults.clear()


LogProvider = Callable[[str, str, Mapping[str, str]], str | None]
EvictionHandler = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]


def _json(
    body: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> aiohttp.web.Response:
    response = aiohttp.web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )
    for key, value in (headers or {}).items():
        response.headers[key] = value
    for warning in warnings or ():
        response.headers.add("Warning", f'299 - "{warning}"')
    return response


def _for_list(res: ResourceDef, obj: Mapping[str, Any]) -> dict[str, Any]:
    """List items: built-ins come without kind/apiVersion (the list carries them), CRs with."""
    if res.is_custom:
        return {**obj, "apiVersion": res.api_version, "kind": res.kind}
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesScaffold):
    """The API server: kmock's scaffold + the store, served by :class:`ApiServer`."""

    store: Store = attrs.field(factory=Store)
    request_log: RequestLog = attrs.field(factory=RequestLog)
    faults: FaultInjector = attrs.field(factory=FaultInjector)
    bookmark_interval: float = 5.0
    default_watch_timeout: float = 1800.0
    kept_kmock_requests: int = 1000
    server_address: str = "127.0.0.1:0"
    log_provider: LogProvider | None = None
    eviction_handler: EvictionHandler | None = None
    _builtin_reactions: int = attrs.field(default=0, init=False)
    _closing: asyncio.Event | None = attrs.field(default=None, init=False)
    _streams: set[aiohttp.web.StreamResponse] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock matches reactions by scanning its request log, so an unbounded log makes every
        # request slower than the last; a bounded deque keeps its DSL usable and O(1).
        self._requests = deque(maxlen=self.kept_kmock_requests)  # type: ignore[assignment]
        self._builtin_reactions = len(self._payloads)

    # --- entry point ---------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request (aiohttp low-level server handler)."""
        if self._closing is None:
            self._closing = asyncio.Event()
        body = await raw_request.read()
        path = parse_k8s_path(raw_request.path)
        query = dict(raw_request.query)
        method = raw_request.method.upper()
        # Discovery URLs (/api/v1, /apis/g/v) are non-resource reads, whatever their shape.
        verb = _verb(method, path, query) if path is not None and path.plural else method.lower()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = rendering.Request(
            id=self.request_log.total,
            raw_request=raw_request,
            url=raw_request.url,
            method=method,
            params=query,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=body.decode(errors="replace"),
            data=data,
            action=_kmock_action(verb),
            resource=_kmock_resource(raw_request.path, path),
            namespace=path.namespace if path is not None else None,
            name=path.name if path is not None else None,
            subresource=path.subresource if path is not None else None,
        )
        self._requests.append(request)
        seq = self.request_log.issue()
        pending = ApiRequest(
            seq=seq,
            time=time.time(),
            method=method,
            verb=verb,
            group=path.group if path else "",
            version=path.version if path else "",
            resource=(path.plural or "") if path else "",
            namespace=path.namespace if path else None,
            name=path.name if path else None,
            subresource=path.subresource if path else None,
            code=0,
            user_agent=raw_request.headers.get("User-Agent", ""),
            path=raw_request.path,
        )
        response: aiohttp.web.StreamResponse
        try:
            fault = self.faults.check(pending)
            if fault is not None:
                raise fault
            response = await self._serve(
                request=request,
                raw=raw_request,
                path=path,
                verb=verb,
                query=query,
                body=body,
                data=data,
                pending=pending,
            )
        except ApiError as exc:
            response = _json(exc.status(), exc.code, exc.headers)
        except kmock.KubernetesError as exc:
            response = _json(
                ApiError(exc.status, exc.reason or "NotFound", exc.message or "").status(),
                exc.status,
            )
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.exception("emulator failed to serve %s %s", method, raw_request.path_qs)
            response = _json(
                ApiError(500, "InternalError", f"Internal error occurred: {exc!r}").status(), 500
            )
        if verb != "watch" or not response.prepared or response.status != 200:
            self.request_log.record(dataclasses.replace(pending, code=response.status))
        return response

    async def _serve(
        self,
        *,
        request: rendering.Request,
        raw: aiohttp.web.BaseRequest,
        path: K8sPath | None,
        verb: str,
        query: dict[str, str],
        body: bytes,
        data: Any,
        pending: ApiRequest,
    ) -> aiohttp.web.StreamResponse:
        user_response = await self._user_reaction(request)
        if user_response is not None:
            return user_response
        if path is None or path.plural is None:
            if raw.path in ("/healthz", "/readyz", "/livez"):
                return aiohttp.web.Response(text="ok")
            # Discovery and /version go through kmock's scaffold routes (overridden below).
            return await kmock.KubernetesScaffold._handle(self, request)
        store = self.store
        res = store.resource(path.group, path.version, path.plural)
        if path.subresource and path.subresource not in res.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if body and data is None and verb in ("create", "update", "patch"):
            raise bad_request("the request body is not valid JSON")
        dry_run = bool(query.get("dryRun"))
        store.warnings = []
        if verb == "watch":
            return await self._watch(raw, res, path, query, pending)
        if verb == "list":
            return self._list(res, path, query)
        if verb == "get":
            if path.subresource == "log":
                text = (
                    self.log_provider(path.namespace or "", path.name or "", query)
                    if self.log_provider
                    else None
                )
                if text is None:
                    store.get(res, path.namespace, path.name or "")  # 404 if the pod is unknown
                    text = ""
                return aiohttp.web.Response(text=text, content_type="text/plain")
            return _json(store.get(res, path.namespace, path.name or ""))
        if verb == "create":
            if path.name is not None:
                return await self._create_subresource(res, path, data)
            obj = store.create(res, path.namespace, data, dry_run=dry_run)
            return _json(store.present(res, obj), 201, warnings=store.warnings)
        if verb == "update":
            obj = store.replace(
                res,
                path.namespace,
                path.name or "",
                data,
                subresource=path.subresource,
                dry_run=dry_run,
            )
            return _json(store.present(res, obj), warnings=store.warnings)
        if verb == "patch":
            content_type = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
            obj = store.patch(
                res,
                path.namespace,
                path.name or "",
                content_type,
                data,
                subresource=path.subresource,
                dry_run=dry_run,
            )
            return _json(store.present(res, obj), warnings=store.warnings)
        if verb == "delete":
            options = DeleteOptions.parse(data, query)
            last, gone = store.delete(res, path.namespace, path.name or "", options)
            if gone and not (res.is_custom or res.plural == "pods"):
                result: dict[str, Any] = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": path.name,
                        "group": res.group,
                        "kind": res.plural,
                        "uid": last["metadata"]["uid"],
                    },
                }
                return _json(result, warnings=store.warnings)
            return _json(store.present(res, last), warnings=store.warnings)
        if verb == "deletecollection":
            options = DeleteOptions.parse(data, query)
            labels, fields = self._selectors(res, query)
            deleted = store.delete_collection(res, path.namespace, labels, fields, options)
            return _json(
                {
                    "kind": f"{res.kind}List",
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(store.rv)},
                    "items": [_for_list(res, obj) for obj in deleted],
                },
                warnings=store.warnings,
            )
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    async def _user_reaction(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """Serve a reaction a test added with kmock's DSL (``emulator['get /x'] << ...``)."""
        user = self._payloads[self._builtin_reactions :]
        if not user:
            return None
        ordered = sorted(user, key=lambda p: tuple(-x for x in p.priorities))
        for payload in ordered:
            if any(math.isinf(p) and p < 0 for p in payload.priorities):
                continue  # fallbacks are the emulator's own job
            if payload._disabled.is_set():
                continue
            seen = _sees(payload._source, request)
            if seen is None:  # slices, groups...: only kmock's scan of its (bounded) log knows
                seen = request in payload._source
            if seen:
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        return None

    async def _create_subresource(
        self, res: ResourceDef, path: K8sPath, data: Any
    ) -> aiohttp.web.StreamResponse:
        """POST to pods/{name}/eviction and pods/{name}/binding."""
        store = self.store
        namespace, name = path.namespace or "", path.name or ""
        store.get(res, namespace, name)
        if path.subresource == "eviction":
            if self.eviction_handler is not None:
                await self.eviction_handler(namespace, name, data or {})
            else:
                store.delete(
                    res, namespace, name, DeleteOptions.parse((data or {}).get("deleteOptions"), {})
                )
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
                201,
            )
        if path.subresource == "binding":
            target = ((data or {}).get("target") or {}).get("name")
            if not target:
                raise bad_request("binding target is required")

            def bind(pod: dict[str, Any]) -> None:
                if pod["spec"].get("nodeName"):
                    raise conflict_bound(name, pod["spec"]["nodeName"])
                pod["spec"]["nodeName"] = target
                set_condition(pod.setdefault("status", {}), "PodScheduled", "True")

            store.mutate(res, namespace, name, bind, subresource="binding")
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
                201,
            )
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    # --- reads ---------------------------------------------------------------------------------

    def _selectors(
        self, res: ResourceDef, query: Mapping[str, str]
    ) -> tuple[LabelSelector, FieldSelector]:
        try:
            return (
                LabelSelector.parse(query.get("labelSelector")),
                FieldSelector.parse(query.get("fieldSelector"), res.group, res.plural),
            )
        except SelectorError as exc:
            raise bad_request(str(exc)) from None

    def _list(
        self, res: ResourceDef, path: K8sPath, query: Mapping[str, str]
    ) -> aiohttp.web.Response:
        labels, fields = self._selectors(res, query)
        objs = self.store.select(res, path.namespace, labels, fields)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if query.get("continue"):
            _, last = Store.decode_continue(query["continue"])
            objs = [
                o
                for o in objs
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > last
            ]
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(objs) > limit:
            page = objs[:limit]
            last_meta = page[-1]["metadata"]
            meta["continue"] = Store.encode_continue(
                self.store.rv, (last_meta.get("namespace", ""), last_meta["name"])
            )
            meta["remainingItemCount"] = len(objs) - limit
            objs = page
        return _json(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": meta,
                "items": [_for_list(res, obj) for obj in objs],
            }
        )

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        res: ResourceDef,
        path: K8sPath,
        query: Mapping[str, str],
        pending: ApiRequest,
    ) -> aiohttp.web.StreamResponse:
        """A watch stream: initial state or replay from a resourceVersion, then live events."""
        store = self.store
        labels, fields = self._selectors(res, query)
        name = path.name
        namespace = path.namespace

        def visible(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj.get("metadata", {})
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels.matches(meta.get("labels"))
                and fields.matches(obj)
            )

        def translate(event: WatchEvent) -> dict[str, Any] | None:
            now, before = visible(event.obj), visible(event.old)
            if event.type == "ADDED":
                kind = "ADDED" if now else None
            elif event.type == "DELETED":
                kind = "DELETED" if before or now else None
            elif now and before:
                kind = "MODIFIED"
            elif now:
                kind = "ADDED"
            elif before:
                kind = "DELETED"  # the object left the selection, as a real watch reports
            else:
                kind = None
            if kind is None:
                return None
            return {
                "type": kind,
                "object": {**event.obj, "apiVersion": res.api_version, "kind": res.kind},
            }

        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        rv_param = query.get("resourceVersion") or ""
        send_initial = query.get("sendInitialEvents") == "true"
        if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
            raise invalid_watch("sendInitialEvents requires resourceVersionMatch=NotOlderThan")

        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        unsubscribe = store.subscribe(res, queue.put_nowait)
        try:
            # Nothing awaits between subscribing and taking this snapshot, so no event is lost
            # or duplicated between the initial state and the live stream.
            initial: list[dict[str, Any]] = []
            expired: ApiError | None = None
            if send_initial or rv_param in ("", "0"):
                for obj in store.select(res, namespace, labels, fields):
                    if visible(obj):
                        initial.append(
                            {
                                "type": "ADDED",
                                "object": {**obj, "apiVersion": res.api_version, "kind": res.kind},
                            }
                        )
                if send_initial:
                    initial.append(self._bookmark(res, initial_end=True))
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    raise bad_request(f"invalid resource version: {rv_param!r}") from None
                try:
                    for event in store.events_since(res, since):
                        line = translate(event)
                        if line is not None:
                            initial.append(line)
                except ApiError as exc:
                    expired = exc

            response = aiohttp.web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.enable_chunked_encoding()
            await response.prepare(raw)
            # A watch is logged when it starts streaming, not when it ends minutes later.
            self.request_log.record(dataclasses.replace(pending, code=200))
            self._streams.add(response)
            try:
                if expired is not None:
                    await self._write(response, {"type": "ERROR", "object": expired.status()})
                    return response
                for line in initial:
                    await self._write(response, line)
                await self._stream_live(
                    response=response,
                    res=res,
                    queue=queue,
                    translate=translate,
                    timeout=timeout,
                    bookmarks=bookmarks,
                )
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass
            finally:
                self._streams.discard(response)
            return response
        finally:
            unsubscribe()

    async def _stream_live(
        self,
        *,
        response: aiohttp.web.StreamResponse,
        res: ResourceDef,
        queue: asyncio.Queue[WatchEvent],
        translate: Callable[[WatchEvent], dict[str, Any] | None],
        timeout: float,
        bookmarks: bool,
    ) -> None:
        assert self._closing is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while not self._closing.is_set():
                now = loop.time()
                if now >= deadline:
                    return
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, closing}, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if closing in done:
                        return
                    if bookmarks and loop.time() >= next_bookmark and queue.empty():
                        # Every committed event was written already, so resuming from the
                        # current version loses nothing.
                        await self._write(response, self._bookmark(res))
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                batch = [getter.result()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for event in batch:
                    line = translate(event)
                    if line is not None:
                        await self._write(response, line)
        finally:
            closing.cancel()

    def _bookmark(self, res: ResourceDef, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta},
        }

    @staticmethod
    async def _write(response: aiohttp.web.StreamResponse, line: Mapping[str, Any]) -> None:
        await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")

    async def close_streams(self) -> None:
        """End every open watch (server shutdown)."""
        if self._closing is None:
            self._closing = asyncio.Event()
        self._closing.set()
        for _ in range(100):
            if not self._streams:
                return
            await asyncio.sleep(0.01)

    # --- discovery (kmock scaffold routes) -----------------------------------------------------

    async def _serve_root(self, request: rendering.Request) -> rendering.Payload:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/readyz", "/livez"}
        for group, versions in self.store.registry.groups().items():
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{v}" for v in versions)
        return {"paths": sorted(paths)}

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0+emulated",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    async def _serve_api(self, request: rendering.Request) -> rendering.Payload:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}
            ],
        }

    def _group_body(self, group: str, versions: list[str]) -> dict[str, Any]:
        return {
            "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
        }

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        groups = self.store.registry.groups()
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group_body(g, vs) for g, vs in sorted(groups.items())],
        }

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource is not None else None
        versions = self.store.registry.groups().get(group or "")
        if not versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_body(group or "", versions)}

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version
        served = [r for r in self.store.registry.all() if r.group == group and r.version == version]
        if not served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [
                entry for res in sorted(served, key=lambda r: r.plural) for entry in res.discovery()
            ],
        }

    def iter_requests(self) -> Iterator[ApiRequest]:
        """The recorded requests (the bounded window)."""
        return iter(self.request_log.entries)


def _sees(view: Any, request: rendering.Request) -> bool | None:
    """Whether a plain chain of kmock filters admits this request, decided without scanning.

    kmock answers "is this request in the view?" by re-filtering its whole request log, which
    makes each request slower than the last. For chains of criteria filters (the common case)
    the answer depends on the request alone; None means "ask kmock" (slices, groups, ...).
    """
    while True:
        if isinstance(view, kmock.Root):
            return True
        if isinstance(view, kmock.Filter):
            if not view.criteria(request):
                return False
            view = view._source
        elif isinstance(view, kmock.Priority):
            view = view._source
        else:
            return None


def _kmock_resource(raw_path: str, path: K8sPath | None) -> kmock.resource | None:
    """The resource kmock's criteria and discovery routes see (also for ``/apis/{group}``)."""
    if path is not None:
        return kmock.resource(group=path.group, version=path.version, plural=path.plural)
    parts = [p for p in raw_path.split("/") if p]
    if len(parts) == 2 and parts[0] == "apis":
        return kmock.resource(group=parts[1])
    return None


def _kmock_action(verb: str) -> kmock.action | None:
    return {
        "list": kmock.action.LIST,
        "watch": kmock.action.WATCH,
        "get": kmock.action.FETCH,
        "create": kmock.action.CREATE,
        "update": kmock.action.UPDATE,
        "patch": kmock.action.UPDATE,
        "delete": kmock.action.DELETE,
    }.get(verb)


def conflict_bound(name: str, node: str) -> ApiError:
    """409 for binding a pod that is bound already."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on pods/binding "{name}": '
        f'pod {name} is already assigned to node "{node}"',
    )


def invalid_watch(message: str) -> ApiError:
    """422 for a watch request with inconsistent parameters."""
    return ApiError(422, "Invalid", message)


class ApiServer:
    """Serves an :class:`ApiEmulator` on 127.0.0.1 with a free port (aiohttp, no DNS patching)."""

    def __init__(self, emulator: ApiEmulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self.host = host
        self.port = port
        self._runner: aiohttp.web.ServerRunner | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ApiServer:
        await self.emulator.__aenter__()
        server = aiohttp.web.Server(self.emulator)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self.emulator.server_address = f"{self.host}:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.emulator.close_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.emulator.__aexit__(None, None, None)
