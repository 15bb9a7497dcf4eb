"""The fake control plane plays job controller, scheduler and kubelet faithfully enough.

Jobs become pods that run as real local processes (the real ``microtask-runner`` included),
placement honours GPU/CPU conventions, affinity, taints and capacity, and the failure knobs
(lost or deleted nodes, evictions, OOM kills, slow or broken nodes, suspension, deadlines)
produce the pod and Job states a real cluster shows.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.controlplane import ControlPlaneSettings, cpu_node, expand_vars

pytestmark = pytest.mark.timeout(60)

GPU_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}
                    ]
                }
            ]
        }
    }
}
CPU_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}
                    ]
                }
            ]
        }
    }
}
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def py(code: str) -> list[str]:
    """A container command running Python code with the venv's interpreter name."""
    return ["python", "-c", code]


def job(
    name: str, command: list[str], *, gpu: bool = False, backoff: int = 0, **spec: Any
) -> dict[str, Any]:
    """A batch/v1 Job shaped like the operator's shard Jobs."""
    container: dict[str, Any] = {"name": "worker", "image": "example/worker:1", "command": command}
    for key in ("env", "args", "volumeMounts", "terminationMessagePolicy"):
        if key in spec:
            container[key] = spec.pop(key)
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if gpu:
        pod_spec["affinity"] = GPU_AFFINITY
        pod_spec["tolerations"] = GPU_TOLERATION
        container["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    for key in (
        "volumes",
        "priorityClassName",
        "terminationGracePeriodSeconds",
        "affinity",
        "nodeSelector",
    ):
        if key in spec:
            pod_spec[key] = spec.pop(key)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "backoffLimit": backoff,
            "template": {"metadata": {"labels": {"shard": name}}, "spec": pod_spec},
            **spec,
        },
    }


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A bare pod (no Job)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "example/worker:1", "command": command}],
            **spec,
        },
    }


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    return {
        c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_job(
    cluster: Cluster, name: str, type_: str = "Complete", timeout: float = 20
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        current = cluster.get("jobs", name)
        return current if conditions(current).get(type_) == "True" else None

    try:
        return cluster.wait_for(done, timeout, message=f"job {name} {type_}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{cluster.dump()}") from None


def pods_of(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    return cluster.list("pods", "default", labels=f"job-name={job_name}")


def wait_phase(cluster: Cluster, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: (p := cluster.get("pods", name)) and p["status"].get("phase") == phase and p,
        timeout,
        message=f"pod {name} {phase}",
    )


def terminated(pod_obj: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod_obj["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- job controller + kubelet ----------------------------------------------------------------


def test_a_job_runs_its_container_as_a_local_process(cluster: Cluster) -> None:
    code = (
        "import os, sys; print('hello from', os.environ['POD_NAME']);"
        "report = open(os.environ['MICROTASK_REPORT_PATH'], 'w');"
        "report.write(os.environ['GREETING'] + ' ' + sys.argv[1])"
    )
    created = cluster.create(
        job(
            "hello",
            [*py(code)],
            args=["$(WHO)"],
            env=[
                {"name": "WHO", "value": "world"},
                {"name": "GREETING", "value": "hi $(WHO) $$(WHO)"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        )
    )
    done = wait_job(cluster, "hello")
    assert done["status"]["succeeded"] == 1 and "active" not in done["status"]
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    [pod_obj] = pods_of(cluster, "hello")
    name = pod_obj["metadata"]["name"]
    assert re.fullmatch(r"hello-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    labels = pod_obj["metadata"]["labels"]
    assert labels["shard"] == "hello" and labels["batch.kubernetes.io/job-name"] == "hello"
    [owner] = pod_obj["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"] and owner["controller"] is True
    assert pod_obj["status"]["phase"] == "Succeeded"
    state = terminated(pod_obj)
    assert (state["exitCode"], state["reason"], state["message"]) == (
        0,
        "Completed",
        "hi world $(WHO) world",
    )
    assert state["startedAt"] <= state["finishedAt"]
    assert cluster.pod_log(name) == f"hello from {name}\n"
    assert cluster.count_requests() == 0, "the control plane does not go through the API log"


def test_a_failing_container_fails_the_job_after_its_backoff_limit(cluster: Cluster) -> None:
    code = "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"
    cluster.create(job("once", py(code), terminationMessagePolicy="FallbackToLogsOnError"))
    failed = wait_job(cluster, "once", "Failed")
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    assert conditions(failed)["FailureTarget"] == "True"
    [pod_obj] = pods_of(cluster, "once")
    assert pod_obj["status"]["phase"] == "Failed"
    state = terminated(pod_obj)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "boom\n")

    cluster.create(job("twice", py("raise SystemExit(1)"), backoff=1))
    assert wait_job(cluster, "twice", "Failed")["status"]["failed"] == 2
    assert len(pods_of(cluster, "twice")) == 2


def test_termination_messages_are_capped_at_4096_bytes(cluster: Cluster) -> None:
    code = "import os; open(os.environ['MICROTASK_REPORT_PATH'], 'w').write('x' * 10000)"
    cluster.create(job("big", py(code)))
    wait_job(cluster, "big")
    assert len(terminated(pods_of(cluster, "big")[0])["message"]) == 4096


def test_active_deadline_fails_the_job_and_kills_its_pod(cluster: Cluster) -> None:
    cluster.create(job("slow", py("import time; time.sleep(30)"), activeDeadlineSeconds=1))
    failed = wait_job(cluster, "slow", "Failed", timeout=15)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    cluster.wait_for(lambda: not pods_of(cluster, "slow"), message="the killed pod to be removed")
    assert cluster.running_processes() == 0


def test_suspend_deletes_active_pods_and_resume_starts_new_ones(cluster: Cluster) -> None:
    # A pod terminated by suspension counts as a failure, as with the real job controller,
    # so this Job needs a backoff limit of at least 1 to survive one suspension.
    cluster.create(job("pausable", py("import time; time.sleep(30)"), backoff=1))
    first = cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "pausable") if p["status"].get("phase") == "Running"]
    )
    cluster.patch("jobs", "pausable", {"spec": {"suspend": True}})
    suspended = wait_job(cluster, "pausable", "Suspended")
    assert condition(suspended, "Suspended")["reason"] == "JobSuspended"
    cluster.wait_gone("pods", first[0]["metadata"]["name"])
    status = (cluster.get("jobs", "pausable") or {})["status"]
    assert "active" not in status and status["failed"] == 1

    cluster.patch("jobs", "pausable", {"spec": {"suspend": False}})
    resumed = cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "pausable") if p["status"].get("phase") == "Running"]
    )
    assert resumed[0]["metadata"]["name"] != first[0]["metadata"]["name"]
    assert condition(cluster.get("jobs", "pausable"), "Suspended")["reason"] == "JobResumed"


def test_suspending_a_running_job_without_backoff_fails_it(cluster: Cluster) -> None:
    cluster.create(job("fragile", py("import time; time.sleep(30)")))
    cluster.wait_for(
        lambda: (
            cluster.pod_pid(pods_of(cluster, "fragile")[0]["metadata"]["name"])
            if pods_of(cluster, "fragile")
            else None
        )
    )
    cluster.patch("jobs", "fragile", {"spec": {"suspend": True}})
    failed = wait_job(cluster, "fragile", "Failed")
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"


def test_deleting_a_job_removes_its_running_pods(cluster: Cluster) -> None:
    for name in ("background", "foreground", "orphaned"):
        cluster.create(job(name, py("import time; print('ready', flush=True); time.sleep(30)")))
    pods = {
        name: cluster.wait_for(
            lambda n=name: [
                p["metadata"]["name"]
                for p in pods_of(cluster, n)
                if cluster.pod_log(p["metadata"]["name"]) == "ready\n"
            ]
        )[0]
        for name in ("background", "foreground", "orphaned")
    }
    pids = {name: cluster.pod_pid(pod_name) for name, pod_name in pods.items()}
    assert pods_of(cluster, "background")[0]["metadata"]["finalizers"] == [
        "batch.kubernetes.io/job-tracking"
    ]

    cluster.delete("jobs", "background", propagation="Background")
    assert cluster.get("jobs", "background") is None
    cluster.wait_gone("pods", pods["background"])

    cluster.delete("jobs", "foreground", propagation="Foreground")
    held = cluster.get("jobs", "foreground")
    assert held is not None and "foregroundDeletion" in held["metadata"]["finalizers"]
    cluster.wait_gone("jobs", "foreground")
    assert cluster.get("pods", pods["foreground"]) is None, "dependents go first"

    cluster.delete("jobs", "orphaned", propagation=None)  # batch/v1 defaults to Orphan
    cluster.wait_gone("jobs", "orphaned")
    orphan = cluster.get("pods", pods["orphaned"])
    assert orphan is not None and orphan["status"]["phase"] == "Running"
    assert "ownerReferences" not in orphan["metadata"]
    assert pids["orphaned"] is not None and alive(pids["orphaned"])
    assert not any(alive(pid) for name, pid in pids.items() if pid and name != "orphaned")


def test_watchers_see_the_control_plane_writes(cluster: Cluster) -> None:
    mark = cluster.call(lambda: str(cluster.store.rv))
    cluster.create(pod("watched", ["true"]))
    wait_phase(cluster, "watched", "Succeeded")
    cluster.delete("pods", "watched")
    cluster.wait_gone("pods", "watched")
    with cluster.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        watch = kubernetes.watch.Watch()
        phases = [
            (event["type"], event["object"].status.phase)
            for event in watch.stream(
                core.list_namespaced_pod, "default", resource_version=mark, timeout_seconds=1
            )
        ]
    assert phases[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Running") in phases and ("MODIFIED", "Succeeded") in phases
    assert phases[-1][0] == "DELETED"


def test_a_missing_priority_class_blocks_pod_creation(cluster: Cluster) -> None:
    cluster.create(job("urgent", ["true"], priorityClassName="microtask-high"))
    event = cluster.wait_for(lambda: cluster.list("events", fields="reason=FailedCreate"))
    assert "no PriorityClass with name microtask-high was found" in event[0]["message"]
    assert not pods_of(cluster, "urgent")
    cluster.create(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": "microtask-high"},
            "value": 1000,
        }
    )
    wait_job(cluster, "urgent")
    assert pods_of(cluster, "urgent")[0]["spec"]["priority"] == 1000


def test_config_map_volumes_and_env_sources(cluster: Cluster) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "items"},
            "data": {"items.txt": "a\nb\nc\n", "mode": "fast"},
        }
    )
    code = (
        "import json, os; src = json.loads(os.environ['MICROTASK_ITEMS']);"
        "lines = open(src['file']).read().split();"
        "report = open(os.environ['MICROTASK_REPORT_PATH'], 'w');"
        "report.write(os.environ['MODE'] + ':' + ','.join(lines))"
    )
    cluster.create(
        job(
            "cm",
            py(code),
            env=[
                {"name": "MICROTASK_ITEMS", "value": '{"file": "/etc/microtask/items/items.txt"}'},
                {
                    "name": "MODE",
                    "valueFrom": {"configMapKeyRef": {"name": "items", "key": "mode"}},
                },
            ],
            volumeMounts=[{"name": "items", "mountPath": "/etc/microtask/items", "readOnly": True}],
            volumes=[{"name": "items", "configMap": {"name": "items"}}],
        )
    )
    wait_job(cluster, "cm")
    assert terminated(pods_of(cluster, "cm")[0])["message"] == "fast:a,b,c"


