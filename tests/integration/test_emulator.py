"""The API emulator behaves like a Kubernetes API server where clients can tell the difference.

Each test pins down one behaviour kmock's stock emulator lacked (or one a real server has
and operators rely on), mostly through the official ``kubernetes`` client the operator uses,
and through raw HTTP where the wire format itself is the point. The last tests run a small
real kopf operator against the emulator and require it to handle each change exactly once
without logging a single warning.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.emulator import parse_k8s_path
from tests.integration.harness.kopf_runner import KopfRunner
from tests.integration.harness.store import ApiError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wd"],
            "categories": ["all"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 100},
                                    "color": {
                                        "type": "string",
                                        "enum": ["red", "green", "blue"],
                                        "default": "red",
                                    },
                                    "tags": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "maxItems": 3,
                                        "x-kubernetes-list-type": "set",
                                    },
                                    "extra": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def api(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """An API server with the Widget CRD and no control plane (nothing writes but the test)."""
    return cluster_factory(crds=[WIDGET_CRD], control_plane=False, bookmark_interval=0.2)


@pytest.fixture
def client(api: Cluster) -> Iterator[kubernetes.client.ApiClient]:
    with api.api_client() as api_client:
        yield api_client


def widget(name: str, size: Any = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.test/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **spec},
    }


def http(
    cluster: Cluster,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], Any]:
    """A raw request: (status, headers, JSON body or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cluster.url + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode()


def watch_events(cluster: Cluster, path: str, **params: str) -> list[dict[str, Any]]:
    """Every event of a watch that the server ends after ``timeoutSeconds``."""
    params.setdefault("timeoutSeconds", "1")
    query = urllib.parse.urlencode({"watch": "true", **params})
    with urllib.request.urlopen(f"{cluster.url}{path}?{query}", timeout=10) as response:
        return [json.loads(line) for line in response if line.strip()]


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


# --- identity, versions, timestamps ----------------------------------------------------------


def test_objects_get_uid_resource_version_timestamp_and_generation(
    client: kubernetes.client.ApiClient,
) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)
    created = custom.create_namespaced_custom_object(
        "example.test", "v1", "default", "widgets", widget("w", 2)
    )
    meta = created["metadata"]
    assert meta["uid"] and int(meta["resourceVersion"]) > 0
    assert time.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert meta["generation"] == 1

    labelled = custom.patch_namespaced_custom_object(
        "example.test", "v1", "default", "widgets", "w", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1, "metadata changes do not bump generation"
    assert int(labelled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    resized = custom.patch_namespaced_custom_object(
        "example.test", "v1", "default", "widgets", "w", {"spec": {"size": 3}}
    )
    assert resized["metadata"]["generation"] == 2

    same = custom.patch_namespaced_custom_object(
        "example.test", "v1", "default", "widgets", "w", {"spec": {"size": 3}}
    )
    assert same["metadata"]["resourceVersion"] == resized["metadata"]["resourceVersion"], (
        "a write that changes nothing is a no-op, as on a real server"
    )


def test_create_is_201_and_a_duplicate_is_409_with_a_status_body(api: Cluster) -> None:
    body = {"metadata": {"name": "cm"}, "data": {"k": "v"}}
    status, _, created = http(api, "POST", "/api/v1/namespaces/default/configmaps", body)
    assert status == 201 and created["metadata"]["name"] == "cm"

    status, _, error = http(api, "POST", "/api/v1/namespaces/default/configmaps", body)
    assert status == 409
    assert error["kind"] == "Status" and error["reason"] == "AlreadyExists"
    assert error["message"] == 'configmaps "cm" already exists'
    assert error["details"] == {"name": "cm", "group": "", "kind": "configmaps"}


def test_missing_objects_are_404_with_a_status_body(client: kubernetes.client.ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        kubernetes.client.BatchV1Api(client).read_namespaced_job("nope", "default")
    assert caught.value.status == 404
    body = status_of(caught.value)
    assert body["reason"] == "NotFound" and body["message"] == 'jobs.batch "nope" not found'
    assert body["details"]["kind"] == "jobs"


def test_namespaces_are_served_and_required(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system"} <= names
    assert core.read_namespace("default").status.phase == "Active"

    core.create_namespace({"metadata": {"name": "team-a"}})
    core.create_namespaced_config_map("team-a", {"metadata": {"name": "x"}})
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map("team-b", {"metadata": {"name": "x"}})
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "team-b" not found'


def test_namespace_deletion_removes_its_content(api: Cluster) -> None:
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}})
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "doomed")
    api.delete("namespaces", "doomed", None)
    assert (
        api.get("namespaces", "doomed", None) is None
        or (api.get("namespaces", "doomed", None) or {}).get("status", {}).get("phase")
        == "Terminating"
    )
    api.wait_gone("namespaces", "doomed", None)
    assert api.get("configmaps", "c", "doomed") is None


