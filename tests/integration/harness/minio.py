"""A real MinIO server for the S3 result-store tests, as a child process on 127.0.0.1.

The binary is the one ``hack/kube-binaries.sh`` builds from source (see :mod:`tests.kube_tools`;
``MICROTASK_MINIO`` names another). The server keeps its objects in a temporary directory, listens
on a free port, and is ready when ``/minio/health/ready`` answers 200. Buckets are made with the
server's own S3 API (boto3), as a user would.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kube_tools import MINIO, require

from .controlplane import free_port

__all__ = ["MinioServer"]

STARTUP_TIMEOUT = 60.0
ROOT_USER = "microtask-test"


@dataclass
class MinioServer:
    """``minio server`` with its data in ``directory``; ``start()``, then ``stop()``."""

    directory: Path
    access_key: str = ROOT_USER
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _client: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "minio.log"

    def environment(self) -> dict[str, str]:
        """What a client of this server needs in its environment (the runner, a CLI)."""
        return {
            "MICROTASK_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            # Never ask an instance-metadata service for credentials: there is none here.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MinioServer:
        """Start on ``port`` (0: a free one) with the binary tests find (skip or fail without)."""
        return self.launch(require(MINIO)[MINIO])

    def launch(self, binary: Path) -> MinioServer:
        """Start ``binary``; ready (or stopped and raising) when this returns."""
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if key.lower() not in ("http_proxy", "https_proxy") and not key.startswith("MINIO_")
        }
        env.update(
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_REGION=self.region,
            # No phoning home and no web console: a test server on loopback only.
            MINIO_UPDATE="off",
            MINIO_BROWSER="off",
            MINIO_CALLHOME_ENABLE="off",
            HOME=str(self.directory),
        )
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "server",
                    "--quiet",
                    "--address",
                    f"127.0.0.1:{self.port}",
                    "--certs-dir",
                    str(self.directory / "certs"),
                    str(data),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.directory,
                start_new_session=True,  # a Ctrl-C of the tests does not stop it mid-test
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        url = f"{self.endpoint}/minio/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            self.check_alive()
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"MinIO not ready after {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise, with the tail of its log, when the server has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"MinIO exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bound."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ S3

    def client(self) -> Any:
        """A boto3 client of this server, as the root user (made once)."""
        if self._client is None:
            from microtask_runner.s3 import client_for

            self._client = client_for(
                endpoint=self.endpoint,
                access_key=self.access_key,
                secret_key=self.secret_key,
                region=self.region,
            )
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        """A new bucket (a fresh name unless given); its name."""
        bucket = name or f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket
