"""Fixtures of the result-store tests: one real MinIO server for the run, a bucket per test.

``minio_server`` starts the MinIO built by ``hack/kube-binaries.sh`` once per session (skipped
with how to build it when missing, failed when ``CI=true``). ``bucket`` is a fresh, empty bucket
of that server, ``s3_env`` what a client (the runner) needs in its environment to reach it, and
``open_s3(url)`` an ``S3Store`` of the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from microtask_operator.results.s3store import S3Store

from tests.integration.harness.minio import MinioServer


@pytest.fixture(scope="session", autouse=True)
def _no_instance_metadata() -> Iterator[None]:
    """boto3 must never ask an instance-metadata service for credentials: none is reachable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture
def bucket(minio_server: MinioServer) -> str:
    """A new, empty bucket."""
    minio_server.check_alive()
    return minio_server.create_bucket()


@pytest.fixture
def s3_env(minio_server: MinioServer) -> dict[str, str]:
    """The environment variables a client of the server needs (endpoint, keys, region)."""
    return minio_server.environment()


@pytest.fixture
def open_s3(minio_server: MinioServer) -> Callable[..., S3Store]:
    """``open_s3(url, **options)``: an S3Store of the server (options override its settings)."""

    def make(url: str, **options: Any) -> S3Store:
        settings: dict[str, Any] = {
            "endpoint": minio_server.endpoint,
            "access_key": minio_server.access_key,
            "secret_key": minio_server.secret_key,
            "region": minio_server.region,
        }
        settings.update(options)
        return S3Store(url, **settings)

    return make