def test_generate_name_makes_unique_names(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    names = {
        core.create_namespaced_config_map(
            "default", {"metadata": {"generateName": "report-"}}
        ).metadata.name
        for _ in range(20)
    }
    assert len(names) == 20
    assert all(n.startswith("report-") and len(n) == len("report-") + 5 for n in names)


# --- updates ---------------------------------------------------------------------------------


def test_put_replaces_and_a_stale_resource_version_is_409(
    client: kubernetes.client.ApiClient,
) -> None:
    core = kubernetes.client.CoreV1Api(client)
    first = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    )
    first.data = {"b": "2"}
    replaced = core.replace_namespaced_config_map("cm", "default", first)
    assert replaced.data == {"b": "2"}

    first.data = {"c": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_config_map("cm", "default", first)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"

    first.metadata.resource_version = None  # built-ins accept an unconditional replace
    assert core.replace_namespaced_config_map("cm", "default", first).data == {"c": "3"}
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object("example.test", "v1", "default", "widgets", widget("w"))
    with pytest.raises(ApiException) as caught:  # custom resources do not
        custom.replace_namespaced_custom_object(
            "example.test", "v1", "default", "widgets", "w", widget("w", 2)
        )
    assert caught.value.status == 422


def test_status_subresource_separates_spec_and_status(
    client: kubernetes.client.ApiClient,
) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        "example.test", "v1", "default", "widgets", {**widget("w"), "status": {"x": 1}}
    )
    args = ("example.test", "v1", "default", "widgets", "w")
    created = custom.get_namespaced_custom_object(*args)
    assert "status" not in created, "status is ignored on create with a status subresource"

    main = custom.patch_namespaced_custom_object(*args, {"spec": {"size": 5}, "status": {"x": 2}})
    assert main["spec"]["size"] == 5 and "status" not in main

    status = custom.patch_namespaced_custom_object_status(
        *args, {"spec": {"size": 9}, "status": {"x": 3}}
    )
    assert status["status"] == {"x": 3} and status["spec"]["size"] == 5
    assert status["metadata"]["generation"] == 2, "status writes never bump generation"


def test_patch_flavours(client: kubernetes.client.ApiClient, api: Cluster) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "p", "labels": {"keep": "1", "drop": "1"}},
            "spec": {
                "containers": [
                    {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}]},
                    {"name": "b", "image": "img:1"},
                ]
            },
        },
    )
    # Strategic merge (the client's default for built-ins): containers merge by name.
    patched = core.patch_namespaced_pod(
        "p",
        "default",
        {
            "metadata": {"labels": {"drop": None}},
            "spec": {"containers": [{"name": "b", "image": "img:2"}]},
        },
    )
    assert [(c.name, c.image) for c in patched.spec.containers] == [("a", "img:1"), ("b", "img:2")]
    assert patched.metadata.labels == {"keep": "1"}

    # JSON patch: applied in order; a failed "test" is 422 (kopf relies on it), not 500.
    rv = patched.metadata.resource_version
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/labels/new", "value": "yes"},
    ]
    assert core.patch_namespaced_pod("p", "default", ops).metadata.labels["new"] == "yes"
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_pod("p", "default", ops)
    assert caught.value.status == 422

    # Custom resources refuse strategic merge patches, as the API server does.
    api.create(widget("w"))
    status, _, body = http(
        api,
        "PATCH",
        "/apis/example.test/v1/namespaces/default/widgets/w",
        {"spec": {"size": 2}},
        "application/strategic-merge-patch+json",
    )
    assert status == 415 and body["reason"] == "UnsupportedMediaType"
    status, _, body = http(
        api,
        "PATCH",
        "/apis/example.test/v1/namespaces/default/widgets/w",
        {"spec": {"size": 2}},
        "application/merge-patch+json",
    )
    assert status == 200 and body["spec"]["size"] == 2


