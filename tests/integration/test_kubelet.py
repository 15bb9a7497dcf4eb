"""The real control plane with our kubelet behaves as a Kubernetes 1.33 cluster does.

The real Job controller, scheduler, garbage collector, pod GC and node lifecycle controller act on
what our kubelet reports: Jobs become pods that run as local processes (the real
``microtask-runner`` included), placement follows GPU/CPU conventions, affinity, taints and
capacity, and our kubelet's failure knobs (lost or deleted nodes, evictions, OOM kills, slow or
broken nodes) produce the pod and Job states a real cluster shows.

Tests that leave the nodes alone share one cluster (``cluster``, a namespace each); tests that
change nodes start their own (``cluster_factory``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from microtask_runner.report import Report

from tests.integration.harness.cluster import Cluster, start_cluster
from tests.integration.harness.containers import expand_vars
from tests.integration.harness.kubelet import cpu_node, gpu_node, process_alive

pytestmark = pytest.mark.timeout(90)

GPU_LABEL = "nvidia.com/gpu.present"
GPU_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": GPU_LABEL, "operator": "In", "values": ["true"]}]}
            ]
        }
    }
}
CPU_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": GPU_LABEL, "operator": "NotIn", "values": ["true"]}]}
            ]
        }
    }
}
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
SLEEP = ["python", "-c", "import time; print('ready', flush=True); time.sleep(60)"]


def py(code: str) -> list[str]:
    """A container command running Python code (the venv's interpreter is first on PATH)."""
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


def on_node(node: str) -> dict[str, Any]:
    return {"nodeSelector": {"kubernetes.io/hostname": node}}


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
    cluster: Cluster, name: str, type_: str = "Complete", timeout: float = 30
) -> dict[str, Any]:
    """The Job once its condition ``type_`` is True (a dump of the namespace on timeout)."""

    def done() -> dict[str, Any] | None:
        current = cluster.get("jobs", name)
        return current if conditions(current).get(type_) == "True" else None

    try:
        found = cluster.wait_for(done, timeout, message=f"job {name} {type_}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{cluster.dump()}") from None
    assert found is not None
    return found