def test_the_real_runner_runs_a_shard(cluster: Cluster) -> None:
    report_module = pytest.importorskip("microtask_runner.report")
    worker = "import sys; sys.exit(4 if int(sys.argv[1]) % 3 == 0 else 0)"
    cluster.create(
        job(
            "shard",
            ["microtask-runner"],
            args=["--", "python", "-c", worker, "$(MICROTASK_INDEX)"],
            env=[{"name": "MICROTASK_INDEXES", "value": "0-5"}],
        )
    )
    failed = wait_job(cluster, "shard", "Failed")
    assert failed["status"]["failed"] == 1
    state = terminated(pods_of(cluster, "shard")[0])
    assert state["exitCode"] == 10
    report = report_module.Report.decode(state["message"])
    assert sorted(report.succeeded) == [1, 2, 4, 5]
    assert {code: sorted(indexes) for code, indexes in report.failed.items()} == {4: [0, 3]}


# --- scheduler -------------------------------------------------------------------------------


def test_gpu_shards_land_on_gpu_nodes_and_cpu_shards_on_cpu_nodes(cluster: Cluster) -> None:
    sleeper = py("import time; time.sleep(2)")
    for index in range(4):
        cluster.create(job(f"gpu-{index}", sleeper, gpu=True))
    for index in range(4):
        cluster.create(job(f"cpu-{index}", sleeper, affinity=CPU_AFFINITY))
    placed = cluster.wait_for(
        lambda: (
            (pods := [p for p in cluster.list("pods") if p["spec"].get("nodeName")])
            and len(pods) == 8
            and pods
        ),
        message="all pods scheduled",
    )
    nodes = {p["metadata"]["labels"]["job-name"]: p["spec"]["nodeName"] for p in placed}
    assert {n for j, n in nodes.items() if j.startswith("gpu-")} <= {"gpu-0", "gpu-1"}
    assert {n for j, n in nodes.items() if j.startswith("cpu-")} <= {"cpu-0", "cpu-1"}
    # Least loaded first: two GPUs per GPU node, and CPU shards spread over both CPU nodes.
    assert Counter(nodes[f"gpu-{i}"] for i in range(4)) == {"gpu-0": 2, "gpu-1": 2}
    assert Counter(nodes[f"cpu-{i}"] for i in range(4)) == {"cpu-0": 2, "cpu-1": 2}


