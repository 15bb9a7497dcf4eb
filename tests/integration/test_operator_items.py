"""A job's items on the real control plane: they arrive as written, and stay what the job started.

* Items full of `$` reach the program byte for byte (the kubelet expands `$(VAR)` and `$$` in env
  values; the operator escapes what it writes).
* Once `status.startTime` is set, the API server itself refuses edits of `spec.items` and
  `spec.output` (the CRD's transition rules); the settings that may change are still accepted.
* The calls the operator makes to fix a configMapRef job's items (an immutable copy it owns) and
  to tell pods refused for good from pods that wait (the Job controller's FailedCreate Events),
  as the operator's ServiceAccount makes them.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from microtask_operator.adapter.kube import KubeApi
from microtask_operator.api.digest import items_digest
from microtask_operator.builder import snapshot_config_map
from microtask_operator.metrics import Metrics

from tests.integration.harness.apiclient import ApiError
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.controlplane import environment_without_proxies
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    status_of,
    wait_phase,
)
from tests.kube_tools import require

pytestmark = pytest.mark.timeout(180)

AWKWARD = ["$(MICROTASK_JOB)", "a$$b", "$(UNDEFINED)", "$", "$$$(X)", "x$", "$ü"]
FIXED = (
    "{} cannot change once the job has started (status.startTime is set); create a new MicrotaskJob"
)
STARTED = {"status": {"startTime": "2024-05-01T10:00:00Z", "phase": "Running"}}


def operator_api(cluster: Cluster) -> KubeApi:
    """The operator's own client: deploy/'s ServiceAccount through the test's fault proxy."""
    configuration = kube_client.Configuration()
    kube_config.load_kube_config(
        config_file=str(cluster.operator_kubeconfig), client_configuration=configuration
    )
    return KubeApi(Metrics(), kube_client.ApiClient(configuration), attempts=1)


# --- items arrive as written ----------------------------------------------------------------------