def pods_of(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    return cluster.list("pods", labels=f"batch.kubernetes.io/job-name={job_name}")


def running_pods_of(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods_of(cluster, job_name)
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def wait_phase(cluster: Cluster, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = cluster.get("pods", name)
        return current if current and current["status"].get("phase") == phase else None

    found = cluster.wait_for(reached, timeout, message=f"pod {name} {phase}")
    assert found is not None
    return found


def wait_scheduled(cluster: Cluster, name: str, timeout: float = 20) -> str:
    """The node the scheduler bound a pod to."""
    node = cluster.wait_for(
        lambda: (cluster.get("pods", name) or {}).get("spec", {}).get("nodeName"),
        timeout,
        message=f"pod {name} scheduled",
    )
    return str(node)


def wait_log(cluster: Cluster, name: str, text: str, timeout: float = 20) -> None:
    """Until the pod's container has printed ``text`` (e.g. its signal handler is set)."""
    cluster.wait_for(
        lambda: text in (cluster.pod_log(name) or ""), timeout, message=f"{name} to print {text!r}"
    )


def wait_pid(cluster: Cluster, name: str, timeout: float = 20) -> int:
    """The pid of a pod's container process, once it runs."""
    pid = cluster.wait_for(lambda: cluster.pod_pid(name), timeout, message=f"{name} to run")
    assert pid is not None
    return pid


def scheduling_message(cluster: Cluster, name: str, timeout: float = 20) -> str:
    """The message of the scheduler's PodScheduled=False/Unschedulable condition."""

    def unschedulable() -> str | None:
        cond = condition(cluster.get("pods", name), "PodScheduled")
        ok = cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
        return str(cond.get("message")) if ok else None

    message = cluster.wait_for(unschedulable, timeout, message=f"pod {name} Unschedulable")
    assert message is not None
    return message


def terminated(pod_obj: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod_obj["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


# --- Job controller + our kubelet ------------------------------------------------------------


def test_a_job_runs_its_container_as_a_local_process(cluster: Cluster) -> None:
    code = (
        "import os, sys; print('hello from', os.environ['POD_NAME']);"
        "report = open(os.environ['MICROTASK_REPORT_PATH'], 'w');"
        "report.write(os.environ['GREETING'] + ' ' + sys.argv[1])"
    )
    created = cluster.create(
        job(
            "hello",
            py(code),
            args=["$(WHO)"],
            env=[
                {"name": "WHO", "value": "world"},
                {"name": "GREETING", "value": "hi $(WHO) $$(WHO)"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        )
    )
    done = wait_job(cluster, "hello")
    status = done["status"]
    assert status["succeeded"] == 1 and "active" not in status
    assert status["startTime"] and status["completionTime"]
    # 1.33: the success criteria are met first; Complete follows once no pod is left running.
    assert conditions(done) == {"SuccessCriteriaMet": "True", "Complete": "True"}
    [pod_obj] = pods_of(cluster, "hello")
    name = pod_obj["metadata"]["name"]
    assert re.fullmatch(r"hello-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    labels = pod_obj["metadata"]["labels"]
    assert labels["shard"] == "hello" and labels["job-name"] == "hello"
    assert labels["batch.kubernetes.io/controller-uid"] == created["metadata"]["uid"]
    [owner] = pod_obj["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"] and owner["controller"] is True
    # The job-tracking finalizer is gone once the Job controller has counted the pod.
    assert not pod_obj["metadata"].get("finalizers")
    assert pod_obj["status"]["phase"] == "Succeeded"
    state = terminated(pod_obj)
    assert (state["exitCode"], state["reason"], state["message"]) == (
        0,
        "Completed",
        "hi world $(WHO) world",
    )
    assert state["startedAt"] <= state["finishedAt"]
    assert cluster.pod_log(name) == f"hello from {name}\n"


def test_a_failing_container_fails_the_job_after_its_backoff_limit(cluster: Cluster) -> None:
    code = "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"
    cluster.create(job("once", py(code), terminationMessagePolicy="FallbackToLogsOnError"))
    # Created together: the second Job's 10 s pod-failure back-off overlaps the first Job.
    cluster.create(job("twice", py("raise SystemExit(1)"), backoff=1))

    failed = wait_job(cluster, "once", "Failed")
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    assert condition(failed, "FailureTarget")["reason"] == "BackoffLimitExceeded"
    [pod_obj] = pods_of(cluster, "once")
    assert pod_obj["status"]["phase"] == "Failed"
    state = terminated(pod_obj)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "boom\n")

    # The real Job controller waits 10 s (its pod-failure back-off) before the second pod.
    assert wait_job(cluster, "twice", "Failed", timeout=45)["status"]["failed"] == 2
    assert len(pods_of(cluster, "twice")) == 2


def test_termination_messages_are_capped_at_4096_bytes(cluster: Cluster) -> None:
    code = "import os; open(os.environ['MICROTASK_REPORT_PATH'], 'w').write('x' * 10000)"
    cluster.create(job("big", py(code)))
    wait_job(cluster, "big")
    assert terminated(pods_of(cluster, "big")[0])["message"] == "x" * 4096


def test_active_deadline_fails_the_job_and_kills_its_pod(cluster: Cluster) -> None:
    cluster.create(job("slow", SLEEP, activeDeadlineSeconds=2))
    pod = cluster.wait_for(lambda: running_pods_of(cluster, "slow"), message="the pod to run")[0]
    pid = wait_pid(cluster, pod["metadata"]["name"])
    failed = wait_job(cluster, "slow", "Failed")
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    assert condition(failed, "FailureTarget")["reason"] == "DeadlineExceeded"
    cluster.wait_for(lambda: not pods_of(cluster, "slow"), message="the killed pod to be removed")
    assert not process_alive(pid)


def test_suspend_deletes_active_pods_and_resume_starts_new_ones(cluster: Cluster) -> None:
    # backoffLimit 0: the Job controller drops the tracking finalizer before it deletes a pod
    # for suspension, so that pod is no failure (the emulator counted one and failed the Job).
    cluster.create(job("pausable", SLEEP))
    first = cluster.wait_for(lambda: running_pods_of(cluster, "pausable"))[0]["metadata"]["name"]
    pid = wait_pid(cluster, first)
    cluster.patch("jobs", "pausable", {"spec": {"suspend": True}})
    suspended = wait_job(cluster, "pausable", "Suspended")
    assert condition(suspended, "Suspended")["reason"] == "JobSuspended"
    cluster.wait_gone("pods", first)
    assert not process_alive(pid)
    status = (cluster.get("jobs", "pausable") or {})["status"]
    assert "active" not in status and "failed" not in status
    assert "Failed" not in conditions(cluster.get("jobs", "pausable"))

    cluster.patch("jobs", "pausable", {"spec": {"suspend": False}})
    resumed = cluster.wait_for(lambda: running_pods_of(cluster, "pausable"))
    assert resumed[0]["metadata"]["name"] != first
    assert condition(cluster.get("jobs", "pausable"), "Suspended")["reason"] == "JobResumed"


def test_deleting_a_job_removes_its_running_pods(cluster: Cluster) -> None:
    names = ("background", "foreground", "orphaned")
    for name in names:
        cluster.create(job(name, SLEEP))
    pods: dict[str, str] = {}
    for name in names:
        running = cluster.wait_for(partial(running_pods_of, cluster, name))
        pods[name] = running[0]["metadata"]["name"]
        wait_log(cluster, pods[name], "ready\n")
    pids = {name: cluster.pod_pid(pod_name) for name, pod_name in pods.items()}
    assert all(pids.values())
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

    # The GC removes the owner reference; the Job controller its tracking finalizer.
    def released() -> bool:
        meta = (cluster.get("pods", pods["orphaned"]) or {}).get("metadata") or {}
        return bool(meta) and not meta.get("ownerReferences") and not meta.get("finalizers")

    cluster.wait_for(released, message="the orphan to be released")
    assert (cluster.get("pods", pods["orphaned"]) or {})["status"]["phase"] == "Running"
    orphan_pid = pids["orphaned"]
    assert orphan_pid is not None and process_alive(orphan_pid)
    deleted = [pid for name, pid in pids.items() if pid and name != "orphaned"]
    cluster.wait_for(
        lambda: not any(process_alive(pid) for pid in deleted),
        message="the deleted pods' processes to die",
    )


def test_watchers_see_our_kubelets_writes(cluster: Cluster) -> None:
    mark = cluster.api.request("GET", f"/api/v1/namespaces/{cluster.namespace}/pods")["metadata"][
        "resourceVersion"
    ]
    cluster.create(pod("watched", ["true"]))
    wait_phase(cluster, "watched", "Succeeded")
    cluster.delete("pods", "watched")
    cluster.wait_gone("pods", "watched")
    with cluster.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        phases = [
            (event["type"], event["object"].status.phase)
            for event in watch.stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_pod,
                cluster.namespace,
                resource_version=mark,
                timeout_seconds=1,
            )
        ]
    assert phases[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Running") in phases and ("MODIFIED", "Succeeded") in phases
    assert phases[-1][0] == "DELETED"


def test_a_missing_priority_class_blocks_pod_creation(cluster: Cluster) -> None:
    # Cluster-scoped: a name of this test's own, removed afterwards.
    priority = f"{cluster.namespace}-high"
    cluster.create(job("urgent", ["true"], priorityClassName=priority))
    events = cluster.wait_for(
        lambda: cluster.list("events", fields="reason=FailedCreate"),
        message="a FailedCreate event",
    )
    assert events[0]["involvedObject"]["name"] == "urgent"
    assert f"no PriorityClass with name {priority} was found" in events[0]["message"]
    assert not pods_of(cluster, "urgent")
    cluster.create(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority},
            "value": 1000,
        }
    )
    try:
        # The Job controller retries the create with its API back-off (1 s, 2 s, 4 s, ...).
        wait_job(cluster, "urgent", timeout=45)
        assert pods_of(cluster, "urgent")[0]["spec"]["priority"] == 1000
    finally:
        cluster.delete("priorityclasses", priority)


def test_config_map_volumes_and_env_sources(cluster: Cluster) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "items"},
            "data": {"items.txt": "a\nb\nc\n", "mode": "fast", "LEVEL": "3"},
        }
    )
    code = (
        "import json, os; src = json.loads(os.environ['MICROTASK_ITEMS']);"
        "lines = open(src['file']).read().split();"
        "report = open(os.environ['MICROTASK_REPORT_PATH'], 'w');"
        "report.write(os.environ['MODE'] + ':' + os.environ['CM_LEVEL'] + ':' + ','.join(lines))"
    )
    body = job(
        "cm",
        py(code),
        env=[
            {"name": "MICROTASK_ITEMS", "value": '{"file": "/etc/microtask/items/items.txt"}'},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "items", "key": "mode"}}},
        ],
        volumeMounts=[{"name": "items", "mountPath": "/etc/microtask/items", "readOnly": True}],
        volumes=[{"name": "items", "configMap": {"name": "items"}}],
    )
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"prefix": "CM_", "configMapRef": {"name": "items"}}]
    cluster.create(body)
    wait_job(cluster, "cm")
    assert terminated(pods_of(cluster, "cm")[0])["message"] == "fast:3:a,b,c"