# --- selectors -------------------------------------------------------------------------------


def test_label_selectors(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    for name, labels in {
        "a": {"tier": "gpu", "shard": "1"},
        "b": {"tier": "cpu", "shard": "2"},
        "c": {"tier": "cpu"},
        "d": {},
    }.items():
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        items = core.list_namespaced_config_map("default", label_selector=selector).items
        return sorted(i.metadata.name for i in items)

    assert names("tier=cpu") == ["b", "c"]
    assert names("tier==gpu") == ["a"]
    assert names("tier!=cpu") == ["a", "d"]
    assert names("tier in (gpu, cpu),shard") == ["a", "b"]
    assert names("tier notin (gpu)") == ["b", "c", "d"]
    assert names("!shard") == ["c", "d"]
    assert names("shard>1") == ["b"]
    with pytest.raises(ApiException) as caught:
        names("tier in (gpu")
    assert caught.value.status == 400


def test_field_selectors(client: kubernetes.client.ApiClient, api: Cluster) -> None:
    core = kubernetes.client.CoreV1Api(client)
    for name in ("p1", "p2"):
        core.create_namespaced_pod(
            "default",
            {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        )
    api.patch("pods", "p2", {"status": {"phase": "Running"}}, subresource="status")

    def names(selector: str) -> list[str]:
        items = core.list_namespaced_pod("default", field_selector=selector).items
        return sorted(i.metadata.name for i in items)

    assert names("metadata.name=p1") == ["p1"]
    assert names("status.phase=Running") == ["p2"]
    assert names("status.phase!=Running,metadata.namespace=default") == ["p1"]
    assert names("spec.nodeName=") == ["p1", "p2"], "unscheduled pods have an empty nodeName"
    with pytest.raises(ApiException) as caught:
        names("spec.image=x")
    assert caught.value.status == 400
    assert "field label not supported" in status_of(caught.value)["message"]


def test_list_pagination(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    for index in range(7):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"cm-{index}"}})
    seen, token = [], None
    while True:
        page = core.list_namespaced_config_map("default", limit=3, _continue=token)
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"cm-{i}" for i in range(7)]


# --- watches ---------------------------------------------------------------------------------


def test_watch_resumes_from_a_resource_version_without_replaying(api: Cluster) -> None:
    _, _, listing = http(api, "GET", "/api/v1/namespaces/default/configmaps")
    since = listing["metadata"]["resourceVersion"]
    for name in ("a", "b", "c"):
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    events = watch_events(api, "/api/v1/namespaces/default/configmaps", resourceVersion=since)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]
    last = events[-1]["object"]["metadata"]["resourceVersion"]
    assert watch_events(api, "/api/v1/namespaces/default/configmaps", resourceVersion=last) == []


def test_watch_with_the_python_client_sees_versions(
    client: kubernetes.client.ApiClient, api: Cluster
) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "early"}})
    watch = kubernetes.watch.Watch()
    seen: list[tuple[str, str]] = []

    def later() -> None:
        time.sleep(0.3)
        api.patch("configmaps", "early", {"data": {"x": "1"}})
        api.delete("configmaps", "early")

    thread = threading.Thread(target=later)
    thread.start()
    for event in watch.stream(core.list_namespaced_config_map, "default", timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            watch.stop()
    thread.join()
    assert seen == [("ADDED", "early"), ("MODIFIED", "early"), ("DELETED", "early")]
    assert int(watch.resource_version) > 0


def test_a_compacted_resource_version_is_410_gone(api: Cluster) -> None:
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    old = api.get("configmaps", "a")
    assert old is not None
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}})
    api.compact()
    events = watch_events(
        api,
        "/api/v1/namespaces/default/configmaps",
        resourceVersion=old["metadata"]["resourceVersion"],
    )
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_watch_honours_selectors_and_reports_objects_leaving_them(api: Cluster) -> None:
    api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"team": "a"}},
        }
    )
    since = api.get("configmaps", "x")["metadata"]["resourceVersion"]  # type: ignore[index]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "y", "labels": {"team": "b"}},
        }
    )
    api.patch("configmaps", "x", {"metadata": {"labels": {"team": "b"}}})
    api.patch("configmaps", "y", {"metadata": {"labels": {"team": "a"}}})
    events = watch_events(
        api, "/api/v1/namespaces/default/configmaps", resourceVersion=since, labelSelector="team=a"
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "x"),
        ("ADDED", "y"),
    ]


def test_watch_initial_events_and_bookmarks(api: Cluster) -> None:
    api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    events = watch_events(
        api,
        "/api/v1/namespaces/default/configmaps",
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    )
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # The stream then sends periodic bookmarks (every 0.2 s in this fixture) until it times out.
    assert sum(1 for e in events if e["type"] == "BOOKMARK") >= 3


# --- deletion, finalizers, garbage collection ------------------------------------------------


def test_finalizers_hold_an_object_until_removed(api: Cluster) -> None:
    api.create({**widget("w"), "metadata": {"name": "w", "finalizers": ["example.test/hold"]}})
    api.delete("widgets", "w")
    held = api.get("widgets", "w")
    assert held is not None and held["metadata"]["deletionTimestamp"]

    status, _, body = http(
        api,
        "PATCH",
        "/apis/example.test/v1/namespaces/default/widgets/w",
        {"metadata": {"finalizers": ["example.test/hold", "example.test/more"]}},
        "application/merge-patch+json",
    )
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.finalizers"

    api.patch("widgets", "w", {"metadata": {"finalizers": None}})
    assert api.get("widgets", "w") is None


def owned_config_map(name: str, owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "blockOwnerDeletion": block,
                }
            ],
        },
    }


def test_background_deletion_collects_dependents(api: Cluster) -> None:
    owner = api.create(widget("owner"))
    api.create(owned_config_map("child-1", owner))
    api.create(owned_config_map("child-2", owner))
    api.delete("widgets", "owner", propagation="Background")
    assert api.get("widgets", "owner") is None
    api.wait_for(lambda: not api.list("configmaps"), message="dependents to be collected")


def test_foreground_deletion_waits_for_blocking_dependents(api: Cluster) -> None:
    owner = api.create(widget("owner"))
    child = owned_config_map("child", owner, block=True)
    child["metadata"]["finalizers"] = ["example.test/slow"]
    api.create(child)
    api.delete("widgets", "owner", propagation="Foreground")
    api.wait_for(
        lambda: (api.get("configmaps", "child") or {}).get("metadata", {}).get("deletionTimestamp"),
        message="the dependent to be deleted first",
    )
    held = api.get("widgets", "owner")
    assert held is not None and "foregroundDeletion" in held["metadata"]["finalizers"]
    api.patch("configmaps", "child", {"metadata": {"finalizers": None}})
    api.wait_gone("widgets", "owner")


def test_orphan_deletion_keeps_dependents_without_the_reference(api: Cluster) -> None:
    owner = api.create(widget("owner"))
    api.create(owned_config_map("child", owner))
    api.delete("widgets", "owner", propagation="Orphan")
    api.wait_gone("widgets", "owner")
    child = api.get("configmaps", "child")
    assert child is not None and "ownerReferences" not in child["metadata"]


def test_dependents_of_a_missing_owner_are_collected(api: Cluster) -> None:
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost", "uid": "0000"}}
    api.create(owned_config_map("stray", ghost))
    api.wait_gone("configmaps", "stray")


def test_deleting_a_batch_v1_job_orphans_its_pods_by_default_with_a_warning(api: Cluster) -> None:
    job = api.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}
                }
            },
        }
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "j-pod",
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "j",
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }
    api.create(pod)
    status, headers, _ = http(api, "DELETE", "/apis/batch/v1/namespaces/default/jobs/j")
    assert status == 200
    assert "child pods are preserved by default" in headers.get("Warning", "")
    api.wait_gone("jobs", "j")
    orphan = api.wait_for(lambda: api.get("pods", "j-pod"), message="the pod")
    api.wait_for(
        lambda: "ownerReferences" not in (api.get("pods", "j-pod") or {"metadata": {}})["metadata"]
    )
    assert orphan is not None


