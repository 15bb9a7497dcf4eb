"""A test's view of a real control plane: its namespace, our kubelet, the fault proxy, helpers.

``Cluster`` gives a test synchronous helpers (create/get/list/patch/delete objects by resource
name, bounded waits), the operator's credentials (a token of deploy/'s ServiceAccount, through a
fault-injecting proxy), what the operator asked of the API (from the API server's audit log) and
the node knobs of our kubelet.

Two shapes: :func:`start_cluster` starts a control plane, installs the project (CRDs, deploy/'s
RBAC) and our kubelet with its nodes; :meth:`Cluster.view` is another test's view of the same
cluster with a namespace of its own, so tests that leave the nodes alone share one cluster.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar

import yaml

from .apiclient import MERGE_PATCH, ApiError, SyncApi
from .controlplane import ControlPlane, kubeconfig
from .faultproxy import Fault, FaultProxy
from .kubelet import Kubelet, KubeletSettings, NodeSpec, default_nodes, schedulable

__all__ = ["OPERATOR_ACCOUNT", "ApiError", "Cluster", "Resource", "load_documents"]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
# What `kubectl apply -k deploy/` would install before the operator's Deployment.
PROJECT_MANIFESTS = ("00-namespace.yaml", "10-kopf-peering-crds.yaml", "crd.yaml", "20-rbac.yaml")
OPERATOR_NAMESPACE = "microtask-system"
OPERATOR_ACCOUNT = "microtask-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass(frozen=True)
class Resource:
    """A served resource, as discovery names it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


class Discovery:
    """Resource names (plural, kind, short names, ``plural.group``) to served resources."""

    def __init__(self, api: SyncApi) -> None:
        self._api = api
        self._by_name: dict[str, Resource] = {}
        self._by_kind: dict[tuple[str, str], Resource] = {}

    def refresh(self) -> None:
        versions = [("", "v1")]
        for group in self._api.request("GET", "/apis")["groups"]:
            versions.append((group["name"], group["preferredVersion"]["version"]))
        for group, version in versions:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            with contextlib.suppress(ApiError):
                for item in self._api.request("GET", path)["resources"]:
                    if "/" in item["name"]:
                        continue
                    res = Resource(
                        group,
                        version,
                        item["name"],
                        item["kind"],
                        item["namespaced"],
                        tuple(item.get("shortNames") or ()),
                    )
                    self._by_kind[(res.api_version, res.kind)] = res
                    names = [res.plural, res.kind.lower(), *res.short_names]
                    names += [f"{res.plural}.{group}" if group else res.plural]
                    for name in names:
                        # The preferred version of the core group wins over aggregated copies.
                        self._by_name.setdefault(name.lower(), res)

    def find(self, ref: str) -> Resource:
        for attempt in range(2):
            res = self._by_name.get(ref.lower())
            if res is not None:
                return res
            if attempt == 0:
                self.refresh()
        raise KeyError(f"no served resource is called {ref!r}")

    def of(self, obj: Mapping[str, Any]) -> Resource:
        key = (str(obj.get("apiVersion", "v1")), str(obj.get("kind", "")))
        for attempt in range(2):
            if key in self._by_kind:
                return self._by_kind[key]
            if attempt == 0:
                self.refresh()
        raise KeyError(f"no served resource has apiVersion {key[0]} and kind {key[1]}")


@dataclass
class Shared:
    """What the views of one cluster share."""

    plane: ControlPlane
    kubelet: Kubelet
    api: SyncApi
    discovery: Discovery
    operator_token: str