def test_host_path_and_empty_dir_volumes(cluster: Cluster, tmp_path: Path) -> None:
    host = tmp_path / "host" / "results"  # DirectoryOrCreate makes it
    code = (
        "import os;"
        "open('/data/out/from-' + os.environ['WHO'], 'w').write('records');"
        "open('/scratch/a/note', 'w').write('shared');"
        "seen = open('/scratch/b/note').read();"  # one emptyDir, mounted twice
        "earlier = sorted(os.listdir('/scratch/a'));"
        "report = open(os.environ['MICROTASK_REPORT_PATH'], 'w');"
        "report.write(seen + ':' + ','.join(earlier) + ':' + os.environ['OUT'])"
    )

    def body(name: str) -> dict[str, Any]:
        return job(
            name,
            py(code),
            env=[{"name": "WHO", "value": name}, {"name": "OUT", "value": "/data/out/x"}],
            volumeMounts=[
                {"name": "results", "mountPath": "/data/out"},
                {"name": "scratch", "mountPath": "/scratch/a"},
                {"name": "scratch", "mountPath": "/scratch/b"},
            ],
            volumes=[
                {"name": "results", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        )

    cluster.create(body("first"))
    wait_job(cluster, "first")
    # The host's folder itself, as a bind mount shows it; paths in variables point there too.
    assert terminated(pods_of(cluster, "first")[0])["message"] == f"shared:note:{host}/x"
    cluster.create(body("second"))
    wait_job(cluster, "second")
    # Each pod has an emptyDir of its own: the second saw only its own note.
    assert terminated(pods_of(cluster, "second")[0])["message"] == f"shared:note:{host}/x"
    assert sorted(p.name for p in host.iterdir()) == ["from-first", "from-second"]
    assert (host / "from-first").read_text() == "records"


def test_a_host_path_that_fails_its_type_check_keeps_the_pod_pending(
    cluster: Cluster, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    volumes = [{"name": "data", "hostPath": {"path": str(folder), "type": "Directory"}}]
    body = pod("mounts", py("import os; os.listdir('/data')"), volumes=volumes)
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    cluster.create(body)

    def waiting() -> dict[str, Any] | None:
        statuses = (cluster.get("pods", "mounts") or {}).get("status", {}).get("containerStatuses")
        state: dict[str, Any] | None = (statuses or [{}])[0].get("state", {}).get("waiting")
        return state

    state = cluster.wait_for(waiting, 20, message="a waiting container")
    assert state is not None and state["reason"] == "ContainerCreating"
    assert "is not a directory" in state["message"]
    assert (cluster.get("pods", "mounts") or {})["status"]["phase"] == "Pending"
    folder.mkdir()  # the kubelet keeps trying the mount, as a real one does
    wait_phase(cluster, "mounts", "Succeeded")


def test_the_real_runner_runs_a_shard(cluster: Cluster) -> None:
    worker = "import sys; sys.exit(4 if int(sys.argv[1]) % 3 == 0 else 0)"
    cluster.create(
        job(
            "shard",
            ["microtask-runner"],
            # $(MICROTASK_INDEX) is no pod variable: the kubelet leaves it for the runner.
            args=["--", "python", "-c", worker, "$(MICROTASK_INDEX)"],
            env=[{"name": "MICROTASK_INDEXES", "value": "0-5"}],
        )
    )
    failed = wait_job(cluster, "shard", "Failed")
    assert failed["status"]["failed"] == 1
    state = terminated(pods_of(cluster, "shard")[0])
    assert state["exitCode"] == 10
    report = Report.decode(state["message"])
    assert sorted(report.succeeded) == [1, 2, 4, 5]
    assert {code: sorted(indexes) for code, indexes in report.failed.items()} == {4: [0, 3]}


# --- the real scheduler ----------------------------------------------------------------------


def test_gpu_shards_land_on_gpu_nodes_and_cpu_shards_on_cpu_nodes(cluster: Cluster) -> None:
    for index in range(4):
        cluster.create(job(f"gpu-{index}", SLEEP, gpu=True))
    for index in range(4):
        cluster.create(job(f"cpu-{index}", SLEEP, affinity=CPU_AFFINITY))

    def scheduled() -> list[dict[str, Any]]:
        pods = [p for p in cluster.list("pods") if p["spec"].get("nodeName")]
        return pods if len(pods) == 8 else []

    # Generous: GPUs held by another test's pods that are still terminating are freed first.
    placed = cluster.wait_for(scheduled, timeout=30, message="all pods scheduled")
    nodes = {p["metadata"]["labels"]["job-name"]: p["spec"]["nodeName"] for p in placed}
    assert {nodes[f"cpu-{i}"] for i in range(4)} <= {"cpu-0", "cpu-1"}
    # Two GPUs per GPU node, one per pod: the extended resource forces two pods on each.
    assert Counter(nodes[f"gpu-{i}"] for i in range(4)) == {"gpu-0": 2, "gpu-1": 2}
    for index in range(4):  # free the GPUs now rather than when the namespace goes
        cluster.delete("jobs", f"gpu-{index}")


def test_gpu_pods_wait_for_gpu_capacity(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0")])
    cluster.create(job("starved", ["true"], gpu=True))
    [starved] = cluster.wait_for(lambda: pods_of(cluster, "starved"))
    name = starved["metadata"]["name"]
    # The real scheduler adds what preemption could do: "... preemption: 0/1 nodes ...".
    assert scheduling_message(cluster, name).startswith(
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )

    # A GPU node whose GPUs are all taken (allocatable 0) does not help either. It registers
    # with the not-ready taint, which the node lifecycle controller removes once it is Ready.
    # A pod created after that meets the full node at its first try (whether the scheduler
    # retries a waiting pod when a taint goes is the scheduler's business, not ours).
    cluster.add_node(gpu_node("gpu-0", gpus=0))

    def not_ready_taint() -> bool:
        taints = ((cluster.get("nodes", "gpu-0") or {}).get("spec") or {}).get("taints") or []
        return any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints)

    cluster.wait_for(lambda: not not_ready_taint(), timeout=60, message="gpu-0 without not-ready")
    cluster.create(job("full", ["true"], gpu=True))
    [full] = cluster.wait_for(lambda: pods_of(cluster, "full"))
    insufficient = (
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "1 node(s) didn't match Pod's node affinity/selector."
    )
    cluster.wait_for(
        lambda: scheduling_message(cluster, full["metadata"]["name"]).startswith(insufficient),
        timeout=30,
        message="the scheduler to find the GPU node full",
    )
    cluster.wait_for(
        lambda: cluster.list("events", fields="reason=FailedScheduling"),
        message="a FailedScheduling event",
    )

    # A GPU freed (allocatable up): the pod the node was full for runs there.
    cluster.set_node_capacity("gpu-0", gpus=1)
    wait_job(cluster, "full")
    assert pods_of(cluster, "full")[0]["spec"]["nodeName"] == "gpu-0"


def test_node_selectors_affinity_and_taints(cluster: Cluster) -> None:
    def placed(name: str, **spec: Any) -> str:
        cluster.create(pod(name, ["true"], **spec))
        return wait_scheduled(cluster, name)

    def term(*exprs: dict[str, Any]) -> dict[str, Any]:
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": list(exprs)}]
                }
            }
        }

    assert placed("by-selector", **on_node("cpu-1")) == "cpu-1"
    by_in = term({"key": "kubernetes.io/hostname", "operator": "In", "values": ["cpu-0"]})
    assert placed("by-in", affinity=by_in) == "cpu-0"
    not_in = term({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["cpu-0"]})
    assert placed("by-notin", affinity=not_in) == "cpu-1", "GPU nodes are tainted"
    gpu_exists = term({"key": GPU_LABEL, "operator": "Exists"})
    assert placed("tolerating", affinity=gpu_exists, tolerations=GPU_TOLERATION) in {
        "gpu-0",
        "gpu-1",
    }
    no_gpu = term({"key": GPU_LABEL, "operator": "DoesNotExist"})
    assert placed("plain", affinity=no_gpu) in {"cpu-0", "cpu-1"}
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

    cluster.create(pod("untolerated", ["true"], nodeSelector={GPU_LABEL: "true"}))
    message = scheduling_message(cluster, "untolerated")
    assert "2 node(s) had untolerated taint {nvidia.com/gpu: present}" in message
    assert "2 node(s) didn't match Pod's node affinity/selector" in message