def test_delete_options_from_the_python_client_are_honoured(
    client: kubernetes.client.ApiClient, api: Cluster
) -> None:
    batch = kubernetes.client.BatchV1Api(client)
    core = kubernetes.client.CoreV1Api(client)
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}
    for name in ("fg", "bg"):
        job = batch.create_namespaced_job(
            "default", {"metadata": {"name": name}, "spec": {"template": template}}
        )
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": job.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {
                    "name": f"{name}-pod",
                    "ownerReferences": [owner],
                    "finalizers": ["example.test/hold"],
                },
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        )
    options = kubernetes.client.V1DeleteOptions(propagation_policy="Foreground")
    batch.delete_namespaced_job("fg", "default", body=options)
    api.wait_for(lambda: (api.get("pods", "fg-pod") or {})["metadata"].get("deletionTimestamp"))
    assert batch.read_namespaced_job("fg", "default").metadata.finalizers == ["foregroundDeletion"]
    core.patch_namespaced_pod("fg-pod", "default", {"metadata": {"finalizers": None}})
    api.wait_gone("jobs", "fg")

    batch.delete_namespaced_job("bg", "default", propagation_policy="Background")
    with pytest.raises(ApiException):
        batch.read_namespaced_job("bg", "default")
    api.wait_for(lambda: (api.get("pods", "bg-pod") or {})["metadata"].get("deletionTimestamp"))


def test_jobs_are_defaulted_and_a_started_template_is_immutable(
    client: kubernetes.client.ApiClient,
) -> None:
    batch = kubernetes.client.BatchV1Api(client)
    job = batch.create_namespaced_job(
        "default",
        {
            "metadata": {"name": "j"},
            "spec": {
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}
                }
            },
        },
    )
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert job.spec.template.metadata.labels["job-name"] == "j"
    assert job.spec.backoff_limit == 6 and job.spec.completions == 1
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "j",
            "default",
            {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "other"}]}}}},
        )
    assert caught.value.status == 422
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "spec.template"

    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(
            "default",
            {
                "metadata": {"name": "bad"},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            },
        )
    assert (
        status_of(caught.value)["details"]["causes"][0]["field"]
        == "spec.template.spec.restartPolicy"
    )


def test_metadata_is_validated(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "ok", "labels": {"index-set": "0-99,120"}}}
        )
    assert caught.value.status == 422
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "metadata.labels"
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_config_map("default", {"metadata": {"name": "Not_A_Name"}})
    assert status_of(caught.value)["details"]["causes"][0]["field"] == "metadata.name"


# --- custom resources ------------------------------------------------------------------------


def test_crds_are_registered_and_discoverable(api: Cluster) -> None:
    _, _, groups = http(api, "GET", "/apis")
    assert "example.test" in {g["name"] for g in groups["groups"]}
    _, _, group = http(api, "GET", "/apis/example.test")
    assert group["preferredVersion"]["version"] == "v1"
    _, _, resources = http(api, "GET", "/apis/example.test/v1")
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["widgets"]["namespaced"] and by_name["widgets"]["shortNames"] == ["wd"]
    assert "widgets/status" in by_name
    _, _, core = http(api, "GET", "/api/v1")
    assert {"pods", "pods/status", "pods/eviction", "namespaces", "events"} <= {
        r["name"] for r in core["resources"]
    }
    crd = api.get("customresourcedefinitions", "widgets.example.test", None)
    assert crd is not None
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"

    api.create(widget("w"))
    api.delete("customresourcedefinitions", "widgets.example.test", None)
    status, _, _ = http(api, "GET", "/apis/example.test/v1/namespaces/default/widgets")
    assert status == 404


