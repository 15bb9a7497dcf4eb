"""hack/dev-cluster.sh: up (4 Ready nodes, a kubeconfig), env, down (no process left), twice each.

The cluster's state and kubeconfig go to a temporary directory (DEV_CLUSTER_DIR,
DEV_CLUSTER_KUBECONFIG), so a developer's own dev cluster is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness.kubelet import process_alive
from tests.kube_tools import CONTROL_PLANE, require
from tests.manifests.support import ROOT

SCRIPT = ROOT / "hack" / "dev-cluster.sh"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
NODES = {"cpu-0", "cpu-1", "gpu-0", "gpu-1"}
GPU = "nvidia.com/gpu"


def test_dev_cluster_usage() -> None:
    result = subprocess.run([str(SCRIPT)], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "up|down|env" in result.stderr


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
    kubectl = require(*CONTROL_PLANE, "kubectl")["kubectl"]
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} is missing: the script runs the cluster with the venv's python")
    state, kubeconfig = tmp_path / "state", tmp_path / "dev.yaml"
    env = {
        **os.environ,
        "DEV_CLUSTER_DIR": str(state),
        "DEV_CLUSTER_KUBECONFIG": str(kubeconfig),
        "DEV_CLUSTER_TIMEOUT": "150",
    }

    def script(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), command],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

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
        again = script("up")
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr

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

        # A pod's local process, which `down` must stop too.
        kube(
            "run", "sleeper", "--image=busybox", "--restart=Never", "--command", "--", "sleep", "1h"
        )
        kube("wait", "--for=jsonpath={.status.phase}=Running", "pod/sleeper", "--timeout=60s")
        pods = _pod_processes(state)
        assert pods, "the pod's process was not found"
        components = {
            int(line.split()[1]) for line in (state / "pids").read_text().splitlines() if line
        }
        assert len(components) == 5  # this devcluster process and the four components
        processes = pods | components
        assert all(process_alive(pid) for pid in processes)

        started = time.monotonic()
        down = script("down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert time.monotonic() - started < 60
        assert not [pid for pid in processes if process_alive(pid)]
        assert not state.exists() and not kubeconfig.exists()

        down_again = script("down")
        assert down_again.returncode == 0 and "not up" in down_again.stderr
    finally:
        if state.exists():
            script("down", timeout=120)
