"""The long-running part of ``hack/dev-cluster.sh``: the test control plane for people, by hand.

``python -m tests.integration.harness.devcluster --dir DIR --kubeconfig PATH`` starts the same
control plane as the API-level tests (:class:`.ControlPlane`) and our kubelet with its default
nodes (two CPU nodes, two GPU nodes with two ``nvidia.com/gpu`` each; pods run as local
processes), installs nothing else, writes an admin kubeconfig (namespace ``default``, the CA
embedded) to PATH, and once every node is Ready and schedulable writes ``DIR/ready``. It then runs
until SIGTERM or SIGINT and stops everything: the pods' processes, then the control plane.

Under DIR: ``plane/`` (etcd data, certificates, component logs), ``pods/`` (one directory per pod,
its ``container.log``), ``pids`` (``name pid`` per line: this process and the components).
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from .controlplane import ControlPlane
from .kubelet import Kubelet, KubeletSettings, default_nodes, schedulable

__all__ = ["admin_kubeconfig", "main"]

logger = logging.getLogger("devcluster")
NODES_TIMEOUT = 60.0
NAME = "microtask-dev"


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while starting (raised from the signal handler)."""


class Stop:
    """Set by SIGTERM/SIGINT; while ``starting``, the signal also interrupts the start-up."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.starting = True

    def on_signal(self, signum: int, frame: FrameType | None) -> Any:
        logger.info("%s received", signal.Signals(signum).name)
        self.event.set()
        if self.starting:
            self.starting = False
            raise Stopped


def admin_kubeconfig(server: str, token: str, ca_pem: bytes, namespace: str = "default") -> str:
    """A self-contained kubeconfig (CA inline) for the admin of the dev cluster."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": NAME,
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": NAME, "user": {"token": token}}],
            "contexts": [
                {
                    "name": NAME,
                    "context": {"cluster": NAME, "user": NAME, "namespace": namespace},
                }
            ],
            "current-context": NAME,
        },
        sort_keys=False,
    )


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (readers never see half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)


def nodes_schedulable(plane: ControlPlane, names: set[str]) -> bool:
    """Every node registered, Ready and without the not-ready taint."""
    return schedulable(plane.request("GET", "/api/v1/nodes").get("items") or [], names)


def wait_nodes(plane: ControlPlane, names: set[str]) -> None:
    deadline = time.monotonic() + NODES_TIMEOUT
    while not nodes_schedulable(plane, names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not Ready and schedulable after {NODES_TIMEOUT:.0f} s")
        plane.check_alive()
        time.sleep(0.2)


def run(directory: Path, kubeconfig_path: Path, stop: Stop) -> int:
    """Start, serve until stopped (or a component dies), stop; the exit status."""
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    plane = ControlPlane(directory / "plane")
    kubelet: Kubelet | None = None
    status = 0
    try:
        logger.info("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
        plane.start()
        pids = {"devcluster": os.getpid()} | {n: p.pid for n, p in plane.processes.items()}
        (directory / "pids").write_text("".join(f"{n} {p}\n" for n, p in pids.items()))
        nodes = default_nodes()
        logger.info("starting our kubelet with nodes %s", ", ".join(n.name for n in nodes))
        kubelet = Kubelet(
            plane.url,
            plane.identities["kubelet"].token,
            plane.ca_file,
            nodes,
            KubeletSettings(workdir=directory / "pods"),
        )
        kubelet.start()
        wait_nodes(plane, {n.name for n in nodes})
        token = plane.identities["admin"].token
        write_private(
            kubeconfig_path, admin_kubeconfig(plane.url, token, plane.ca_file.read_bytes())
        )
        stop.starting = False
        if stop.event.is_set():
            raise Stopped
        ready.write_text(f"{plane.url}\n")
        logger.info("up: API server %s, kubeconfig %s", plane.url, kubeconfig_path)
        while not stop.event.wait(1.0):
            plane.check_alive()
        logger.info("stopping")
    except Stopped:
        logger.info("stopped while starting")
    except Exception:
        logger.exception("the dev cluster failed")
        status = 1
    finally:
        stop.starting = False
        ready.unlink(missing_ok=True)
        if kubelet is not None:
            try:
                kubelet.stop()  # kills every pod's process group
            except Exception:
                logger.exception("stopping our kubelet")
                status = 1
        plane.stop()
        logger.info("stopped")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.harness.devcluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dir", type=Path, required=True, help="state: data, logs, pod dirs")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig to write")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    directory, kubeconfig_path = args.dir.resolve(), args.kubeconfig.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stop = Stop()
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGINT, stop.on_signal)
    return run(directory, kubeconfig_path, stop)


if __name__ == "__main__":
    sys.exit(main())