def test_custom_resources_are_validated_against_the_schema(
    client: kubernetes.client.ApiClient,
) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)

    def causes(body: dict[str, Any]) -> dict[str, str]:
        with pytest.raises(ApiException) as caught:
            custom.create_namespaced_custom_object("example.test", "v1", "default", "widgets", body)
        assert caught.value.status == 422
        status = status_of(caught.value)
        assert status["reason"] == "Invalid" and status["details"]["kind"] == "Widget"
        assert status["message"].startswith('Widget.example.test "w" is invalid: ')
        return {c["field"]: c["reason"] for c in status["details"]["causes"]}

    bad = widget("w")
    del bad["spec"]["size"]
    assert causes(bad) == {"spec.size": "FieldValueRequired"}
    assert causes(widget("w", size=0)) == {"spec.size": "FieldValueInvalid"}
    assert causes(widget("w", size="big")) == {"spec.size": "FieldValueTypeInvalid"}
    assert causes(widget("w", color="pink")) == {"spec.color": "FieldValueNotSupported"}
    assert causes(widget("w", tags=["a", "a"])) == {"spec.tags[1]": "FieldValueDuplicate"}
    assert causes(widget("w", size=0, color="pink")) == {
        "spec.color": "FieldValueNotSupported",
        "spec.size": "FieldValueInvalid",
    }


def test_crds_created_over_http_are_served(client: kubernetes.client.ApiClient) -> None:
    crd = json.loads(json.dumps(WIDGET_CRD).replace("widget", "gadget").replace("Widget", "Gadget"))
    kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(crd)
    custom = kubernetes.client.CustomObjectsApi(client)
    body = {
        "apiVersion": "example.test/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {"size": 1},
    }
    created = custom.create_namespaced_custom_object(
        "example.test", "v1", "default", "gadgets", body
    )
    assert created["spec"]["color"] == "red"
    resources = kubernetes.client.CustomObjectsApi(client).get_api_resources("example.test", "v1")
    assert {"widgets", "gadgets"} <= {r.name for r in resources.resources}


def test_the_project_crd_is_served_and_validates_the_examples(
    cluster_factory: Callable[..., Cluster],
) -> None:
    crd_file = ROOT / "deploy" / "crd.yaml"
    if not crd_file.exists():
        pytest.skip("deploy/crd.yaml is not generated yet")
    cluster = cluster_factory(crds=[crd_file], control_plane=False)
    examples = [
        doc
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "MicrotaskJob"
    ]
    for example in examples:
        created = cluster.create(example)
        assert created["metadata"]["generation"] == 1
    too_long = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": "x" * 46},
        "spec": examples[0]["spec"] if examples else {},
    }
    with pytest.raises(ApiError) as caught:
        cluster.create(too_long)
    assert "metadata.name" in {c["field"] for c in (caught.value.details or {})["causes"]}
    assert cluster.resource("mtj").plural == "microtaskjobs"


def test_the_kubeconfig_works_with_the_official_client(api: Cluster) -> None:
    with kubernetes.config.new_client_from_config(config_file=str(api.kubeconfig)) as client:
        namespaces = kubernetes.client.CoreV1Api(client).list_namespace()
    assert "default" in {ns.metadata.name for ns in namespaces.items}
    assert api.env["KUBECONFIG"] == str(api.kubeconfig)
    assert api.url.startswith("http://127.0.0.1:")


def test_custom_resources_are_pruned_and_defaulted(api: Cluster) -> None:
    created = api.create(widget("w", unknown="dropped", extra={"kept": {"deep": 1}}))
    assert "unknown" not in created["spec"]
    assert created["spec"]["extra"] == {"kept": {"deep": 1}}
    assert created["spec"]["color"] == "red"


def test_events_of_both_apis_are_accepted(client: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "w."},
            "involvedObject": {"kind": "Widget", "name": "w", "namespace": "default"},
            "reason": "Started",
            "message": "hello",
            "type": "Normal",
        },
    )
    events_v1 = kubernetes.client.EventsV1Api(client)
    events_v1.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "w."},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "test",
            "reportingInstance": "test-1",
            "action": "Run",
            "reason": "Started",
            "regarding": {"kind": "Widget", "name": "w", "namespace": "default"},
            "type": "Normal",
        },
    )
    assert len(core.list_namespaced_event("default", field_selector="reason=Started").items) == 1
    assert len(events_v1.list_namespaced_event("default").items) == 1


def test_dry_run_changes_nothing(client: kubernetes.client.ApiClient, api: Cluster) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "x"}}, dry_run="All")
    assert api.get("configmaps", "x") is None


# --- request log, faults, kmock ------------------------------------------------------------


