"""The real Kubernetes control plane as child processes: etcd, kube-apiserver, controller-manager,
scheduler, with an admin kubeconfig, static tokens for the components and an audit log.

The binaries come from ``hack/kube-binaries.sh`` (see :mod:`tests.kube_tools`). The API server
runs as a cluster would have it: TLS on 127.0.0.1, ``--authorization-mode=Node,RBAC``, the default
admission plugins (PodSecurity, ServiceAccount, Priority, DefaultTolerationSeconds, ...) plus
NodeRestriction, service-account tokens signed with a key of this control plane. Timings that a
production cluster keeps long for stability are short here so node loss shows within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.kube_tools import CONTROL_PLANE, require

from .certs import Credentials, generate

__all__ = ["ADMIN_USER", "ControlPlane", "Identity", "kubeconfig"]

ADMIN_USER = "microtask-test-admin"
# How long a node may miss its heartbeats before the node lifecycle controller marks it
# NotReady (production: 40 s; our kubelet renews every second).
NODE_MONITOR_GRACE_SECONDS = 4
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
STARTUP_TIMEOUT = 90.0

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One record per request, when its answer is complete (or its watch stream started).
    "omitStages": ["RequestReceived"],
    "rules": [
        # What clients under test do: service accounts outside kube-system (the operator's),
        # and test users; the control plane's own chatter (leases, node status) is left out.
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "None", "users": ["system:kube-controller-manager", "system:kube-scheduler"]},
        {"level": "None", "userGroups": ["system:nodes", "system:masters"]},
        {"level": "Metadata"},
    ],
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Identity:
    """A static-token user of the API server."""

    name: str
    token: str
    groups: tuple[str, ...] = ()


def kubeconfig(server: str, token: str, ca_file: Path | None, *, namespace: str = "default") -> str:
    """A kubeconfig (YAML) for one server and bearer token."""
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
    )


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in ``directory``."""

    directory: Path
    controllers: str = "*"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    credentials: Credentials | None = None
    identities: dict[str, Identity] = field(default_factory=dict)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Start all four components and wait until the API serves and pods can be created."""
        binaries = require(*CONTROL_PLANE)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.credentials = generate(self.directory / "pki")
        self._write_identities()
        try:
            etcd_url = self._start_etcd(binaries["etcd"])
            self._start_apiserver(binaries["kube-apiserver"], etcd_url)
            self._wait_ready()
            self._start_controller_manager(binaries["kube-controller-manager"])
            self._start_scheduler(binaries["kube-scheduler"])
            self._wait_default_service_account()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the components in reverse order (SIGTERM, then SIGKILL after a bound)."""
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise (with the tail of its log) when a component has died."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a component's log."""
        path = self.directory / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- clients -------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        assert self.credentials is not None
        return self.credentials.ca_cert

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def kubeconfig_for(self, identity: str, *, server: str | None = None) -> Path:
        """A kubeconfig file of a static identity (``admin``, ``kubelet``, ...)."""
        path = self.directory / f"{identity}.kubeconfig"
        if not path.exists():
            ca = self.ca_file if (server or self.url).startswith("https") else None
            token = self.identities[identity].token
            path.write_text(kubeconfig(server or self.url, token, ca))
        return path

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig_for("admin")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """One JSON request as the admin (or ``token``); raises ``urllib.error.HTTPError``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.identities['admin'].token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as reply:
            raw = reply.read()
        return json.loads(raw) if raw else None

    # --- components ----------------------------------------------------------------------------

    def _write_identities(self) -> None:
        self.identities = {
            "admin": Identity(ADMIN_USER, secrets.token_hex(16), ("system:masters",)),
            # Our kubelet plays every node at once, so it cannot be one system:node:NAME; it
            # acts with full rights, as the one component this project fakes.
            "kubelet": Identity(
                "microtask-test-kubelet", secrets.token_hex(16), ("system:masters",)
            ),
            "controller-manager": Identity("system:kube-controller-manager", secrets.token_hex(16)),
            "scheduler": Identity("system:kube-scheduler", secrets.token_hex(16)),
        }
        rows = [
            f'{i.token},{i.name},{i.name},"{",".join(i.groups)}"'
            if i.groups
            else f"{i.token},{i.name},{i.name}"
            for i in self.identities.values()
        ]
        (self.directory / "tokens.csv").write_text("\n".join(rows) + "\n")
        (self.directory / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            # Its own process group, so a test interrupted with Ctrl-C does not kill it mid-stop.
            start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def _start_etcd(self, binary: Path) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(binary),
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                # A test cluster's data dies with it: durability costs seconds per test here.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return url

    def _start_apiserver(self, binary: Path, etcd_url: str) -> None:
        assert self.credentials is not None
        creds = self.credentials
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service cannot point at a loopback address; nothing needs it.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--cert-dir={self.directory / 'apiserver-certs'}",
                f"--tls-cert-file={creds.serving_cert}",
                f"--tls-private-key-file={creds.serving_key}",
                f"--client-ca-file={creds.ca_cert}",
                f"--token-auth-file={self.directory / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={creds.sa_pub}",
                f"--service-account-signing-key-file={creds.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                f"--audit-policy-file={self.directory / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--profiling=false",
                "--v=0",
            ],
        )

    def _component_kubeconfig(self, identity: str) -> Path:
        return self.kubeconfig_for(identity)

    def _start_controller_manager(self, binary: Path) -> None:
        assert self.credentials is not None
        self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self._component_kubeconfig('controller-manager')}",
                "--leader-elect=false",
                "--secure-port=0",
                # Each controller acts as its own service account, with the roles a real
                # cluster binds (system:controller:job-controller, ...).
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.credentials.sa_key}",
                f"--root-ca-file={self.credentials.ca_cert}",
                f"--controllers={self.controllers}",
                "--node-monitor-period=1s",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s",
                "--v=0",
            ],
        )

    def _start_scheduler(self, binary: Path) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(binary),
                f"--kubeconfig={self._component_kubeconfig('scheduler')}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=0",
            ],
        )

    # --- readiness -----------------------------------------------------------------------------

    def _poll(self, what: str, probe: Any, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if probe():
                    return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last: {last})")

    def _wait_ready(self) -> None:
        def ready() -> bool:
            request = urllib.request.Request(self.url + "/readyz")
            request.add_header("Authorization", f"Bearer {self.identities['admin'].token}")
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as reply:
                return bool(reply.status == 200)

        self._poll("kube-apiserver", ready)

    def _wait_default_service_account(self) -> None:
        """Pods need the namespace's default ServiceAccount, made by the controller-manager."""

        def exists() -> bool:
            with contextlib.suppress(urllib.error.HTTPError):
                self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
                return True
            return False

        self._poll("kube-controller-manager (default ServiceAccount)", exists)

    # --- audit log -----------------------------------------------------------------------------

    def audit_position(self) -> int:
        """The audit log's current size, for ``audit_events(since=...)``."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit_events(self, since: int = 0) -> Iterator[dict[str, Any]]:
        """Audit events written after ``since`` (one per request; watches once, when started)."""
        if not self.audit_log.exists():
            return
        seen: set[str] = set()
        with self.audit_log.open("rb") as handle:
            handle.seek(since)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written right now
                event = json.loads(line)
                if event["auditID"] in seen:
                    continue  # a watch's ResponseComplete after its ResponseStarted
                seen.add(event["auditID"])
                yield event


def environment_without_proxies() -> dict[str, str]:
    """This process's environment minus proxy settings (our servers are all on loopback)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