def test_gpu_pods_are_unschedulable_without_gpu_capacity(cluster: Cluster) -> None:
    for name in ("gpu-0", "gpu-1"):
        cluster.set_node_capacity(name, gpus=0)
    cluster.create(job("starved", ["true"], gpu=True))

    def unschedulable() -> dict[str, Any] | None:
        pods = pods_of(cluster, "starved")
        cond = condition(pods[0], "PodScheduled") if pods else {}
        return cond if cond.get("reason") == "Unschedulable" else None

    cond = cluster.wait_for(unschedulable, message="PodScheduled=False")
    assert cond["status"] == "False"
    assert cond["message"] == (
        "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, "
        "2 node(s) didn't match Pod's node affinity/selector."
    )
    assert cluster.list("events", fields="reason=FailedScheduling")
    cluster.set_node_capacity("gpu-1", gpus=1)
    wait_job(cluster, "starved")
    assert pods_of(cluster, "starved")[0]["spec"]["nodeName"] == "gpu-1"


def test_without_gpu_nodes_gpu_pods_wait(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0")])
    cluster.create(job("nogpu", ["true"], gpu=True))
    cluster.wait_for(
        lambda: condition((pods_of(cluster, "nogpu") or [None])[0], "PodScheduled").get("message")
    )
    message = condition(pods_of(cluster, "nogpu")[0], "PodScheduled")["message"]
    assert (
        message == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )


def test_node_selectors_affinity_and_taints(cluster: Cluster) -> None:
    def placed(name: str, **spec: Any) -> str:
        cluster.create(pod(name, ["true"], **spec))
        done = cluster.wait_for(
            lambda: (cluster.get("pods", name) or {}).get("spec", {}).get("nodeName")
        )
        return str(done)

    def term(*exprs: dict[str, Any]) -> dict[str, Any]:
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": list(exprs)}]
                }
            }
        }

    assert placed("by-selector", nodeSelector={"kubernetes.io/hostname": "cpu-1"}) == "cpu-1"
    assert (
        placed(
            "by-in",
            affinity=term({"key": "kubernetes.io/hostname", "operator": "In", "values": ["cpu-0"]}),
        )
        == "cpu-0"
    )
    not_in = placed(
        "by-notin",
        affinity=term({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["cpu-0"]}),
    )
    assert not_in == "cpu-1", "GPU nodes are tainted, so only cpu-1 is left"
    assert placed(
        "tolerating",
        affinity=term({"key": "nvidia.com/gpu.present", "operator": "Exists"}),
        tolerations=GPU_TOLERATION,
    ) in {"gpu-0", "gpu-1"}
    assert placed(
        "plain", affinity=term({"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"})
    ) in {"cpu-0", "cpu-1"}
    preferred = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["cpu-0"]}
                        ]
                    },
                }
            ]
        }
    }
    for index in range(3):
        assert placed(f"preferring-{index}", affinity=preferred) == "cpu-0"

    cluster.create(pod("untolerated", ["true"], nodeSelector={"nvidia.com/gpu.present": "true"}))
    cond = cluster.wait_for(
        lambda: condition(cluster.get("pods", "untolerated"), "PodScheduled").get("message")
    )
    assert "2 node(s) had untolerated taint {nvidia.com/gpu: present}" in cond