def test_request_log_records_verbs_resources_and_codes(
    client: kubernetes.client.ApiClient, api: Cluster
) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)
    mark = api.mark()
    custom.create_namespaced_custom_object("example.test", "v1", "default", "widgets", widget("w"))
    custom.patch_namespaced_custom_object_status(
        "example.test", "v1", "default", "widgets", "w", {"status": {"x": 1}}
    )
    custom.list_namespaced_custom_object("example.test", "v1", "default", "widgets")
    with pytest.raises(ApiException):
        custom.get_namespaced_custom_object("example.test", "v1", "default", "widgets", "nope")
    custom.delete_namespaced_custom_object("example.test", "v1", "default", "widgets", "w")
    log = [
        (r.verb, r.resource, r.subresource, r.namespace, r.code)
        for r in api.request_list(since=mark)
    ]
    assert log == [
        ("create", "widgets", None, "default", 201),
        ("patch", "widgets", "status", "default", 200),
        ("list", "widgets", None, "default", 200),
        ("get", "widgets", None, "default", 404),
        ("delete", "widgets", None, "default", 200),
    ]
    assert api.count_writes(since=mark) == {
        ("create", "widgets", None): 1,
        ("patch", "widgets", "status"): 1,
        ("delete", "widgets", None): 1,
    }
    assert ("example.test", "widgets/status", "patch") in api.verbs_used(since=mark)


def test_injected_faults_fail_requests_without_side_effects(
    client: kubernetes.client.ApiClient, api: Cluster
) -> None:
    core = kubernetes.client.CoreV1Api(client)
    fault = api.inject_fault(500, times=2, verb="create", resource="configmaps")
    throttle = api.inject_fault(429, verb="list", resource="configmaps", retry_after=1)
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            core.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
        assert caught.value.status == 500
        assert api.get("configmaps", "x") is None
    core.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
    assert fault.hits == 2 and fault.remaining == 0

    status, headers, body = http(api, "GET", "/api/v1/namespaces/default/configmaps")
    assert status == 429 and headers["Retry-After"] == "1"
    assert body["details"]["retryAfterSeconds"] == 1 and throttle.hits == 1
    assert [r.code for r in api.request_list("create", "configmaps")] == [500, 500, 201]


def test_request_matching_does_not_slow_down_as_the_log_grows(api: Cluster) -> None:
    assert api.emulator is not None
    emulator = api.emulator
    # A test-defined kmock reaction keeps the DSL path (user reactions) in play.
    api.call(lambda: emulator["get", "/custom/thing"] << {"ok": True})
    connection = HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=10)

    def latencies(count: int) -> list[float]:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", "/api/v1/namespaces/default/configmaps")
            connection.getresponse().read()
            times.append(time.perf_counter() - started)
        return times

    early = statistics.median(latencies(100))
    latencies(2000)
    late = statistics.median(latencies(100))
    connection.close()
    # Medians shrug off scheduling noise; an O(log size) matcher would be ~20x slower here.
    assert late < early * 3 + 0.002, (early, late)
    assert len(api.call(lambda: list(emulator._requests))) <= emulator.kept_kmock_requests
    assert http(api, "GET", "/custom/thing")[2] == {"ok": True}
    assert api.call(lambda: api.requests.total) >= 2200


def test_kmock_reactions_can_override_resources(api: Cluster) -> None:
    assert api.emulator is not None
    emulator = api.emulator
    api.call(lambda: emulator["list", kmock.resource("", "v1", "secrets")] << 503)
    status, _, _ = http(api, "GET", "/api/v1/namespaces/default/secrets")
    assert status == 503
    status, _, _ = http(api, "GET", "/api/v1/namespaces/default/configmaps")
    assert status == 200


def test_path_parsing() -> None:
    assert parse_k8s_path("/api/v1/namespaces") is not None
    parsed = parse_k8s_path("/api/v1/namespaces/default")
    assert parsed is not None and (parsed.plural, parsed.name, parsed.namespace) == (
        "namespaces",
        "default",
        None,
    )
    parsed = parse_k8s_path("/apis/batch/v1/namespaces/ns/jobs/j/status")
    assert parsed is not None
    assert (parsed.group, parsed.plural, parsed.namespace, parsed.name, parsed.subresource) == (
        "batch",
        "jobs",
        "ns",
        "j",
        "status",
    )
    assert parse_k8s_path("/version") is None


