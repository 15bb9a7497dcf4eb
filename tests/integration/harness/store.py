"""The emulated API server's storage: objects, resource versions, watch history and the GC.

Everything here runs on the emulator's event loop and is synchronous, so one write is atomic
with respect to every reader and watcher (the way an etcd transaction is). HTTP handlers and
the fake control plane both write through these same methods, so validation, resource
versions, watch events and garbage collection are identical whoever writes.

What it models, because operators depend on it:

* one global, increasing ``resourceVersion`` (like etcd's revision), stamped on every object
  and every watch event; a per-resource event history lets a watch resume from a version
  without replaying everything, and answers 410 Gone once that history is compacted;
* ``uid``, ``creationTimestamp``, ``generation`` (bumped on spec changes only), no-op writes
  that change nothing and emit nothing;
* the status subresource split (main writes cannot touch status, status writes touch only
  status);
* finalizers and ``deletionTimestamp``; graceful pod deletion completed by the kubelet;
* ownerReference garbage collection with Background, Foreground and Orphan propagation
  (and batch/v1 Jobs defaulting to Orphan, with the server's warning, as a real server does);
* namespaces: objects need an existing namespace; deleting one deletes its content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import resources as builtin
from .patching import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from .resources import Registry, ResourceDef
from .schema import Cause, CompiledSchema, validate_metadata
from .selectors import FieldSelector, LabelSelector

__all__ = [
    "ApiError",
    "ObjKey",
    "Store",
    "WatchEvent",
    "now_iso",
]

logger = logging.getLogger(__name__)

SKey = tuple[str, str]  # storage key: (group, plural)
ObjKey = tuple[SKey, str, str]  # (storage key, namespace or "", name)

STALE_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
JOB_ORPHAN_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background "
    "to remove them or set propagationPolicy=Orphan to suppress this warning"
)


def now_iso(offset: float = 0.0) -> str:
    """RFC 3339 timestamp with second precision, as the API server writes metadata times."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API failure rendered as a ``kind: Status`` body with the matching HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The Status object a real server sends."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(res: ResourceDef, name: str) -> ApiError:
    """404 for a missing object, worded like the API server."""
    return ApiError(
        404,
        "NotFound",
        f'{res.qualified} "{name}" not found',
        details={"name": name, "group": res.group, "kind": res.plural},
    )


