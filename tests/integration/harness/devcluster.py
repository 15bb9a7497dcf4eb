"""The long-running part of ``hack/dev-cluster.sh``: the test control plane for people, by hand.

``python -m tests.integration.harness.devcluster --dir DIR --kubeconfig PATH`` starts the same
control plane as the API-level tests (:class:`.ControlPlane`) and our kubelet with its default
nodes (two CPU nodes, two GPU nodes with two ``nvidia.com/gpu`` each; pods run as local
processes), installs nothing else, writes an admin kubeconfig (namespace ``default``, the CA
embedded) to PATH, and once every node is Ready and schedulable writes ``DIR/ready``. It then runs
until SIGTERM or SIGINT and stops everything: the pods' processes, the control plane, MinIO.

Beside the cluster, an S3-compatible result store: a MinIO server (the harness's
:class:`.MinioServer`, the binary ``hack/kube-binaries.sh`` builds) on ``127.0.0.1:--minio-port``
(9000), root user ``microtask``, password ``microtask-dev-secret``, with a bucket ``microtask``;
the Secret ``microtask-s3`` in namespace ``default`` holds those credentials
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as ``spec.output.s3.secretName`` wants them.

Under DIR: ``plane/`` (etcd data, certificates, component logs), ``pods/`` (one directory per pod,
its ``container.log``), ``minio/`` (``data/``, ``minio.log``), ``pids`` (``name pid`` per line:
this process, the components and MinIO).
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from tests.kube_tools import MINIO, find

from .controlplane import ControlPlane
from .kubelet import Kubelet, KubeletSettings, default_nodes, schedulable
from .minio import MinioServer

__all__ = ["DevMinio", "admin_kubeconfig", "main", "s3_secret"]

logger = logging.getLogger("devcluster")
NODES_TIMEOUT = 60.0
SECRET_TIMEOUT = 30.0
NAME = "microtask-dev"
NAMESPACE = "default"
# The S3 result store: fixed, documented values (a local test server, on loopback only).
MINIO_PORT = 9000
MINIO_USER = "microtask"
MINIO_PASSWORD = "microtask-dev-secret"
BUCKET = "microtask"
SECRET = "microtask-s3"


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


def port_in_use(port: int) -> bool:
    """Something listens on 127.0.0.1:port (a socket left in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class DevMinio(MinioServer):
    """The harness's MinIO server on a fixed port, with the dev cluster's fixed credentials."""

    def __init__(self, directory: Path, port: int) -> None:
        super().__init__(directory, access_key=MINIO_USER, secret_key=MINIO_PASSWORD, port=port)

    def start(self) -> DevMinio:
        if port_in_use(self.port):
            raise RuntimeError(
                f"127.0.0.1:{self.port}, MinIO's port, is already in use (another MinIO, or the "
                "dev cluster of another DEV_CLUSTER_DIR?): free it, or choose another port with "
                "DEV_CLUSTER_MINIO_PORT"
            )
        binary = find(MINIO)
        if binary is None:
            raise RuntimeError(
                "no MinIO server: hack/kube-binaries.sh --minio builds it "
                "(or set MICROTASK_MINIO=/path/to/minio)"
            )
        self.launch(binary)
        return self


def s3_secret() -> dict[str, Any]:
    """The Secret a job's ``spec.output.s3.secretName`` names: MinIO's credentials."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"AWS_ACCESS_KEY_ID": MINIO_USER, "AWS_SECRET_ACCESS_KEY": MINIO_PASSWORD},
    }


def create_secret(plane: ControlPlane) -> None:
    """Create the S3 Secret, once the namespace exists (the API server makes it at start-up)."""
    deadline = time.monotonic() + SECRET_TIMEOUT
    while True:
        try:
            plane.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", s3_secret())
            return
        except urllib.error.HTTPError as error:
            if error.code == 409:  # already there
                return
            if error.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


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


def run(directory: Path, kubeconfig_path: Path, stop: Stop, minio_port: int = MINIO_PORT) -> int:
    """Start, serve until stopped (or a component dies), stop; the exit status."""
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    plane = ControlPlane(directory / "plane")
    minio = DevMinio(directory / "minio", minio_port)
    kubelet: Kubelet | None = None
    status = 0
    try:
        logger.info("starting MinIO on %s (log: %s)", minio.endpoint, minio.log_file)
        minio.start()
        minio.create_bucket(BUCKET)
        logger.info("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
        plane.start()
        assert minio.process is not None
        pids = (
            {"devcluster": os.getpid()}
            | {n: p.pid for n, p in plane.processes.items()}
            | {"minio": minio.process.pid}
        )
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
        create_secret(plane)
        token = plane.identities["admin"].token
        write_private(
            kubeconfig_path, admin_kubeconfig(plane.url, token, plane.ca_file.read_bytes())
        )
        stop.starting = False
        if stop.event.is_set():
            raise Stopped
        ready.write_text(f"{plane.url}\n")
        logger.info(
            "up: API server %s, kubeconfig %s, MinIO %s (bucket %s, Secret %s/%s)",
            plane.url,
            kubeconfig_path,
            minio.endpoint,
            BUCKET,
            NAMESPACE,
            SECRET,
        )
        while not stop.event.wait(1.0):
            plane.check_alive()
            minio.check_alive()
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
        try:
            minio.stop()
        except Exception:
            logger.exception("stopping MinIO")
            status = 1
        logger.info("stopped")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.harness.devcluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dir", type=Path, required=True, help="state: data, logs, pod dirs")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig to write")
    parser.add_argument(
        "--minio-port", type=int, default=MINIO_PORT, help="MinIO's port on 127.0.0.1 (9000)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    directory, kubeconfig_path = args.dir.resolve(), args.kubeconfig.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    stop = Stop()
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGINT, stop.on_signal)
    return run(directory, kubeconfig_path, stop, args.minio_port)


if __name__ == "__main__":
    sys.exit(main())