def test_items_full_of_dollars_reach_the_program_byte_for_byte(
    cluster: Cluster, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    # Each microtask writes its item as it got it: from the environment and from its argv.
    code = (
        "import os, sys; path = os.path.join(os.environ['SEEN'], os.environ['MICROTASK_INDEX']);"
        "open(path + '.env', 'wb').write(os.environb[b'MICROTASK_ITEM']);"
        "open(path + '.arg', 'wb').write(os.fsencode(sys.argv[1]))"
    )
    body = microtask_job(
        "dollars",
        per_shard=len(AWKWARD),
        command=["python3", "-c", code, "$(MICROTASK_ITEM)"],
        items={"list": AWKWARD},
    )
    pod = body["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "SEEN", "value": str(seen)}]
    # The result store's path is a literal the operator writes into the env too.
    pod["volumes"] = [{"name": "results", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]
    body["spec"]["output"] = {"volume": {"name": "results", "path": "a$(MICROTASK_JOB)$$b"}}
    with running_operator(cluster) as op:
        cluster.create(body)
        status = wait_phase(cluster, "dollars")["status"]
        assert status["phase"] == "Succeeded", status
        op.assert_clean()
    for index, item in enumerate(AWKWARD):
        assert (seen / f"{index}.env").read_bytes() == item.encode(), index
        assert (seen / f"{index}.arg").read_bytes() == item.encode(), index
    assert status["output"] == {"url": "volume://results/a$(MICROTASK_JOB)$$b/dollars"}
    assert list((tmp_path / "a$(MICROTASK_JOB)$$b" / "dollars").iterdir())


# --- fixed once started: refused by the API server ------------------------------------------------


def refused(cluster: Cluster, name: str, spec: dict[str, Any], field: str) -> None:
    """The API server refuses the spec patch with the field's message, and nothing changes."""
    before = cluster.get("microtaskjobs", name)
    assert before is not None
    try:
        cluster.patch("microtaskjobs", name, {"spec": spec})
    except ApiError as error:
        assert error.code == 422, error
        assert f"spec.{field}: Forbidden: {FIXED.format(f'spec.{field}')}" in error.message
    else:
        raise AssertionError(f"the API server accepted {spec} on a started job")
    after = cluster.get("microtaskjobs", name)
    assert after is not None and after["spec"] == before["spec"]


def accepted(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    before = cluster.get("microtaskjobs", name)
    assert before is not None
    patched = cluster.patch("microtaskjobs", name, {"spec": spec})
    assert patched["metadata"]["generation"] == before["metadata"]["generation"] + 1, spec


def test_items_and_output_are_refused_once_started_other_settings_are_not(
    cluster: Cluster,
) -> None:
    # No operator: the start is recorded by hand, as the operator records it.
    listed = microtask_job(
        "listed", items={"list": ["a", "b", "c"]}, output={"s3": {"url": "s3://results/runs"}}
    )
    ranged = microtask_job("ranged", total=10)
    mapped = microtask_job(
        "mapped", items={"configMapRef": {"name": "words", "key": "list", "format": "lines"}}
    )
    for body in (listed, ranged, mapped):
        cluster.create(body)

    # Before the start, anything may change.
    accepted(cluster, "listed", {"items": {"list": ["a", "b", "c", "d"]}})
    accepted(cluster, "listed", {"output": {"s3": {"url": "s3://results/other"}}})
    accepted(cluster, "ranged", {"items": {"range": {"start": 2, "end": 12}}})

    for name in ("listed", "ranged", "mapped"):
        cluster.patch("microtaskjobs", name, STARTED, subresource="status")

    refused(cluster, "listed", {"items": {"list": ["a", "b", "c"]}}, "items")  # shrink
    refused(cluster, "listed", {"items": {"list": ["a", "b", "x", "d"]}}, "items")  # an entry
    refused(cluster, "listed", {"items": {"list": ["a", "b", "c", "d", "e"]}}, "items")
    refused(cluster, "listed", {"items": {"list": None, "range": {"end": 4}}}, "items")
    refused(cluster, "ranged", {"items": {"range": {"start": 3}}}, "items")
    refused(cluster, "ranged", {"items": {"range": {"end": 20}}}, "items")
    refused(cluster, "ranged", {"items": {"range": {"step": 2}}}, "items")
    refused(cluster, "mapped", {"items": {"configMapRef": {"name": "other"}}}, "items")
    refused(cluster, "mapped", {"items": {"configMapRef": {"key": "other"}}}, "items")
    refused(cluster, "mapped", {"items": {"configMapRef": {"format": "json"}}}, "items")
    refused(cluster, "listed", {"output": {"s3": {"url": "s3://results/elsewhere"}}}, "output")
    refused(cluster, "listed", {"output": None}, "output")
    refused(cluster, "ranged", {"output": {"s3": {"url": "s3://results/late"}}}, "output")

    template = microtask_job("x", command=["python3", "-c", "print('v2')"])["spec"]["template"]
    for spec in (
        {"parallelism": 7},
        {"suspend": True},
        {"suspend": False},
        {"speculation": {"enabled": True, "slowdownFactor": 4}},
        {"retry": {"maxAttempts": 5, "maxFailedMicrotasks": 2}},
        {"timeouts": {"microtaskSeconds": 30, "jobSeconds": 3600}},
        {"placement": {"accelerator": "auto", "fallbackAfterSeconds": 5}},
        {"rebalance": {"nodeLostGraceSeconds": 10}},
        {"keepFailedShards": 1},
        {"template": template},
    ):
        accepted(cluster, "listed", spec)
    # The same items, written again (as `kubectl apply` of an unchanged file does), pass.
    accepted(cluster, "ranged", {"items": {"range": {"start": 2, "end": 12}}, "parallelism": 2})


def kubectl(cluster: Cluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl as a user runs it: the test's kubeconfig (its namespace), a home of its own."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **environment_without_proxies(),
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOME": str(home),
    }
    return subprocess.run(
        [str(require("kubectl")["kubectl"]), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kubectl_shows_why_a_running_jobs_items_cannot_change(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The operator records the start; a user's edit of the items then fails with the reason."""
    body = microtask_job(
        "running",
        total=12,
        per_shard=2,
        parallelism=2,
        command=["python3", "-c", "import time; time.sleep(0.2)"],
    )
    home = tmp_path / "home"
    with running_operator(cluster) as op:
        cluster.create(body)
        cluster.wait_for(
            lambda: status_of(cluster, "running").get("startTime"),
            timeout=30,
            message="the operator to record the start",
        )
        edit = kubectl(
            cluster, home, "patch", "mtj", "running", "--type=merge",
            "-p", '{"spec":{"items":{"range":{"end":6}}}}',
        )  # fmt: skip
        assert edit.returncode != 0, edit
        assert FIXED.format("spec.items") in edit.stderr, edit.stderr
        more = kubectl(
            cluster, home, "patch", "mtj", "running", "--type=merge",
            "-p", '{"spec":{"parallelism":3}}',
        )  # fmt: skip
        assert more.returncode == 0, more
        status = wait_phase(cluster, "running")["status"]
        op.assert_clean()
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeededIndexes"]) == (12, "0-11")


# --- the operator's calls for fixed items and refused pods ----------------------------------------


def test_a_snapshot_of_the_items_is_created_once_immutable_and_goes_with_its_job(
    cluster: Cluster,
) -> None:
    created = cluster.create(
        microtask_job("owner", items={"configMapRef": {"name": "words", "key": "list"}})
    )
    meta = {
        "name": "owner",
        "namespace": cluster.namespace,
        "uid": created["metadata"]["uid"],
    }
    spec_items = created["spec"]["items"]
    text = "a\n$(b)\nü\n"
    body = snapshot_config_map(meta, "list", text, items_digest(spec_items, text))
    api = operator_api(cluster)
    assert asyncio.run(api.create_config_map(cluster.namespace, body)) is True
    assert asyncio.run(api.create_config_map(cluster.namespace, body)) is False  # 409: it exists
    name = body["metadata"]["name"]
    assert asyncio.run(api.get_config_map(cluster.namespace, name)) == {"list": text}
    try:
        cluster.patch("configmaps", name, {"data": {"list": "changed\n"}})
    except ApiError as error:
        assert error.code == 422 and "field is immutable" in error.message, error
    else:
        raise AssertionError("the snapshot could be edited")
    cluster.delete("microtaskjobs", "owner")
    cluster.wait_gone("configmaps", name, timeout=60)  # the garbage collector follows the owner


def job_with(name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


RESTRICTED_CONTAINER = {
    "name": "worker",
    "image": "busybox",
    "command": ["true"],
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def failed_creates(cluster: Cluster, job: str) -> list[str]:
    return [
        str(e.get("message"))
        for e in cluster.list("events", fields=f"involvedObject.name={job},reason=FailedCreate")
    ]


def test_pod_refusals_tells_final_refusals_from_waiting_ones(shared_cluster: Cluster) -> None:
    """The Job controller records why it cannot create a pod; only admission refusals are final."""
    cluster = shared_cluster.view(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        # No pod fits the quota: a compliant pod waits for it; a privileged one never passes.
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "no-pods"},
                "spec": {"hard": {"pods": "0"}},
            }
        )
        privileged = {**RESTRICTED_CONTAINER, "securityContext": {"privileged": True}}
        refused = cluster.create(job_with("privileged", privileged))
        cluster.create(job_with("over-quota", RESTRICTED_CONTAINER))
        api = operator_api(cluster)

        message = cluster.wait_for(
            lambda: asyncio.run(api.pod_refusals(cluster.namespace, "privileged")),
            timeout=60,
            message="the PodSecurity refusal of privileged",
        )
        assert "violates PodSecurity" in message and "privileged" in message, message
        uid = refused["metadata"]["uid"]
        assert asyncio.run(api.pod_refusals(cluster.namespace, "privileged", uid=uid)) == message
        # Events of another Job of the same name (a re-created one) are not its own.
        other = "00000000-0000-0000-0000-000000000000"
        assert asyncio.run(api.pod_refusals(cluster.namespace, "privileged", uid=other)) is None

        quota = cluster.wait_for(
            lambda: failed_creates(cluster, "over-quota"),
            timeout=60,
            message="the quota refusal of over-quota",
        )
        assert any("exceeded quota" in m for m in quota), quota
        assert asyncio.run(api.pod_refusals(cluster.namespace, "over-quota")) is None
        assert asyncio.run(api.pod_refusals(cluster.namespace, "no-such-job")) is None
    finally:
        cluster.close()


def event(message: str, at: str) -> Any:
    from datetime import datetime

    moment = datetime.fromisoformat(at)
    return SimpleNamespace(
        message=message,
        last_timestamp=moment,
        event_time=None,
        metadata=SimpleNamespace(creation_timestamp=moment),
    )


def test_only_admission_refusals_are_final() -> None:
    security = 'Error creating: pods "j-x" is forbidden: violates PodSecurity "restricted:latest"'
    invalid = 'Error creating: Pod "j-y" is invalid: spec.containers[0].image: Required value'
    quota = 'Error creating: pods "j-z" is forbidden: exceeded quota: q, requested: pods=1'
    assert KubeApi.final_refusal([]) is None
    assert KubeApi.final_refusal([event(quota, "2024-05-01T10:00:00+00:00")]) is None
    found = [
        event(invalid, "2024-05-01T10:00:00+00:00"),
        event(security, "2024-05-01T10:05:00+00:00"),
        event(quota, "2024-05-01T10:09:00+00:00"),
    ]
    assert KubeApi.final_refusal(found) == security  # the latest final one
    assert KubeApi.final_refusal(found[:1]) == invalid