# --- a real kopf operator --------------------------------------------------------------------


def widget_operator(calls: list[tuple[str, str]], url: str) -> kopf.OperatorRegistry:
    """A tiny operator: status + a child ConfigMap on create, a note on update, a finalizer."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("example.test", "v1", "widgets", id="created", registry=registry)
    def created(spec: Any, name: str, namespace: str, body: Any, **_: Any) -> dict[str, Any]:
        calls.append(("create", name))
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-child"},
            "data": {"size": str(spec["size"])},
        }
        kopf.adopt(child, owner=body)
        config = kubernetes.client.Configuration()
        config.host = url
        with kubernetes.client.ApiClient(config) as api_client:
            kubernetes.client.CoreV1Api(api_client).create_namespaced_config_map(namespace, child)
        kopf.info(body, reason="Created", message="child created")
        return {"child": child["metadata"]["name"]}

    @kopf.on.update(
        "example.test", "v1", "widgets", id="resized", field="spec.size", registry=registry
    )
    def resized(name: str, new: Any, **_: Any) -> None:
        calls.append(("update", name))

    @kopf.on.delete("example.test", "v1", "widgets", id="deleted", registry=registry)
    def deleted(name: str, **_: Any) -> None:
        calls.append(("delete", name))

    return registry


def test_a_kopf_operator_handles_each_change_once_without_warnings(api: Cluster) -> None:
    calls: list[tuple[str, str]] = []
    registry = widget_operator(calls, api.url)
    with KopfRunner(api, registry=registry) as operator:
        api.create(widget("w", 3))
        api.wait_for(lambda: (api.get("widgets", "w") or {}).get("status", {}).get("created"))
        api.wait_for(lambda: api.get("configmaps", "w-child"))
        api.patch("widgets", "w", {"spec": {"size": 4}})
        api.wait_for(lambda: ("update", "w") in calls, message="the update handler")
        api.patch("widgets", "w", {"metadata": {"labels": {"unrelated": "change"}}})
        time.sleep(0.5)  # a metadata-only change must not run any handler
        api.delete("widgets", "w")
        api.wait_gone("widgets", "w")
        api.wait_gone("configmaps", "w-child")
        time.sleep(0.3)
        operator.assert_clean()
    assert calls == [("create", "w"), ("update", "w"), ("delete", "w")]
    events = api.list("events", "default", fields="reason=Created")
    assert [e["message"] for e in events] == ["child created"]


def test_a_restarted_kopf_operator_does_not_handle_old_changes_again(api: Cluster) -> None:
    calls: list[tuple[str, str]] = []
    with KopfRunner(api, registry=widget_operator(calls, api.url)) as operator:
        api.create(widget("w", 3))
        api.wait_for(lambda: (api.get("widgets", "w") or {}).get("status", {}).get("created"))
        operator.assert_clean()
    with KopfRunner(api, registry=widget_operator(calls, api.url)) as operator:
        api.create(widget("v", 1))
        api.wait_for(lambda: (api.get("widgets", "v") or {}).get("status", {}).get("created"))
        time.sleep(0.3)
        operator.assert_clean()
    assert calls == [("create", "w"), ("create", "v")]


def test_a_kopf_operator_survives_api_errors_and_a_compacted_watch(api: Cluster) -> None:
    calls: list[tuple[str, str]] = []
    with KopfRunner(
        api,
        registry=widget_operator(calls, api.url),
        configure=lambda s: setattr(s.networking, "error_backoffs", [0.1, 0.2]),
    ) as operator:
        api.inject_fault(500, verb="patch", resource="widgets", subresource="status")
        api.create(widget("w", 3))
        api.wait_for(lambda: (api.get("widgets", "w") or {}).get("status", {}).get("created"))
        api.compact()
        api.create(widget("v", 1))
        api.wait_for(lambda: (api.get("widgets", "v") or {}).get("status", {}).get("created"))
        # The injected 500 is a real API error: kopf retries it and says so, and nothing else.
        problems = [r.getMessage() for r in operator.problems]
        assert all("500" in p or "Internal" in p or "attempt" in p for p in problems), problems
    assert calls.count(("create", "w")) == 1 and calls.count(("create", "v")) == 1