def conflict(res: ResourceDef, name: str, why: str | None = None) -> ApiError:
    """409 Conflict for a stale resourceVersion or a failed precondition."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.qualified} "{name}": ' + (why or STALE_MESSAGE),
        details={"name": name, "group": res.group, "kind": res.plural},
    )


def invalid(res: ResourceDef, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid with one cause per field, as the API server reports validation errors."""
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    listed = [f"{c.field}: {c.message}" for c in causes]
    text = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": res.group,
            "kind": res.kind,
            "causes": [c.as_dict() for c in causes],
        },
    )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class WatchEvent:
    """A change as watchers see it: ``obj`` is the new state (the last one for DELETED)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass
class _History:
    events: deque[WatchEvent]
    dropped_rv: int = 0  # newest rv no longer in ``events``: older watches must get 410


Listener = Callable[[WatchEvent], None]


@dataclass
class DeleteOptions:
    """What DELETE accepts, from the body (DeleteOptions) or the query string."""

    propagation: str | None = None
    grace: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, body: Any, query: Mapping[str, str]) -> DeleteOptions:
        """Merge query parameters and a DeleteOptions body (the body wins)."""
        opts = cls()
        if query.get("propagationPolicy"):
            opts.propagation = query["propagationPolicy"]
        if query.get("gracePeriodSeconds"):
            opts.grace = int(query["gracePeriodSeconds"])
        if query.get("orphanDependents") in ("true", "false"):
            opts.propagation = "Orphan" if query["orphanDependents"] == "true" else "Background"
        if query.get("dryRun"):
            opts.dry_run = True
        if isinstance(body, Mapping):
            if body.get("propagationPolicy"):
                opts.propagation = body["propagationPolicy"]
            if body.get("orphanDependents") is not None:
                opts.propagation = "Orphan" if body["orphanDependents"] else "Background"
            if body.get("gracePeriodSeconds") is not None:
                opts.grace = int(body["gracePeriodSeconds"])
            pre = body.get("preconditions") or {}
            opts.uid = pre.get("uid")
            opts.resource_version = pre.get("resourceVersion")
            if body.get("dryRun"):
                opts.dry_run = True
        if opts.propagation not in (None, "Background", "Foreground", "Orphan"):
            raise bad_request(f"propagationPolicy {opts.propagation!r} is not supported")
        return opts


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the server's generateName alphabet (no vowels)


@dataclass
class Store:
    """In-memory objects of every served resource, with the API server's write semantics."""

    history_limit: int = 20_000
    registry: Registry = field(default_factory=lambda: Registry(builtin.builtin_resources()))
    rv: int = 1000
    _objects: dict[SKey, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    _history: dict[SKey, _History] = field(default_factory=dict)
    _listeners: dict[SKey, list[Listener]] = field(default_factory=dict)
    _uids: dict[str, ObjKey] = field(default_factory=dict)
    _dependents: dict[str, set[ObjKey]] = field(default_factory=dict)
    _gc_deleted_owners: set[str] = field(default_factory=set)
    _gc_owner_checks: set[ObjKey] = field(default_factory=set)
    _gc_finalizing: set[ObjKey] = field(default_factory=set)
    _gc_wakeup: asyncio.Event | None = None
    warnings: list[str] = field(default_factory=list)  # per-request, read by the HTTP layer

    # --- lookups -------------------------------------------------------------------------------

    def resource(self, group: str, version: str, plural: str) -> ResourceDef:
        """A served resource or the server's 404 for unknown URLs."""
        res = self.registry.get(group, version, plural)
        if res is None:
            raise ApiError(
                404, "NotFound", "the server could not find the requested resource", details={}
            )
        return res

    def _res_for(self, skey: SKey) -> ResourceDef | None:
        group, plural = skey
        matches = [r for r in self.registry.all() if r.group == group and r.plural == plural]
        matches.sort(key=lambda r: not r.preferred)
        return matches[0] if matches else None

    def _bucket(self, res: ResourceDef) -> dict[tuple[str, str], dict[str, Any]]:
        return self._objects.setdefault(res.storage_key, {})

    def peek(self, res: ResourceDef, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object itself (shared: never mutate it) or None."""
        return self._bucket(res).get((namespace or "", name))

    def get(self, res: ResourceDef, namespace: str | None, name: str) -> dict[str, Any]:
        """A private copy of the object as served in ``res``'s version; 404 if absent."""
        obj = self.peek(res, namespace, name)
        if obj is None:
            raise not_found(res, name)
        return self.present(res, obj)

    @staticmethod
    def present(res: ResourceDef, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A copy labelled with the requested version (CRD versions share one storage)."""
        out = copy.deepcopy(dict(obj))
        out["apiVersion"] = res.api_version
        out["kind"] = res.kind
        return out

    def select(
        self,
        res: ResourceDef,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[dict[str, Any]]:
        """Stored objects (shared, do not mutate) matching the scope and selectors, key-ordered."""
        bucket = self._bucket(res)
        out = []
        for (ns, _name), obj in sorted(bucket.items()):
            if namespace is not None and ns != namespace:
                continue
            if labels and not labels.matches(obj.get("metadata", {}).get("labels")):
                continue
            if fields and not fields.matches(obj):
                continue
            out.append(obj)
        return out

    def uid_exists(self, uid: str) -> bool:
        """Whether an object with this uid exists (GC owner checks)."""
        return uid in self._uids

    # --- watch plumbing ------------------------------------------------------------------------

    def subscribe(self, res: ResourceDef, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` synchronously on every change of ``res``; returns the unsubscriber."""
        listeners = self._listeners.setdefault(res.storage_key, [])
        listeners.append(listener)

        def unsubscribe() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return unsubscribe

    def events_since(self, res: ResourceDef, rv: int) -> list[WatchEvent]:
        """Retained events newer than ``rv``; 410 Gone if some of them were compacted away."""
        history = self._history.setdefault(
            res.storage_key, _History(deque(maxlen=self.history_limit))
        )
        if rv < history.dropped_rv:
            raise ApiError(
                410,
                "Expired",
                f"too old resource version: {rv} ({history.dropped_rv})",
            )
        return [event for event in history.events if event.rv > rv]

    def compact(self) -> None:
        """Forget all watch history, as etcd compaction does (older watches then get 410)."""
        for history in self._history.values():
            history.events.clear()
            history.dropped_rv = self.rv
        for skey in self._objects:
            self._history.setdefault(
                skey, _History(deque(maxlen=self.history_limit))
            ).dropped_rv = self.rv

    def _emit(self, res: ResourceDef, event: WatchEvent) -> None:
        skey = res.storage_key
        history = self._history.setdefault(skey, _History(deque(maxlen=self.history_limit)))
        if len(history.events) == history.events.maxlen:
            history.dropped_rv = history.events[0].rv
        history.events.append(event)
        for listener in list(self._listeners.get(skey, ())):
            try:
                listener(event)
            except Exception:  # a broken listener must not break the write that triggered it
                logger.exception("watch listener failed")

    # --- the commit point ----------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _index_refs(
        self, key: ObjKey, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        for obj, add in ((old, False), (new, True)):
            if obj is None:
                continue
            for ref in obj.get("metadata", {}).get("ownerReferences") or []:
                uid = ref.get("uid")
                if not uid:
                    continue
                if add:
                    self._dependents.setdefault(uid, set()).add(key)
                else:
                    deps = self._dependents.get(uid)
                    if deps is not None:
                        deps.discard(key)
                        if not deps:
                            del self._dependents[uid]

    def _commit(
        self, res: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Store a new or changed object, stamp its resourceVersion, notify watchers."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "") if res.namespaced else ""
        key: ObjKey = (res.storage_key, ns, meta["name"])
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        self._bucket(res)[(ns, meta["name"])] = obj
        self._uids[meta["uid"]] = key
        self._index_refs(key, old, obj)
        if obj["metadata"].get("ownerReferences"):
            self._gc_owner_checks.add(key)
            self._wake_gc()
        self._emit(res, WatchEvent(rv, "MODIFIED" if old is not None else "ADDED", obj, old))
        if meta.get("deletionTimestamp") and (
            "foregroundDeletion" in (meta.get("finalizers") or ())
            or "orphan" in (meta.get("finalizers") or ())
            or (res.group, res.plural) == ("", "namespaces")
        ):
            self._gc_finalizing.add(key)
            self._wake_gc()
        return obj

    def _remove(self, res: ResourceDef, obj: dict[str, Any]) -> dict[str, Any]:
        """Remove an object for good: DELETED event with a fresh resourceVersion, then GC."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "") if res.namespaced else ""
        key: ObjKey = (res.storage_key, ns, meta["name"])
        final = copy.copy(obj)
        final["metadata"] = dict(meta, resourceVersion=str(self._next_rv()))
        self._bucket(res).pop((ns, meta["name"]), None)
        self._uids.pop(meta["uid"], None)
        self._index_refs(key, obj, None)
        if meta["uid"] in self._dependents:
            self._gc_deleted_owners.add(meta["uid"])
        self._wake_gc()
        self._emit(
            res, WatchEvent(int(final["metadata"]["resourceVersion"]), "DELETED", final, obj)
        )
        if res.crd_name is None and (res.group, res.plural) == (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ):
            self._unregister_crd(final)
        return final

    # --- create --------------------------------------------------------------------------------

    def _check_namespace(self, res: ResourceDef, namespace: str | None, *, creating: bool) -> str:
        if not res.namespaced:
            if namespace:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return ""
        if not namespace:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        ns_res = self.resource("", "v1", "namespaces")
        ns_obj = self.peek(ns_res, None, namespace)
        if ns_obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                details={"name": namespace, "kind": "namespaces"},
            )
        if creating and ns_obj["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} "
                "because it is being terminated",
                details={"name": namespace, "kind": "namespaces"},
            )
        return namespace

    def _generate_name(self, res: ResourceDef, namespace: str, prefix: str) -> str:
        base = prefix[:58]  # the server keeps room for 5 random characters within 63
        for _ in range(20):
            name = base + "".join(random.choice(_NAME_CHARS) for _ in range(5))
            if (namespace, name) not in self._bucket(res):
                return name
        raise ApiError(409, "AlreadyExists", f"could not generate a unique name from {prefix!r}")

    def create(
        self,
        res: ResourceDef,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        keep_status: bool = False,
    ) -> dict[str, Any]:
        """POST: validate, default and store a new object (409 if it exists)."""
        if not isinstance(body, Mapping):
            raise bad_request("the request body must be a JSON object")
        obj: dict[str, Any] = copy.deepcopy(dict(body))
        if obj.get("kind") and obj["kind"] != res.kind:
            raise bad_request(
                f"the kind in the data ({obj['kind']}) does not match "
                f"the expected kind ({res.kind})"
            )
        if obj.get("apiVersion") and obj["apiVersion"] != res.api_version:
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                f"API version ({res.api_version})"
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        body_ns = meta.get("namespace")
        if res.namespaced and namespace and body_ns and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match "
                "the namespace sent on the request"
            )
        ns = self._check_namespace(res, namespace or body_ns, creating=True)
        if res.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    res,
                    "",
                    [
                        Cause(
                            "FieldValueRequired",
                            "Required value: name or generateName is required",
                            "metadata.name",
                        )
                    ],
                )
            meta["name"] = self._generate_name(res, ns, meta["generateName"])
        name = meta["name"]
        for server_owned in (
            "uid",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ):
            meta.pop(server_owned, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["generation"] = 1
        if res.has_status and not keep_status:
            obj.pop("status", None)
        self._admit_create(res, obj)
        if (ns, name) in self._bucket(res):
            existing = self._bucket(res)[(ns, name)]
            message = f'{res.qualified} "{name}" already exists'
            if existing["metadata"].get("deletionTimestamp"):
                message = f"object is being deleted: {message}"
            raise ApiError(
                409,
                "AlreadyExists",
                message,
                details={"name": name, "group": res.group, "kind": res.plural},
            )
        if dry_run:
            return obj
        self._commit(res, obj, None)
        if (res.group, res.plural) == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(obj)
        return obj

    def _admit_create(self, res: ResourceDef, obj: dict[str, Any]) -> None:
        """Resource-specific defaulting and validation of a new object."""
        meta = obj["metadata"]
        causes: list[Cause] = []
        gr = (res.group, res.plural)
        if gr == ("", "namespaces"):
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif gr == ("batch", "jobs"):
            builtin.job_defaults(obj, meta["uid"])
            causes += builtin.validate_job(obj)
            obj.setdefault("status", {})
        elif gr == ("", "pods"):
            spec = obj.setdefault("spec", {})
            builtin.pod_spec_defaults(spec)
            causes += builtin.validate_pod_spec(spec, "spec")
            status = obj.setdefault("status", {})
            status.setdefault("phase", "Pending")
            status.setdefault("qosClass", _qos_class(spec))
        elif gr == ("apiextensions.k8s.io", "customresourcedefinitions"):
            causes += self._validate_crd(obj)
        elif gr == ("scheduling.k8s.io", "priorityclasses") and not isinstance(
            obj.get("value"), int
        ):
            causes.append(Cause("FieldValueRequired", "Required value", "value"))
        if res.schema is not None:
            pruned = res.schema.prune(obj)
            obj.clear()
            obj.update(res.schema.apply_defaults(pruned))
            causes += res.schema.validate(obj)
        causes += validate_metadata(
            meta, dns_label_name=gr in (("", "namespaces"), ("batch", "jobs"))
        )
        if causes:
            raise invalid(res, meta.get("name", ""), causes)

    # --- update / patch ------------------------------------------------------------------------

    def replace(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT: replace the object (or its status); a stale resourceVersion is a 409."""
        if not isinstance(body, Mapping):
            raise bad_request("the request body must be a JSON object")
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match "
                f"the name on the URL ({name})"
            )
        # Built-ins allow an unconditional PUT (no resourceVersion: last writer wins); custom
        # resources do not, as their strategy refuses unconditional updates.
        if not meta.get("resourceVersion") and res.is_custom:
            cause = Cause(
                "FieldValueInvalid",
                "Invalid value: 0: must be specified for an update",
                "metadata.resourceVersion",
            )
            raise invalid(res, name, [cause])
        return self._update(
            res,
            namespace,
            name,
            copy.deepcopy(dict(body)),
            subresource=subresource,
            dry_run=dry_run,
        )

    def patch(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH with a merge, JSON or strategic-merge patch (415 for unsupported types)."""
        current = self.peek(res, namespace, name)
        if current is None:
            raise not_found(res, name)
        base = copy.deepcopy(current)
        try:
            if patch_type == "application/merge-patch+json":
                new = apply_merge_patch(base, patch)
                if not isinstance(patch, Mapping):
                    raise PatchError("merge patch must be a JSON object", code=400)
            elif patch_type == "application/json-patch+json":
                new = apply_json_patch(base, patch)
            elif patch_type == "application/strategic-merge-patch+json":
                if res.is_custom:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types "
                        "include: application/json-patch+json, application/merge-patch+json, "
                        "application/apply-patch+yaml",
                    )
                new = apply_strategic_merge_patch(base, patch)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json"
                    f"{'' if res.is_custom else ', application/strategic-merge-patch+json'}",
                )
        except PatchError as exc:
            if exc.code == 400:
                raise bad_request(exc.message) from None
            raise ApiError(
                422,
                "Invalid",
                exc.message,
                details={"name": name, "group": res.group, "kind": res.plural},
            ) from None
        if not isinstance(new, dict):
            raise bad_request("the patched object is not a JSON object")
        # A patch that does not mention resourceVersion must not trip the optimistic check.
        new.setdefault("metadata", {})
        if not isinstance(new["metadata"], dict):
            raise bad_request("metadata must be an object")
        new["metadata"].setdefault("resourceVersion", current["metadata"]["resourceVersion"])
        return self._update(res, namespace, name, new, subresource=subresource, dry_run=dry_run)

    def _update(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        new: dict[str, Any],
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> dict[str, Any]:
        old = self.peek(res, namespace, name)
        if old is None:
            raise not_found(res, name)
        old_meta = old["metadata"]
        given_rv = (new.get("metadata") or {}).get("resourceVersion")
        if given_rv and str(given_rv) != old_meta["resourceVersion"]:
            raise conflict(res, name)
        if subresource == "status":
            status_given = "status" in new
            status = new.get("status")
            new = copy.deepcopy(old)
            if status_given:
                new["status"] = status
            else:
                new.pop("status", None)
        elif subresource == "binding":
            # The binding subresource (the scheduler's write) sets the node and the
            # PodScheduled condition together, and nothing else.
            node_name = (new.get("spec") or {}).get("nodeName")
            status = new.get("status")
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["nodeName"] = node_name
            if status is not None:
                new["status"] = status
        elif subresource is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        elif res.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta = new.setdefault("metadata", {})
        if (
            meta.get("namespace")
            and res.namespaced
            and meta["namespace"] != old_meta.get("namespace")
        ):
            raise bad_request("the namespace of the object does not match the namespace on the URL")
        for fixed in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
            "generateName",
        ):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        causes: list[Cause] = []
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                causes.append(
                    Cause(
                        "FieldValueForbidden",
                        "Forbidden: no new finalizers can be added if the object is being deleted, "
                        f"found new finalizers {sorted(added)}",
                        "metadata.finalizers",
                    )
                )
        gr = (res.group, res.plural)
        if subresource is None:
            if gr == ("batch", "jobs"):
                causes += builtin.job_update_causes(old, new)
                causes += builtin.validate_job(new)
            elif gr == ("", "pods"):
                causes += builtin.pod_update_causes(old, new)
        if res.schema is not None:
            pruned = res.schema.prune(new)
            new = res.schema.apply_defaults(pruned)
            meta = new["metadata"]
            causes += res.schema.validate(new)
        causes += validate_metadata(
            meta, dns_label_name=gr in (("", "namespaces"), ("batch", "jobs"))
        )
        if causes:
            raise invalid(res, name, causes)
        if _spec_of(new, res) != _spec_of(old, res):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == old:  # a no-op write: no new resourceVersion, no watch event (as etcd)
            return old
        if dry_run:
            return new
        self._commit(res, new, old)
        if gr == ("apiextensions.k8s.io", "customresourcedefinitions") and subresource is None:
            self._register_crd(new)
        self._maybe_finish_deletion(res, new)
        return new

    def _maybe_finish_deletion(
        self, res: ResourceDef, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        """An object being deleted goes away once its finalizers are gone (and its grace over)."""
        meta = obj["metadata"]
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            return self._remove(res, obj)
        return None

    def mutate(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        fn: Callable[[dict[str, Any]], None],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """Read-modify-write for in-process writers (the control plane); None if absent."""
        current = self.peek(res, namespace, name)
        if current is None:
            return None
        new = copy.deepcopy(current)
        fn(new)
        return self._update(res, namespace, name, new, subresource=subresource, dry_run=False)

    # --- delete --------------------------------------------------------------------------------

    def delete(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        options: DeleteOptions | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """DELETE: returns (the object's last state, whether it is gone already)."""
        opts = options or DeleteOptions()
        old = self.peek(res, namespace, name)
        if old is None:
            raise not_found(res, name)
        meta = old["metadata"]
        if opts.uid and opts.uid != meta["uid"]:
            raise conflict(
                res,
                name,
                f"Precondition failed: UID in precondition: {opts.uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        if opts.resource_version and opts.resource_version != meta["resourceVersion"]:
            raise conflict(
                res,
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{opts.resource_version}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        policy = opts.propagation
        if policy is None and (res.group, res.version, res.plural) == ("batch", "v1", "jobs"):
            policy = "Orphan"  # batch/v1 keeps the legacy default, with this warning
            self.warnings.append(JOB_ORPHAN_WARNING)
        policy = policy or "Background"
        is_pod = (res.group, res.plural) == ("", "pods")
        if meta.get("deletionTimestamp"):
            # Already terminating: only a forced (grace 0) pod deletion changes anything.
            if is_pod and opts.grace == 0 and meta.get("deletionGracePeriodSeconds"):
                if opts.dry_run:
                    return old, False
                new = copy.deepcopy(old)
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self._commit(res, new, old)
                gone = self._maybe_finish_deletion(res, new)
                return (gone or new), gone is not None
            return copy.deepcopy(old), False
        new = copy.deepcopy(old)
        new_meta = new["metadata"]
        finalizers = list(new_meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        grace = 0
        if (
            is_pod
            and (old.get("spec") or {}).get("nodeName")
            and (old.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ):
            grace = (
                opts.grace
                if opts.grace is not None
                else int((old.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            )
        if (res.group, res.plural) == ("", "namespaces"):
            new.setdefault("status", {})["phase"] = "Terminating"
        if finalizers or grace > 0 or (res.group, res.plural) == ("", "namespaces"):
            if opts.dry_run:
                return new, False
            new_meta["finalizers"] = finalizers
            if not finalizers:
                new_meta.pop("finalizers")
            new_meta["deletionTimestamp"] = now_iso(grace)
            new_meta["deletionGracePeriodSeconds"] = grace
            if res.is_custom:
                new_meta["generation"] = int(new_meta.get("generation", 1)) + 1
            self._commit(res, new, old)
            return copy.deepcopy(new), False
        if opts.dry_run:
            return new, False
        return self._remove(res, old), True

    def delete_collection(
        self,
        res: ResourceDef,
        namespace: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        options: DeleteOptions | None = None,
    ) -> list[dict[str, Any]]:
        """DELETE on a collection URL: delete every matching object."""
        deleted = []
        for obj in list(self.select(res, namespace, labels, fields)):
            meta = obj["metadata"]
            try:
                last, _ = self.delete(res, meta.get("namespace"), meta["name"], options)
                deleted.append(last)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return deleted

    # --- custom resource definitions -----------------------------------------------------------

    def _validate_crd(self, crd: Mapping[str, Any]) -> list[Cause]:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group")
        causes: list[Cause] = []
        if not group:
            causes.append(Cause("FieldValueRequired", "Required value", "spec.group"))
        if not names.get("plural"):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.names.plural"))
        if not names.get("kind"):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.names.kind"))
        if (
            group
            and names.get("plural")
            and crd["metadata"].get("name") != f"{names['plural']}.{group}"
        ):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    'Invalid value: must be spec.names.plural+"."+spec.group',
                    "metadata.name",
                )
            )
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(
                Cause(
                    "FieldValueNotSupported",
                    'Unsupported value: supported values: "Cluster", "Namespaced"',
                    "spec.scope",
                )
            )
        versions = spec.get("versions") or []
        if not versions:
            causes.append(Cause("FieldValueRequired", "Required value", "spec.versions"))
        if sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    "Invalid value: must have exactly one version marked as storage version",
                    "spec.versions",
                )
            )
        for index, version in enumerate(versions):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema is None:
                causes.append(
                    Cause(
                        "FieldValueRequired",
                        "Required value: schemas are required",
                        f"spec.versions[{index}].schema.openAPIV3Schema",
                    )
                )
                continue
            try:
                CompiledSchema(schema)
            except Exception as exc:  # jsonschema.SchemaError and friends
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"Invalid value: {exc}",
                        f"spec.versions[{index}].schema.openAPIV3Schema",
                    )
                )
        return causes

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        crd_name = crd["metadata"]["name"]
        self.registry.remove_crd(crd_name)
        served = [v for v in spec["versions"] if v.get("served", True)]
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        for version in served:
            subresources = tuple(sorted((version.get("subresources") or {}).keys()))
            self.registry.add(
                ResourceDef(
                    group=spec["group"],
                    version=version["name"],
                    plural=names["plural"],
                    kind=names["kind"],
                    namespaced=spec["scope"] == "Namespaced",
                    singular=names.get("singular") or names["kind"].lower(),
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    subresources=subresources,
                    schema=CompiledSchema(version["schema"]["openAPIV3Schema"]),
                    crd_name=crd_name,
                    preferred=version["name"] == storage,
                    printer_columns=list(version.get("additionalPrinterColumns") or []),
                )
            )
        # A real server reports readiness through conditions; write them like it does.
        crd_res = self.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        accepted = dict(names.items())
        accepted.setdefault("singular", names["kind"].lower())
        accepted.setdefault("listKind", f"{names['kind']}List")
        status = {
            "acceptedNames": accepted,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now_iso(),
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now_iso(),
                },
            ],
            "storedVersions": [storage],
        }
        if crd.get("status", {}).get("acceptedNames") != accepted:
            self.mutate(
                crd_res,
                None,
                crd_name,
                lambda o: o.__setitem__("status", status),
                subresource="status",
            )

    def _unregister_crd(self, crd: Mapping[str, Any]) -> None:
        gone = self.registry.remove_crd(crd["metadata"]["name"])
        if gone:
            res = gone[0]
            for obj in list(self._bucket(res).values()):
                self._remove(res, obj)

    # --- garbage collection --------------------------------------------------------------------

    def _wake_gc(self) -> None:
        if self._gc_wakeup is not None:
            self._gc_wakeup.set()

    async def run_gc(self, interval: float = 0.05) -> None:
        """The garbage collector and namespace controller: runs until cancelled."""
        self._gc_wakeup = asyncio.Event()
        while True:
            await wait_event(self._gc_wakeup, 1.0)
            self._gc_wakeup.clear()
            # Like the real GC, act a moment after the change rather than inside the write.
            await asyncio.sleep(interval)
            try:
                self.gc_pass()
            except Exception:
                logger.exception("garbage collection pass failed")

    def gc_pass(self) -> None:
        """One round of garbage collection (also callable directly in tests)."""
        owners, self._gc_deleted_owners = self._gc_deleted_owners, set()
        for uid in owners:
            for key in list(self._dependents.get(uid, ())):
                self._collect_dependent(key, policy="Background")
        checks, self._gc_owner_checks = self._gc_owner_checks, set()
        for key in checks:
            self._collect_dependent(key, policy="Background")
        for key in list(self._gc_finalizing):
            if not self._finish_owner(key):
                continue
            self._gc_finalizing.discard(key)

    def _obj_at(self, key: ObjKey) -> tuple[ResourceDef, dict[str, Any]] | None:
        skey, ns, name = key
        res = self._res_for(skey)
        if res is None:
            return None
        obj = self._bucket(res).get((ns, name))
        return (res, obj) if obj is not None else None

    def _collect_dependent(self, key: ObjKey, policy: str) -> None:
        """Delete a dependent whose owners are all gone; drop references to vanished owners."""
        found = self._obj_at(key)
        if found is None:
            return
        res, obj = found
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return
        alive = [ref for ref in refs if self.uid_exists(ref.get("uid", ""))]
        if len(alive) == len(refs):
            return
        meta = obj["metadata"]
        if alive:

            def drop_dangling(o: dict[str, Any]) -> None:
                o["metadata"]["ownerReferences"] = alive

            self.mutate(res, meta.get("namespace"), meta["name"], drop_dangling)
        elif not meta.get("deletionTimestamp"):
            with contextlib.suppress(ApiError):
                self.delete(
                    res, meta.get("namespace"), meta["name"], DeleteOptions(propagation=policy)
                )

    def _finish_owner(self, key: ObjKey) -> bool:
        """Progress a Foreground/Orphan/namespace deletion; True once nothing is left to do."""
        found = self._obj_at(key)
        if found is None:
            return True
        res, obj = found
        meta = obj["metadata"]
        uid = meta["uid"]
        finalizers = list(meta.get("finalizers") or [])
        deps = [self._obj_at(k) for k in list(self._dependents.get(uid, ()))]
        live_deps = [d for d in deps if d is not None]
        if "orphan" in finalizers:
            for dep_res, dep in live_deps:

                def unown(o: dict[str, Any], uid: str = uid) -> None:
                    refs = [
                        r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
                    ]
                    o["metadata"]["ownerReferences"] = refs
                    if not refs:
                        o["metadata"].pop("ownerReferences")

                self.mutate(
                    dep_res, dep["metadata"].get("namespace"), dep["metadata"]["name"], unown
                )
            self._remove_finalizer(res, obj, "orphan")
            return True
        if "foregroundDeletion" in finalizers:
            blocking = False
            for dep_res, dep in live_deps:
                dep_meta = dep["metadata"]
                ref = next(r for r in dep_meta.get("ownerReferences") or [] if r.get("uid") == uid)
                if ref.get("blockOwnerDeletion"):
                    blocking = True
                if not dep_meta.get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.delete(
                            dep_res,
                            dep_meta.get("namespace"),
                            dep_meta["name"],
                            DeleteOptions(
                                propagation="Foreground"
                                if ref.get("blockOwnerDeletion")
                                else "Background"
                            ),
                        )
            if blocking:
                return False
            self._remove_finalizer(res, obj, "foregroundDeletion")
            return True
        if (res.group, res.plural) == ("", "namespaces"):
            name = meta["name"]
            remaining = 0
            for skey, bucket in list(self._objects.items()):
                ns_res = self._res_for(skey)
                if ns_res is None or not ns_res.namespaced:
                    continue
                for (ns, obj_name), item in list(bucket.items()):
                    if ns != name:
                        continue
                    remaining += 1
                    if not item["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiError):
                            self.delete(
                                ns_res,
                                ns,
                                obj_name,
                                DeleteOptions(propagation="Background", grace=0),
                            )
            if remaining:
                return False
            self._remove(res, obj)
            return True
        return True

    def _remove_finalizer(self, res: ResourceDef, obj: dict[str, Any], finalizer: str) -> None:
        def drop(o: dict[str, Any]) -> None:
            o["metadata"]["finalizers"] = [
                f for f in o["metadata"].get("finalizers") or [] if f != finalizer
            ]
            if not o["metadata"]["finalizers"]:
                o["metadata"].pop("finalizers")

        self.mutate(res, obj["metadata"].get("namespace"), obj["metadata"]["name"], drop)

    # --- list pagination -----------------------------------------------------------------------

    @staticmethod
    def encode_continue(rv: int, last: tuple[str, str]) -> str:
        """An opaque continue token (the position after ``last``)."""
        raw = json.dumps({"rv": rv, "ns": last[0], "name": last[1]}).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
        """Inverse of ``encode_continue``; 400 for garbage."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            return int(data["rv"]), (str(data["ns"]), str(data["name"]))
        except (ValueError, KeyError, TypeError):
            raise bad_request("continue key is not valid") from None


def _spec_of(obj: Mapping[str, Any], res: ResourceDef) -> dict[str, Any]:
    """What ``generation`` tracks: everything but metadata (and status with a subresource)."""
    skip = {"metadata", "status"} if res.has_status or not res.is_custom else {"metadata"}
    skip |= {"apiVersion", "kind"}
    return {k: v for k, v in obj.items() if k not in skip}


def _qos_class(spec: Mapping[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort, from the containers' requests and limits."""
    containers = spec.get("containers") or []
    any_set = False
    guaranteed = bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for key in ("cpu", "memory"):
            if key not in limits or requests.get(key, limits.get(key)) != limits.get(key):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def set_condition(
    status: dict[str, Any],
    type_: str,
    value: str,
    reason: str | None = None,
    message: str | None = None,
) -> bool:
    """Set a status condition the way controllers do; True if anything changed.

    ``lastTransitionTime`` moves only when the condition's status flips.
    """
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    for condition in conditions:
        if condition.get("type") == type_:
            changed = (
                condition.get("status") != value
                or (reason is not None and condition.get("reason") != reason)
                or (message is not None and condition.get("message") != message)
            )
            if condition.get("status") != value:
                condition["lastTransitionTime"] = now_iso()
            condition["status"] = value
            if reason is not None:
                condition["reason"] = reason
            if message is not None:
                condition["message"] = message
            return changed
    condition = {
        "type": type_,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": now_iso(),
    }
    if reason is not None:
        condition["reason"] = reason
    if message is not None:
        condition["message"] = message
    conditions.append(condition)
    return True


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for an event at most ``timeout`` seconds.

    Unlike ``asyncio.wait_for`` on Python 3.11, ``asyncio.timeout`` never swallows a
    cancellation that races with the event, so loops built on this always stop.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
