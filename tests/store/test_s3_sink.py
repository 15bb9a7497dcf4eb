"""The runner's S3 sink against a real MinIO server: exact bytes, rate-limited uploads, failures."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from microtask_runner.output import SinkUnavailable, open_sink
from microtask_runner.s3 import S3Sink, S3UploadError, parse_s3_url

from tests.integration.harness.controlplane import free_port
from tests.integration.harness.minio import MinioServer

RECORDS = "records/000000000000-job-3.jsonl"
LOG = "logs/job-3.log"


def read(server: MinioServer, bucket: str, key: str) -> bytes | None:
    try:
        body = server.client().get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as error:
        if getattr(error, "response", {}).get("Error", {}).get("Code") == "NoSuchKey":
            return None
        raise
    with contextlib.closing(body):
        data: bytes = body.read()
    return data


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def sinks() -> Iterator[Callable[..., S3Sink]]:
    """``make(url, env, **options)``: an S3Sink closed after the test."""
    made: list[S3Sink] = []

    def make(url: str, env: dict[str, str], **options: Any) -> S3Sink:
        sink = S3Sink(url, env, **options)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


# ------------------------------------------------------------------ what is uploaded


def test_final_flush_uploads_exactly_the_bytes_appended(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}/jobs/thumbs", s3_env)
    records = [f'{{"index":{i},"result":"é{i}"}}\n'.encode() for i in range(200)]
    log = [bytes(range(256)) * 3, b"", b"no newline at the end"]
    for i, line in enumerate(records):
        sink.append(RECORDS, line)
        if i % 50 == 0:
            sink.append(LOG, log[0])
    sink.append(LOG, log[2])
    sink.flush(final=True)
    assert read(minio_server, bucket, f"jobs/thumbs/{RECORDS}") == b"".join(records)
    assert read(minio_server, bucket, f"jobs/thumbs/{LOG}") == log[0] * 4 + log[2]
    # More after a final flush (the runner does not, but a sink must not lose it) and again.
    sink.append(RECORDS, b"late\n")
    sink.flush(final=True)
    assert read(minio_server, bucket, f"jobs/thumbs/{RECORDS}") == b"".join(records) + b"late\n"


def test_a_big_object_is_uploaded_from_its_spool_file(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}", s3_env)
    chunk = os.urandom(1 << 20)
    for _ in range(12):
        sink.append(LOG, chunk)
    sink.flush(final=True)
    assert read(minio_server, bucket, LOG) == chunk * 12


def test_a_bucket_without_prefix_and_the_object_content_types(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}/", s3_env)
    sink.append(RECORDS, b"{}\n")
    sink.append(LOG, b"hello\n")
    sink.flush(final=True)
    client = minio_server.client()
    assert client.head_object(Bucket=bucket, Key=RECORDS)["ContentType"] == "application/x-ndjson"
    assert client.head_object(Bucket=bucket, Key=LOG)["ContentType"].startswith("text/plain")


def test_interim_flushes_upload_at_most_once_per_interval(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}/p", s3_env, interval=2.0)
    key = f"p/{RECORDS}"
    start = time.monotonic()
    sink.append(RECORDS, b"0\n")
    sink.flush(final=False)  # the first is uploaded at once
    wait_for(lambda: read(minio_server, bucket, key) == b"0\n", timeout=5)
    for i in range(1, 20):  # many microtasks in quick succession: one more upload, later
        sink.append(RECORDS, f"{i}\n".encode())
        sink.flush(final=False)
    assert read(minio_server, bucket, key) == b"0\n"
    everything = b"".join(f"{i}\n".encode() for i in range(20))
    # Nothing more is called: the sink uploads the rest by itself once the interval is up.
    wait_for(lambda: read(minio_server, bucket, key) == everything, timeout=5)
    assert time.monotonic() - start >= 2.0
    assert sink.uploads == 2


def test_only_flushed_bytes_are_uploaded_before_the_final_flush(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}", s3_env, interval=0.5)
    sink.append(RECORDS, b'{"index":0}\n')
    sink.flush(final=False)  # uploaded at once
    wait_for(lambda: sink.uploads == 1)
    sink.append(RECORDS, b'{"index":1}\n')
    sink.flush(final=False)  # uploaded when the interval is up...
    sink.append(RECORDS, b'{"index":2')  # ...without this record, still half written then
    wait_for(lambda: sink.uploads == 2)
    assert read(minio_server, bucket, RECORDS) == b'{"index":0}\n{"index":1}\n'
    sink.append(RECORDS, b"}\n")
    sink.flush(final=True)
    assert read(minio_server, bucket, RECORDS) == b'{"index":0}\n{"index":1}\n{"index":2}\n'
    assert sink.uploads == 3


def test_open_sink_picks_the_s3_sink(bucket: str, s3_env: dict[str, str]) -> None:
    sink = open_sink(f"s3://{bucket}/x", s3_env)
    try:
        assert isinstance(sink, S3Sink)
        assert sink.endpoint == s3_env["MICROTASK_S3_ENDPOINT"]
    finally:
        sink.close()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Upper_Case/p", "not a valid bucket name"),
        ("s3://ab/p", "not a valid bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' part"),
        ("s3://bucket/a/../b", "empty, '.' or '..' part"),
        ("s3://user@bucket/p", "without user, port"),
        ("s3://bucket/p?x=1", "without user, port"),
        ("http://bucket/p", "not an s3://bucket/prefix URL"),
    ],
)
def test_a_malformed_url_is_an_error_at_construction(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        S3Sink(url, {})
    if url.startswith("s3"):  # the runner's open_sink says which store it could not use
        with pytest.raises(SinkUnavailable, match=f"result store {re.escape(repr(url))}: "):
            open_sink(url, {})


def test_urls_name_a_bucket_and_a_prefix() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b")
    assert parse_s3_url(" S3://bucket//a ") == ("bucket", "a")


def test_a_malformed_endpoint_or_half_the_keys_is_an_error_at_construction() -> None:
    with pytest.raises(ValueError, match="not an http:// or https:// URL"):
        S3Sink("s3://bucket/p", {"MICROTASK_S3_ENDPOINT": "minio:9000"})
    with pytest.raises(ValueError, match="invalid port"):
        S3Sink("s3://bucket/p", {"MICROTASK_S3_ENDPOINT": "http://minio:port"})
    with pytest.raises(ValueError, match="both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        S3Sink("s3://bucket/p", {"AWS_ACCESS_KEY_ID": "key"})


def test_no_writable_spool_is_an_error_that_names_tmpdir(
    s3_env: dict[str, str], sinks: Callable[..., S3Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")
    sink = sinks("s3://bucket/p", s3_env)
    with pytest.raises(S3UploadError, match=r"cannot spool records/.*/nonexistent/tmp.*TMPDIR"):
        sink.append(RECORDS, b"{}\n")


def test_construction_does_no_io() -> None:
    sink = S3Sink("s3://bucket/p", {"MICROTASK_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    sink.close()  # nothing was made: no spool, no client, no thread


# ------------------------------------------------------------------ failures


def test_a_missing_bucket_fails_the_final_flush_at_once(
    minio_server: MinioServer, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks("s3://no-such-bucket/p", s3_env, final_timeout=30)
    sink.append(RECORDS, b"{}\n")
    start = time.monotonic()
    with pytest.raises(
        S3UploadError, match=r"no-such-bucket/p/records/.*the bucket does not exist"
    ):
        sink.flush(final=True)
    assert time.monotonic() - start < 5, "a permanent error is not retried until the deadline"
    # The runner closes the sink after a failure: that must not raise.
    sink.close()


def test_wrong_credentials_fail_the_next_call_after_an_interim_upload(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    sink = sinks(f"s3://{bucket}/p", {**s3_env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    sink.append(RECORDS, b"{}\n")
    sink.flush(final=False)  # returns at once: the upload is in the background

    def raises() -> bool:
        try:
            sink.append(RECORDS, b"{}\n")
        except S3UploadError as error:
            assert "access denied: wrong secret key" in str(error)
            return True
        return False

    wait_for(raises)


def test_an_unreachable_endpoint_fails_the_final_flush_after_its_deadline(
    bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    sink = sinks(f"s3://{bucket}", {**s3_env, "MICROTASK_S3_ENDPOINT": endpoint}, final_timeout=2)
    sink.append(RECORDS, b"{}\n")
    start = time.monotonic()
    with pytest.raises(S3UploadError, match=rf"at {endpoint}: connection refused"):
        sink.flush(final=True)
    assert 1.0 <= time.monotonic() - start < 10


def test_interim_uploads_give_up_after_failing_for_long(
    bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    sink = sinks(
        f"s3://{bucket}",
        {**s3_env, "MICROTASK_S3_ENDPOINT": endpoint},
        interval=0.2,
        give_up_after=2.0,
    )
    sink.append(RECORDS, b"{}\n")
    sink.flush(final=False)
    time.sleep(0.5)
    sink.flush(final=False)  # still retrying: no error yet

    def raises() -> bool:
        try:
            sink.flush(final=False)
        except S3UploadError as error:
            assert "connection refused" in str(error)
            return True
        return False

    wait_for(raises)


class Forwarder:
    """A TCP port that forwards to the MinIO server once ``open()`` is called (refused before)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        self._spawn(self._accept, server)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self._spawn(self._pipe, client, upstream)
                self._spawn(self._pipe, upstream, client)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def test_the_final_flush_retries_until_the_store_is_back(
    minio_server: MinioServer, bucket: str, s3_env: dict[str, str], sinks: Callable[..., S3Sink]
) -> None:
    forwarder = Forwarder(minio_server.port)
    endpoint = f"http://127.0.0.1:{forwarder.port}"
    sink = sinks(f"s3://{bucket}", {**s3_env, "MICROTASK_S3_ENDPOINT": endpoint})
    sink.append(RECORDS, b'{"index":0}\n')
    timer = threading.Timer(1.5, forwarder.open)  # the store is unreachable for 1.5 s
    timer.start()
    try:
        sink.flush(final=True)
    finally:
        timer.join()
        forwarder.close()
    assert read(minio_server, bucket, RECORDS) == b'{"index":0}\n'
