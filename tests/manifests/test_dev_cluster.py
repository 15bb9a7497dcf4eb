"""hack/dev-cluster.sh: up (4 Ready nodes, MinIO, a kubeconfig), env, status, down (no process
left), twice each; and the README's walkthrough of result records on it, command by command.

The cluster's state and kubeconfig go to a temporary directory (DEV_CLUSTER_DIR,
DEV_CLUSTER_KUBECONFIG), and MinIO to a free port unless a test needs the default one, so a
developer's own dev cluster is left alone.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness.controlplane import free_port
from tests.integration.harness.kubelet import process_alive
from tests.kube_tools import CONTROL_PLANE, MINIO, require
from tests.manifests.support import ROOT

SCRIPT = ROOT / "hack" / "dev-cluster.sh"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MICROTASK = ROOT / ".venv" / "bin" / "microtask"
EXAMPLE = ROOT / "examples" / "results-s3.yaml"
NODES = {"cpu-0", "cpu-1", "gpu-0", "gpu-1"}
GPU = "nvidia.com/gpu"
# What the dev cluster's S3 result store is, as its documentation says.
MINIO_USER, MINIO_PASSWORD = "microtask", "microtask-dev-secret"
BUCKET, SECRET, DEFAULT_MINIO_PORT = "microtask", "microtask-s3", 9000
# examples/results-s3.yaml: the items divisible by 13 fail in the job `squares`.
FAILING = [0, 13, 26, 39, 52, 65, 78, 91]


def test_dev_cluster_usage() -> None:
    result = subprocess.run([str(SCRIPT)], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "up|down|env|status" in result.stderr


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _minio_ready(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/minio/health/ready", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@dataclass
class DevCluster:
    """hack/dev-cluster.sh with its state, kubeconfig and MinIO port of one test."""

    state: Path
    kubeconfig: Path
    minio_port: int

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DEV_CLUSTER_DIR": str(self.state),
            "DEV_CLUSTER_KUBECONFIG": str(self.kubeconfig),
            "DEV_CLUSTER_TIMEOUT": "150",
            "DEV_CLUSTER_MINIO_PORT": str(self.minio_port),
        }

    def script(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), command],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextmanager
def dev_cluster(tmp_path: Path, minio_port: int) -> Iterator[DevCluster]:
    """Up (asserted), yielded, and down in any case."""
    require(*CONTROL_PLANE, "kubectl", MINIO)
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} is missing: the script runs the cluster with the venv's python")
    cluster = DevCluster(tmp_path / "state", tmp_path / "dev.yaml", minio_port)
    try:
        up = cluster.script("up", timeout=200)
        assert up.returncode == 0, up.stdout + up.stderr
        yield cluster
    finally:
        if cluster.state.exists():
            cluster.script("down", timeout=120)


def test_dev_cluster_refuses_a_taken_minio_port(tmp_path: Path) -> None:
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} is missing: the script runs the cluster with the venv's python")
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = DevCluster(state, tmp_path / "dev.yaml", port)
        result = cluster.script("up")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"127.0.0.1:{port}, MinIO's port, is already in use" in result.stderr
    assert "DEV_CLUSTER_MINIO_PORT" in result.stderr
    assert not state.exists()  # nothing was started
    for port_value in ("0", "nine", "70000"):
        result = subprocess.run(
            [str(SCRIPT), "up"],
            check=False,
            env={**cluster.env, "DEV_CLUSTER_MINIO_PORT": port_value},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1 and "DEV_CLUSTER_MINIO_PORT must be" in result.stderr


def _pod_processes(state: Path) -> set[int]:
    """Processes our kubelet started for pods (HOME is the pod's directory under state/pods)."""
    marker = f"HOME={state}/pods/".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(entry.startswith(marker) for entry in environ.split(b"\0")):
            found.add(int(proc.name))
    return found


@pytest.mark.slow
def test_dev_cluster_up_env_down(tmp_path: Path) -> None:
    kubectl = require(*CONTROL_PLANE, "kubectl", MINIO)["kubectl"]
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} is missing: the script runs the cluster with the venv's python")
    state, kubeconfig = tmp_path / "state", tmp_path / "dev.yaml"
    minio_port = free_port()  # not 9000: a developer's own dev cluster may hold it
    cluster = DevCluster(state, kubeconfig, minio_port)
    script = cluster.script

    def kube(*args: str) -> str:
        result = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        up = script("up", timeout=200)
        assert up.returncode == 0, up.stdout + up.stderr
        assert kubeconfig.exists() and (state / "ready").exists()
        assert f"MinIO at http://127.0.0.1:{minio_port}" in up.stdout
        assert f"{state}/minio/minio.log" in up.stdout
        again = script("up")
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr
        status = script("status")
        assert status.returncode == 0 and "up (pid" in status.stderr, status.stderr
        assert f"{state}/minio/minio.log" in status.stdout

        # The S3 result store: MinIO with its bucket, and the Secret that names its credentials.
        assert _minio_ready(minio_port)
        assert (state / "minio" / "minio.log").is_file()
        from microtask_runner.s3 import client_for

        s3 = client_for(
            endpoint=f"http://127.0.0.1:{minio_port}",
            access_key=MINIO_USER,
            secret_key=MINIO_PASSWORD,
            region=None,
        )
        s3.head_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
        assert any((state / "minio" / "data" / BUCKET).iterdir())  # its data is in the state
        secret = json.loads(kube("get", "secret", SECRET, "-n", "default", "-o", "json"))
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert decoded == {"AWS_ACCESS_KEY_ID": MINIO_USER, "AWS_SECRET_ACCESS_KEY": MINIO_PASSWORD}

        nodes = json.loads(kube("get", "nodes", "-o", "json"))["items"]
        ready = {
            n["metadata"]["name"]
            for n in nodes
            if {c["type"]: c["status"] for c in n["status"]["conditions"]}.get("Ready") == "True"
        }
        assert ready == NODES
        gpus = {n["metadata"]["name"]: n["status"]["allocatable"].get(GPU) for n in nodes}
        assert gpus == {"cpu-0": None, "cpu-1": None, "gpu-0": "2", "gpu-1": "2"}
        assert "namespace: default" in kubeconfig.read_text()

        printed = script("env")
        assert printed.returncode == 0
        assert f"export KUBECONFIG={kubeconfig}" in printed.stdout.splitlines()
        assert any(line.startswith("export PATH=") for line in printed.stdout.splitlines())

        # A pod's local process, which `down` must stop too.
        kube(
            "run", "sleeper", "--image=busybox", "--restart=Never", "--command", "--", "sleep", "1h"
        )
        kube("wait", "--for=jsonpath={.status.phase}=Running", "pod/sleeper", "--timeout=60s")
        pods = _pod_processes(state)
        assert pods, "the pod's process was not found"
        components = dict(line.split() for line in (state / "pids").read_text().splitlines())
        # this devcluster process, the four components and MinIO
        assert set(components) == {"devcluster", *CONTROL_PLANE, "minio"}
        processes = pods | {int(pid) for pid in components.values()}
        assert all(process_alive(pid) for pid in processes)

        started = time.monotonic()
        down = script("down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert time.monotonic() - started < 60
        assert not [pid for pid in processes if process_alive(pid)]
        assert not state.exists() and not kubeconfig.exists()
        assert not _minio_ready(minio_port) and _port_free(minio_port)

        down_again = script("down")
        assert down_again.returncode == 0 and "not up" in down_again.stderr
        status = script("status")
        assert status.returncode == 1 and "not up" in status.stderr
    finally:
        if state.exists():
            script("down", timeout=120)


@pytest.mark.slow
def test_the_readme_walkthrough_of_result_records(tmp_path: Path) -> None:
    """The README's commands on the dev cluster, run as a user runs them from the repository root
    after `eval "$(hack/dev-cluster.sh env)"`: submit, get, results, logs, rerun, delete."""
    if not MICROTASK.exists():
        pytest.skip(f"{MICROTASK} is missing: pip install -e '.[dev]' in .venv")
    example = "examples/results-s3.yaml"
    minio_port = DEFAULT_MINIO_PORT
    if not _port_free(minio_port):  # a developer's dev cluster holds it: a copy, another port
        minio_port = free_port()
        copy = tmp_path / "results-s3.yaml"
        text = EXAMPLE.read_text()
        assert text.count("http://127.0.0.1:9000") == 1
        copy.write_text(text.replace("http://127.0.0.1:9000", f"http://127.0.0.1:{minio_port}"))
        example = str(copy)

    with dev_cluster(tmp_path, minio_port) as cluster:
        # The user's own S3 credentials would win over the Secret's: a clean shell has none.
        env = {
            k: v for k, v in cluster.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")
        }
        prologue = 'eval "$(hack/dev-cluster.sh env)"\n'

        def shell(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-c", prologue + command],
                cwd=ROOT,
                env=env,
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        def ok(command: str, timeout: float = 120) -> str:
            result = shell(command, timeout)
            assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
            return result.stdout

        ok("kubectl apply -f deploy/crd.yaml")
        ok("kubectl wait --for condition=established crd/microtaskjobs.microtask.dev")
        operator_log = tmp_path / "operator.log"
        with operator_log.open("wb") as log:
            operator = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    prologue + "exec .venv/bin/microtask operator --metrics-port 0 --health-port 0",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            submitted = shell(f".venv/bin/microtask submit {example} --watch", timeout=180)
            assert submitted.returncode == 0, (
                submitted.stdout + submitted.stderr + operator_log.read_text()[-3000:]
            )
            # the watch's progress and summary go to stderr
            summary = submitted.stderr
            assert "microtaskjob/squares Succeeded: 92/100 succeeded, 8 failed" in summary
            assert "failed microtasks: 0,13,26,39,52,65,78,91" in summary

            got = ok(".venv/bin/microtask get squares")
            assert "Succeeded" in got and "92/100" in got and "(tolerated)" in got

            failed = [
                json.loads(line)
                for line in ok(".venv/bin/microtask results squares --failed").splitlines()
            ]
            assert [r["index"] for r in failed] == FAILING
            assert {r["outcome"] for r in failed} == {"failed"}
            assert all("upstream unavailable" in r["error"] for r in failed)

            csv = ok(".venv/bin/microtask results squares -o csv | head -3").splitlines()
            assert csv[0].startswith("index,attempt,outcome,exitCode")
            assert csv[1].startswith("0,1,failed,3,")
            assert csv[2].startswith("1,1,succeeded,0,") and '{""n"":1,""square"":1}' in csv[2]

            assert "upstream unavailable" in ok(".venv/bin/microtask logs squares --index 13")

            rerun = shell(".venv/bin/microtask rerun squares --failed --watch", timeout=180)
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert "squares-rerun-1 created" in rerun.stdout + rerun.stderr
            assert "microtaskjob/squares-rerun-1 Succeeded: 8/8 succeeded" in rerun.stderr

            after = shell(".venv/bin/microtask results squares --failed")
            assert after.returncode == 0 and after.stdout == "", after.stdout + after.stderr
            assert ok(".venv/bin/microtask results squares --results-only | wc -l").strip() == "100"
            results = ok(".venv/bin/microtask results squares --results-only").splitlines()
            assert [json.loads(line) for line in results] == [
                {"n": n, "square": n * n} for n in range(100)
            ]

            listed = ok('PATH="$PWD/.venv/bin:$PATH" kubectl microtask get')
            assert "squares " in listed and "squares-rerun-1" in listed

            ok(".venv/bin/microtask delete squares squares-rerun-1 --wait")
            left = shell(".venv/bin/microtask get")
            assert left.returncode == 0 and "No MicrotaskJobs found" in left.stdout + left.stderr
        finally:
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait(10)