def test_cordoned_nodes_get_no_new_pods(cluster: Cluster) -> None:
    cluster.cordon("cpu-0")
    for index in range(3):
        cluster.create(pod(f"p{index}", ["true"], affinity=CPU_AFFINITY))
    for index in range(3):
        cluster.wait_for(
            lambda i=index: (cluster.get("pods", f"p{i}") or {}).get("spec", {}).get("nodeName")
        )
        assert (cluster.get("pods", f"p{index}") or {})["spec"]["nodeName"] == "cpu-1"


# --- node and pod failures -------------------------------------------------------------------


def test_a_lost_node_kills_processes_and_leaves_pods_running(cluster: Cluster) -> None:
    cluster.create(
        pod(
            "stuck",
            py("import time; time.sleep(30)"),
            nodeSelector={"kubernetes.io/hostname": "cpu-0"},
        )
    )
    cluster.create(
        pod(
            "doomed",
            py("import time; time.sleep(30)"),
            nodeSelector={"kubernetes.io/hostname": "cpu-0"},
        )
    )
    wait_phase(cluster, "stuck", "Running")
    wait_phase(cluster, "doomed", "Running")
    pid = cluster.wait_for(lambda: cluster.pod_pid("stuck"))
    cluster.set_node_ready("cpu-0", False)
    cluster.wait_for(lambda: not alive(pid), message="the container process to die")

    node = cluster.get("nodes", "cpu-0", None)
    assert condition(node, "Ready")["status"] == "Unknown"
    assert {t["key"] for t in (node or {})["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
    stuck = cluster.get("pods", "stuck")
    assert stuck is not None and stuck["status"]["phase"] == "Running"
    assert condition(stuck, "Ready")["status"] == "False"

    cluster.create(pod("elsewhere", ["true"], affinity=CPU_AFFINITY))
    assert wait_phase(cluster, "elsewhere", "Succeeded")["spec"]["nodeName"] == "cpu-1"

    cluster.delete("pods", "doomed")
    time.sleep(0.3)
    assert (cluster.get("pods", "doomed") or {})["metadata"]["deletionTimestamp"], (
        "stays terminating"
    )

    cluster.set_node_ready("cpu-0", True)
    cluster.wait_gone("pods", "doomed")
    recovered = wait_phase(cluster, "stuck", "Failed")
    assert terminated(recovered)["reason"] == "ContainerStatusUnknown"


def test_deleting_a_node_deletes_its_pods_and_fails_their_job(cluster: Cluster) -> None:
    cluster.create(
        job(
            "victim",
            py("import time; time.sleep(30)"),
            nodeSelector={"kubernetes.io/hostname": "cpu-1"},
        )
    )
    cluster.wait_for(
        lambda: [p for p in pods_of(cluster, "victim") if p["status"].get("phase") == "Running"]
    )
    cluster.delete_node("cpu-1")
    cluster.wait_for(
        lambda: not pods_of(cluster, "victim"), message="pods of the deleted node to go"
    )
    assert wait_job(cluster, "victim", "Failed")["status"]["failed"] == 1
    assert cluster.running_processes() == 0


def test_kubelet_eviction_fails_the_pod_with_a_disruption_condition(cluster: Cluster) -> None:
    code = (
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    open(os.environ['MICROTASK_REPORT_PATH'], 'w').write('bye')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    cluster.create(pod("evictee", py(code)))
    cluster.wait_for(
        lambda: cluster.pod_log("evictee") == "ready\n", message="the handler to be set"
    )
    cluster.evict_pod("evictee")
    evicted = wait_phase(cluster, "evictee", "Failed")
    assert evicted["status"]["reason"] == "Evicted"
    assert condition(evicted, "DisruptionTarget")["reason"] == "TerminationByKubelet"
    state = terminated(evicted)
    assert (state["exitCode"], state["message"]) == (143, "bye")


def test_api_eviction_deletes_the_pod(cluster: Cluster) -> None:
    cluster.create(pod("evictee", py("import time; time.sleep(30)")))
    wait_phase(cluster, "evictee", "Running")
    with cluster.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespaced_pod_eviction(
            "evictee", "default", {"metadata": {"name": "evictee", "namespace": "default"}}
        )
    cluster.wait_gone("pods", "evictee")
    assert [(r.verb, r.resource, r.subresource, r.code) for r in cluster.request_list()] == [
        ("create", "pods", "eviction", 201)
    ]


def test_pod_deletion_sends_sigterm_then_sigkill_after_the_grace_period(cluster: Cluster) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(30)"
    )
    cluster.create(pod("stubborn", py(stubborn), terminationGracePeriodSeconds=1))
    cluster.wait_for(lambda: cluster.pod_log("stubborn") == "ready\n")
    pid = cluster.pod_pid("stubborn")
    assert pid is not None
    started = time.monotonic()
    cluster.delete("pods", "stubborn")
    assert (cluster.get("pods", "stubborn") or {})["metadata"]["deletionGracePeriodSeconds"] == 1
    cluster.wait_gone("pods", "stubborn")
    assert 0.9 <= time.monotonic() - started < 5
    assert not alive(pid)

    cluster.create(pod("polite", py("import time; print('ready', flush=True); time.sleep(30)")))
    cluster.wait_for(lambda: cluster.pod_log("polite") == "ready\n")
    cluster.delete("pods", "polite")
    cluster.wait_gone("pods", "polite", timeout=3)


def test_oom_kill(cluster: Cluster) -> None:
    cluster.create(pod("hungry", py("import time; time.sleep(30)")))
    cluster.wait_for(lambda: cluster.pod_pid("hungry"))
    cluster.oom_kill("hungry")
    state = terminated(wait_phase(cluster, "hungry", "Failed"))
    assert (state["exitCode"], state["reason"]) == (137, "OOMKilled")


def test_slow_and_broken_nodes(cluster: Cluster) -> None:
    cluster.set_node_behaviour("cpu-0", start_delay=1.0)
    started = time.monotonic()
    cluster.create(pod("slow", ["true"], nodeSelector={"kubernetes.io/hostname": "cpu-0"}))
    wait_phase(cluster, "slow", "Running")
    wait_phase(cluster, "slow", "Succeeded")
    assert time.monotonic() - started >= 1.0

    cluster.set_node_behaviour("cpu-1", fail_exit_code=7)
    cluster.create(pod("broken", ["true"], nodeSelector={"kubernetes.io/hostname": "cpu-1"}))
    state = terminated(wait_phase(cluster, "broken", "Failed"))
    assert (state["exitCode"], state["reason"]) == (7, "Error")
    assert cluster.pod_log("broken") is None, "nothing ran"


def test_a_missing_command_fails_like_a_start_error(cluster: Cluster) -> None:
    cluster.create(pod("nocmd", ["definitely-not-a-command-xyz"]))
    state = terminated(wait_phase(cluster, "nocmd", "Failed"))
    assert (state["exitCode"], state["reason"]) == (128, "StartError")


def test_no_process_outlives_the_cluster(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(
        settings=ControlPlaneSettings(path_prepend=[str(Path(sys.executable).parent)])
    )
    cluster.create(pod("parent", ["sh", "-c", "sleep 60 & echo $! > child.pid; echo ready; wait"]))
    cluster.wait_for(lambda: cluster.pod_log("parent") == "ready\n")
    parent = cluster.pod_pid("parent")
    assert parent is not None
    child_file = next(Path(f"/proc/{parent}/cwd").resolve().glob("child.pid"))
    child = int(child_file.read_text())
    assert alive(parent) and alive(child)
    cluster.stop()
    assert not alive(parent) and not alive(child)
    assert not cluster.running


def test_dollar_var_expansion() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)-$(C)", env) == "1-two-$(C)"
    assert expand_vars("$$(A) costs $$5", env) == "$(A) costs $5"