def test_cordoned_nodes_get_no_new_pods(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0"), cpu_node("cpu-1")])
    cluster.cordon("cpu-0")
    # The node lifecycle controller taints a cordoned node; once it has, the scheduler (which
    # watches the same Node) has seen the cordon too.
    cluster.wait_for(
        lambda: any(
            t["key"] == "node.kubernetes.io/unschedulable"
            for t in (cluster.get("nodes", "cpu-0") or {})["spec"].get("taints") or []
        ),
        message="the unschedulable taint",
    )
    for index in range(3):
        cluster.create(pod(f"p{index}", ["true"]))
    assert {wait_scheduled(cluster, f"p{index}") for index in range(3)} == {"cpu-1"}

    cluster.cordon("cpu-0", False)
    cluster.create(pod("after", ["true"], **on_node("cpu-0")))
    assert wait_scheduled(cluster, "after") == "cpu-0"


# --- node and pod failures -------------------------------------------------------------------


def test_a_lost_node_kills_processes_and_leaves_pods_running(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0"), cpu_node("cpu-1")])
    cluster.create(pod("stuck", SLEEP, **on_node("cpu-0")))
    cluster.create(pod("doomed", SLEEP, **on_node("cpu-0")))
    wait_phase(cluster, "stuck", "Running")
    wait_phase(cluster, "doomed", "Running")
    pid = wait_pid(cluster, "stuck")
    cluster.set_node_ready("cpu-0", False)
    cluster.wait_for(lambda: not process_alive(pid), message="the container process to die")
    cluster.delete("pods", "doomed")  # nobody on the lost node can finish this deletion

    unreachable = {
        ("node.kubernetes.io/unreachable", "NoSchedule"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
    }

    def tainted() -> dict[str, Any] | None:
        node = cluster.get("nodes", "cpu-0")
        taints = {(t["key"], t["effect"]) for t in (node or {})["spec"].get("taints") or []}
        lost = condition(node, "Ready").get("status") == "Unknown"
        return node if lost and taints == unreachable else None

    # node-monitor-grace-period is 4 s; the node lifecycle controller then marks the node
    # Unknown and taints it, NoSchedule from the condition, NoExecute from its eviction pass.
    node = cluster.wait_for(tainted, timeout=30, message="cpu-0 Unknown and tainted")
    assert condition(node, "Ready")["reason"] == "NodeStatusUnknown"
    # Its pods are marked not ready, but stay Running: they tolerate `unreachable` for 300 s.
    cluster.wait_for(
        lambda: condition(cluster.get("pods", "stuck"), "Ready").get("status") == "False",
        message="stuck marked not ready",
    )
    assert (cluster.get("pods", "stuck") or {})["status"]["phase"] == "Running"
    doomed = cluster.get("pods", "doomed")
    assert doomed is not None and doomed["metadata"]["deletionTimestamp"], "stays terminating"

    cluster.create(pod("elsewhere", ["true"], affinity=CPU_AFFINITY))
    assert wait_phase(cluster, "elsewhere", "Succeeded")["spec"]["nodeName"] == "cpu-1"

    cluster.set_node_ready("cpu-0", True)
    cluster.wait_gone("pods", "doomed")
    recovered = wait_phase(cluster, "stuck", "Failed")
    assert terminated(recovered)["reason"] == "ContainerStatusUnknown"
    cluster.wait_for(
        lambda: (
            condition(n := cluster.get("nodes", "cpu-0"), "Ready").get("status") == "True"
            and not (n or {})["spec"].get("taints")
        ),
        timeout=30,
        message="cpu-0 Ready and untainted again",
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_deleting_a_node_deletes_its_pods_and_fails_their_job(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0"), cpu_node("cpu-1")])
    cluster.create(job("victim", SLEEP, **on_node("cpu-1")))
    [running] = cluster.wait_for(lambda: running_pods_of(cluster, "victim"))
    pid = wait_pid(cluster, running["metadata"]["name"])
    cluster.delete_node("cpu-1")
    cluster.wait_for(lambda: not process_alive(pid), message="the container process to die")
    # The real pod GC deletes pods bound to a missing node only after a 40 s quarantine,
    # checked every 20 s (the emulator did it at once): hence slow, with a generous bound.
    failed = wait_job(cluster, "victim", "Failed", timeout=120)
    assert failed["status"]["failed"] == 1
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    cluster.wait_for(lambda: not pods_of(cluster, "victim"), message="the pod to go")


def test_kubelet_eviction_fails_the_pod_with_a_disruption_condition(cluster: Cluster) -> None:
    code = (
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    open(os.environ['MICROTASK_REPORT_PATH'], 'w').write('bye')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    cluster.create(pod("evictee", py(code)))
    wait_log(cluster, "evictee", "ready\n")
    cluster.evict_pod("evictee")
    evicted = wait_phase(cluster, "evictee", "Failed")
    assert evicted["status"]["reason"] == "Evicted"
    assert condition(evicted, "DisruptionTarget")["reason"] == "TerminationByKubelet"
    state = terminated(evicted)
    assert (state["exitCode"], state["message"]) == (143, "bye")


def test_api_eviction_deletes_the_pod_gracefully(cluster: Cluster) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('SIGTERM', flush=True))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    cluster.create(pod("evictee", py(code), terminationGracePeriodSeconds=3))
    wait_log(cluster, "evictee", "ready\n")
    pid = cluster.pod_pid("evictee")
    assert pid is not None
    with cluster.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespaced_pod_eviction(
            "evictee",
            cluster.namespace,
            kubernetes.client.V1Eviction(
                metadata=kubernetes.client.V1ObjectMeta(name="evictee", namespace=cluster.namespace)
            ),
        )
    # The process ignores SIGTERM, so the pod stays terminating for its 3 s grace period.
    wait_log(cluster, "evictee", "SIGTERM\n")
    terminating = cluster.get("pods", "evictee")
    assert terminating is not None
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 3
    assert condition(terminating, "DisruptionTarget")["reason"] == "EvictionByEvictionAPI"
    cluster.wait_gone("pods", "evictee")
    assert not process_alive(pid)


def test_pod_deletion_sends_sigterm_then_sigkill_after_the_grace_period(cluster: Cluster) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(60)"
    )
    cluster.create(pod("stubborn", py(stubborn), terminationGracePeriodSeconds=1))
    wait_log(cluster, "stubborn", "ready\n")
    pid = cluster.pod_pid("stubborn")
    assert pid is not None
    started = time.monotonic()
    # The DELETE answers with the pod as it now stands: terminating, with its grace period.
    terminating = cluster.api.request(
        "DELETE", cluster.resource("pods").path(cluster.namespace, "stubborn")
    )
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 1
    cluster.wait_gone("pods", "stubborn")
    assert time.monotonic() - started >= 1.0, "SIGTERM is ignored: only SIGKILL ends it"
    assert not process_alive(pid)

    cluster.create(pod("polite", SLEEP))
    wait_log(cluster, "polite", "ready\n")
    cluster.delete("pods", "polite")
    # Well within the default 30 s grace period: SIGTERM ended it, not the SIGKILL after.
    cluster.wait_gone("pods", "polite", timeout=20)


def test_force_deletion_kills_the_container(cluster: Cluster) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(60)"
    )
    cluster.create(pod("forced", py(stubborn)))
    wait_log(cluster, "forced", "ready\n")
    pid = cluster.pod_pid("forced")
    assert pid is not None
    # `kubectl delete --force --grace-period=0`: the object goes at once, the kubelet kills.
    cluster.delete("pods", "forced", grace=0)
    assert cluster.get("pods", "forced") is None
    cluster.wait_for(lambda: not process_alive(pid), message="the container process to die")


def test_oom_kill(cluster: Cluster) -> None:
    cluster.create(pod("hungry", SLEEP))
    cluster.wait_for(lambda: cluster.pod_pid("hungry"))
    cluster.oom_kill("hungry")
    state = terminated(wait_phase(cluster, "hungry", "Failed"))
    assert (state["exitCode"], state["reason"]) == (137, "OOMKilled")


def test_slow_and_broken_nodes(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(nodes=[cpu_node("cpu-0"), cpu_node("cpu-1")])
    cluster.set_node_behaviour("cpu-0", start_delay=1.0)
    started = time.monotonic()
    cluster.create(pod("slow", ["true"], **on_node("cpu-0")))
    wait_phase(cluster, "slow", "Running")
    wait_phase(cluster, "slow", "Succeeded")
    assert time.monotonic() - started >= 1.0

    cluster.set_node_behaviour("cpu-1", fail_exit_code=7)
    cluster.create(pod("broken", ["true"], **on_node("cpu-1")))
    state = terminated(wait_phase(cluster, "broken", "Failed"))
    assert (state["exitCode"], state["reason"]) == (7, "Error")
    assert cluster.pod_log("broken") is None, "nothing ran"


def test_a_missing_command_fails_like_a_start_error(cluster: Cluster) -> None:
    cluster.create(pod("nocmd", ["definitely-not-a-command-xyz"]))
    state = terminated(wait_phase(cluster, "nocmd", "Failed"))
    assert (state["exitCode"], state["reason"]) == (128, "StartError")
    assert "definitely-not-a-command-xyz" in state["message"]


def test_restart_policy_always_and_on_failure_restart_the_container(cluster: Cluster) -> None:
    """As a Deployment's pod: restarted in CrashLoopBackOff, never Failed; OnFailure ends on 0."""
    cluster.create(pod("crashing", ["sh", "-c", "echo run; exit 3"], restartPolicy="Always"))

    def crashed() -> dict[str, Any] | None:
        found = cluster.get("pods", "crashing")
        statuses = ((found or {}).get("status") or {}).get("containerStatuses") or [{}]
        return found if statuses[0].get("restartCount", 0) >= 1 else None

    entry = cluster.wait_for(crashed, 20, message="a restart")["status"]["containerStatuses"][0]
    assert entry["lastState"]["terminated"]["exitCode"] == 3
    assert entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cluster.get("pods", "crashing")["status"]["phase"] == "Running"  # type: ignore[index]
    cluster.create(pod("once", ["true"], restartPolicy="OnFailure"))
    state = terminated(wait_phase(cluster, "once", "Succeeded"))
    assert state["exitCode"] == 0
    cluster.create(pod("no-command", [], restartPolicy="Always"))
    cluster.wait_for(
        lambda: (
            (
                ((cluster.get("pods", "no-command") or {}).get("status") or {}).get(
                    "containerStatuses", [{}]
                )[0]
            ).get("restartCount", 0)
            >= 1
        ),
        20,
        message="a container that cannot start, restarted",
    )


def test_no_process_outlives_the_cluster(tmp_path: Path) -> None:
    with start_cluster(tmp_path, nodes=[cpu_node("cpu-0")]) as cluster:
        cluster.create(
            pod("parent", ["sh", "-c", "sleep 120 & echo $! > child.pid; echo ready; wait"])
        )
        wait_log(cluster, "parent", "ready\n")
        parent = cluster.pod_pid("parent")
        assert parent is not None
        child = int((Path(f"/proc/{parent}/cwd") / "child.pid").read_text())
        assert process_alive(parent) and process_alive(child)
    # stop() has returned: it SIGKILLed the process group and reaped the main process; the
    # orphaned grandchild is reaped by init when the kernel gets to it, hence a bounded wait.
    assert not process_alive(parent)
    cluster.wait_for(lambda: not process_alive(child), timeout=10, message="the grandchild to die")


def test_dollar_var_expansion() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)-$(C)", env) == "1-two-$(C)"
    assert expand_vars("$$(A) costs $$5", env) == "$(A) costs $5"
    assert expand_vars("$(A)$$$(B)$", env) == "1$two$"