class Cluster:
    """One test's view: a namespace of its own, a fault proxy of its own, shared nodes."""

    def __init__(self, shared: Shared, namespace: str) -> None:
        self.shared = shared
        self.namespace = namespace
        self.proxy = FaultProxy(shared.plane.url, ca_file=shared.plane.ca_file).start()
        self._tmp = tempfile.TemporaryDirectory(prefix="microtask-view-")
        self.kubeconfig = Path(self._tmp.name) / "admin.kubeconfig"
        self.kubeconfig.write_text(
            kubeconfig(
                self.url,
                shared.plane.identities["admin"].token,
                shared.plane.ca_file,
                namespace=namespace,
            )
        )
        self.operator_kubeconfig = Path(self._tmp.name) / "operator.kubeconfig"
        self.operator_kubeconfig.write_text(
            kubeconfig(self.proxy.url, shared.operator_token, None, namespace=namespace)
        )
        self._mark = shared.plane.audit_position()

    # --- lifecycle -----------------------------------------------------------------------------

    def view(
        self, namespace: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> Cluster:
        """Another view of this cluster, with a new namespace (created and ready)."""
        namespace = namespace or f"t-{secrets.token_hex(4)}"
        create_namespace(self.shared, namespace, labels)
        return Cluster(self.shared, namespace)

    def close(self) -> None:
        """Stop the proxy and delete the namespace (in the background, as kubectl does)."""
        self.proxy.stop()
        with contextlib.suppress(ApiError):
            self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}")
        self._tmp.cleanup()

    @property
    def plane(self) -> ControlPlane:
        return self.shared.plane

    @property
    def kubelet(self) -> Kubelet:
        return self.shared.kubelet

    @property
    def api(self) -> SyncApi:
        return self.shared.api

    @property
    def url(self) -> str:
        return self.shared.plane.url

    def api_client(self) -> Any:
        """An official ``kubernetes`` ApiClient, as the admin."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.plane.ca_file)
        configuration.api_key = {"BearerToken": self.plane.identities["admin"].token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    # --- objects -------------------------------------------------------------------------------

    def resource(self, ref: str) -> Resource:
        """``pods``, ``Job``, ``jobs.batch``, ``mtj``, ..."""
        return self.shared.discovery.find(ref)

    def _ns(self, res: Resource, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if res.namespaced else None

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object (its resource from apiVersion/kind) in the test's namespace."""
        res = self.shared.discovery.of(obj)
        ns = self._ns(res, namespace or (obj.get("metadata") or {}).get("namespace"))
        body = dict(obj)
        if ns:
            body["metadata"] = {**(obj.get("metadata") or {}), "namespace": ns}
        created: dict[str, Any] = self.api.request("POST", res.path(ns), body)
        return created

    def apply_file(self, path: Path) -> None:
        """Create every object of a YAML file (replacing those that exist)."""
        apply(self.api, self.shared.discovery, load_documents(path), namespace=self.namespace)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """An object, or None."""
        res = self.resource(resource)
        try:
            obj: dict[str, Any] = self.api.request("GET", res.path(self._ns(res, namespace), name))
        except ApiError as error:
            if error.code == 404:
                return None
            raise
        return obj

    def list(
        self,
        resource: str,
        namespace: str | EllipsisType | None = ...,
        labels: str | None = None,
        fields: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Objects of a resource: in the test's namespace, another, or all (``None``)."""
        res = self.resource(resource)
        ns = self.namespace if namespace is ... else namespace
        params = {"labelSelector": labels, "fieldSelector": fields}
        listing = self.api.request(
            "GET", res.path(self._ns(res, ns) if ns else None), params=params
        )
        items: builtins.list[dict[str, Any]] = listing.get("items") or []
        for item in items:  # list items carry no type; callers and dumps want it
            item.setdefault("kind", res.kind)
            item.setdefault("apiVersion", res.api_version)
        return items

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        patch_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        """Patch an object (merge patch by default)."""
        res = self.resource(resource)
        path = res.path(self._ns(res, namespace), name)
        if subresource:
            path += f"/{subresource}"
        patched: dict[str, Any] = self.api.request("PATCH", path, patch, content_type=patch_type)
        return patched

    def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str | None = "Background",
        grace: int | None = None,
        missing_ok: bool = True,
    ) -> None:
        """Delete an object (Background propagation by default, as kubectl does)."""
        res = self.resource(resource)
        body: dict[str, Any] = {}
        if propagation:
            body["propagationPolicy"] = propagation
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.api.request("DELETE", res.path(self._ns(res, namespace), name), body or None)
        except ApiError as error:
            if not (missing_ok and error.code == 404):
                raise

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.1,
        message: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that (bounded)."""
        deadline = time.monotonic() + timeout
        last: T = predicate()
        while not last:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {message}; last value: {last!r}"
                )
            time.sleep(interval)
            last = predicate()
        return last

    def wait_gone(
        self, resource: str, name: str, namespace: str | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until an object no longer exists."""
        self.wait_for(
            lambda: self.get(resource, name, namespace) is None,
            timeout,
            message=f"{resource}/{name} to be gone",
        )

    # --- what the operator asked (audit log) and faults (proxy) --------------------------------

    def mark(self) -> int:
        """A position in the audit log, for ``since=`` below."""
        return self.plane.audit_position()

    def operator_requests(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        """Audit events of the operator's ServiceAccount since the mark (default: this view)."""
        for event in self.plane.audit_events(self._mark if since is None else since):
            if event.get("user", {}).get("username") == OPERATOR_USER:
                yield event

    def request_list(
        self,
        verb: str | None = None,
        resource: str | None = None,
        *,
        since: int | None = None,
        code: int | None = None,
        namespace: str | None = None,
        subresource: str | EllipsisType | None = ...,
    ) -> builtins.list[dict[str, Any]]:
        """The operator's requests that match (all namespaces unless ``namespace``)."""
        found = []
        for event in self.operator_requests(since):
            ref = event.get("objectRef") or {}
            if (
                (verb is None or event["verb"] == verb)
                and (resource is None or ref.get("resource") == resource)
                and (code is None or (event.get("responseStatus") or {}).get("code") == code)
                and (namespace is None or ref.get("namespace") == namespace)
                and (subresource is ... or ref.get("subresource") == subresource)
            ):
                found.append(event)
        return found

    def count_requests(
        self, verb: str | None = None, resource: str | None = None, **kw: Any
    ) -> int:
        """How many of the operator's requests match."""
        return len(self.request_list(verb, resource, **kw))

    def count_writes(
        self, resource: str | None = None, *, since: int | None = None
    ) -> Counter[tuple[str, str, str | None]]:
        """The operator's writes by (verb, resource, subresource)."""
        return Counter(
            (e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource"))
            for e in self.request_list(resource=resource, since=since)
            if e["verb"] in WRITE_VERBS
        )

    def verbs_used(self, *, since: int | None = None) -> set[tuple[str, str, str]]:
        """(group, resource[/subresource], verb) of every call the operator made."""
        used = set()
        for event in self.operator_requests(since):
            ref = event.get("objectRef")
            if not ref:
                continue  # discovery and other non-resource URLs
            resource = ref["resource"] + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        return used

    def inject_fault(self, code: int, **kwargs: Any) -> Fault:
        """Answer the next matching requests of the operator with ``code`` (see FaultProxy)."""
        return self.proxy.inject_fault(code, **kwargs)

    def clear_faults(self) -> None:
        self.proxy.clear_faults()

    def cut_watches(self) -> int:
        """End every watch stream the operator has open (as an API server restart would)."""
        return self.proxy.cut_watches(abort=True)

    # --- node and pod knobs (our kubelet) ------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        self.kubelet.add_node(spec)

    def delete_node(self, name: str) -> None:
        self.kubelet.delete_node(name)

    def set_node_ready(self, name: str, ready: bool) -> None:
        self.kubelet.set_node_ready(name, ready)

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        self.kubelet.cordon(name, unschedulable)

    def set_node_capacity(self, name: str, **changes: Any) -> None:
        self.kubelet.set_node_capacity(name, **changes)

    def set_node_behaviour(self, name: str, **behaviour: Any) -> None:
        self.kubelet.set_node_behaviour(name, **behaviour)

    def evict_pod(self, name: str, namespace: str | None = None, **kwargs: Any) -> None:
        self.kubelet.evict(namespace or self.namespace, name, **kwargs)

    def oom_kill(self, name: str, namespace: str | None = None) -> None:
        self.kubelet.oom_kill(namespace or self.namespace, name)

    def pod_pid(self, name: str, namespace: str | None = None) -> int | None:
        return self.kubelet.pod_pid(namespace or self.namespace, name)

    def pod_log(self, name: str, namespace: str | None = None) -> str | None:
        return self.kubelet.pod_log(namespace or self.namespace, name)

    def running_processes(self) -> int:
        return self.kubelet.running_processes()

    # --- diagnostics ---------------------------------------------------------------------------

    def dump(self, resources: Sequence[str] = ("jobs", "pods")) -> str:
        """A compact text dump of the namespace's objects and the nodes, for failure messages."""
        lines = []
        for ref in (*resources, "nodes"):
            for obj in self.list(ref):
                meta, status = obj["metadata"], obj.get("status") or {}
                summary = {
                    k: status[k] for k in ("phase", "active", "succeeded", "failed") if k in status
                }
                node = (obj.get("spec") or {}).get("nodeName", "")
                conditions = [f"{c['type']}={c['status']}" for c in status.get("conditions") or []]
                lines.append(
                    f"{obj['kind']} {meta['name']} {node} {json.dumps(summary)} "
                    f"{' '.join(conditions)}"
                )
        return "\n".join(lines)


def apply(
    api: SyncApi,
    discovery: Discovery,
    docs: Iterable[Mapping[str, Any]],
    namespace: str | None = None,
) -> None:
    """Create each object, or replace it when it exists (CRDs are waited for until served)."""
    for doc in docs:
        res = discovery.of(doc)
        ns = ((doc.get("metadata") or {}).get("namespace") or namespace) if res.namespaced else None
        name = doc["metadata"]["name"]
        try:
            api.request("POST", res.path(ns), doc)
        except ApiError as error:
            if error.code != 409:
                raise
            current = api.request("GET", res.path(ns, name))
            body = {**doc, "metadata": {**doc["metadata"], **_version_of(current)}}
            api.request("PUT", res.path(ns, name), body)
        if doc.get("kind") == "CustomResourceDefinition":
            _wait_established(api, discovery, name)


def _version_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return {"resourceVersion": obj["metadata"]["resourceVersion"]}


def _wait_established(api: SyncApi, discovery: Discovery, name: str) -> None:
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = api.request("GET", path)
        conditions = {
            c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []
        }
        if conditions.get("Established") == "True":
            discovery.refresh()
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not established")


def create_namespace(
    shared: Shared, namespace: str, labels: Mapping[str, str] | None = None
) -> None:
    """A namespace whose default ServiceAccount exists (pods cannot be created before)."""
    metadata = {"name": namespace, "labels": dict(labels or {})}
    shared.api.request("POST", "/api/v1/namespaces", {"metadata": metadata})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError):
            shared.api.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            return
        time.sleep(0.1)
    raise TimeoutError(f"no default ServiceAccount in {namespace}")


def operator_token(api: SyncApi) -> str:
    """A token of deploy/'s ServiceAccount, as the operator's pod would mount."""
    path = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts/{OPERATOR_ACCOUNT}/token"
    review = api.request("POST", path, {"spec": {"expirationSeconds": 86400}})
    return str(review["status"]["token"])


@contextlib.contextmanager
def start_cluster(
    directory: Path,
    *,
    nodes: Sequence[NodeSpec] | None = None,
    settings: KubeletSettings | None = None,
    namespace: str = "default",
) -> Iterator[Cluster]:
    """A control plane with the project installed, our kubelet and its nodes; a view of it."""
    with ControlPlane(directory) as plane:
        admin = plane.identities["admin"].token
        api = SyncApi(plane.url, admin, plane.ca_file)
        discovery = Discovery(api)
        discovery.refresh()
        project = [
            doc for name in PROJECT_MANIFESTS for doc in load_documents(ROOT / "deploy" / name)
        ]
        apply(api, discovery, project)
        token = operator_token(api)
        kubelet = Kubelet(
            plane.url,
            plane.identities["kubelet"].token,
            plane.ca_file,
            default_nodes() if nodes is None else nodes,
            settings,
        ).start()
        shared = Shared(plane, kubelet, api, discovery, token)
        try:
            if namespace != "default":
                create_namespace(shared, namespace)
            cluster = Cluster(shared, namespace)
            try:
                wait_nodes_schedulable(cluster)
                yield cluster
            finally:
                cluster.proxy.stop()
        finally:
            kubelet.stop()


def wait_nodes_schedulable(cluster: Cluster, timeout: float = 30.0) -> None:
    """Until every node of the kubelet is Ready and free of the not-ready taint."""

    def ready() -> bool:
        return schedulable(cluster.list("nodes", None), cluster.kubelet.nodes)

    cluster.wait_for(ready, timeout, message="nodes Ready and schedulable")
