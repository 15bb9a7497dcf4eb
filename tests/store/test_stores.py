"""The readers' stores: one contract for a directory and for S3 (a real MinIO server).

Every test of the contract runs against both kinds, so a reader cannot tell them apart: names
relative to the root, sorted listings with S3's prefix semantics, streaming reads, whole-object
writes, ``ObjectNotFound`` for a missing name.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.results.dirstore import DirectoryStore
from microtask_operator.results.s3store import S3Store
from microtask_operator.results.stores import ObjectNotFound, Store, StoreError, open_store

from tests.integration.harness.controlplane import free_port
from tests.integration.harness.minio import MinioServer


@pytest.fixture(params=["directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty store of each kind (S3: a fresh bucket, below a prefix)."""
    if request.param == "directory":
        return DirectoryStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("bucket")
    open_s3: Callable[..., S3Store] = request.getfixturevalue("open_s3")
    return open_s3(f"s3://{bucket}/jobs/thumbs")


NAMES = [
    "logs/job-3.log",
    "records/000000000000-job-3.jsonl",
    "records/000000000100-job-3.jsonl",
    "records/000000000100-job-30.jsonl",
    "records/a-b",
    "records/a/b",
    "records/é",
    "status/failed-indexes",
]


# ------------------------------------------------------------------ the contract


def test_put_exists_open(store: Store) -> None:
    assert not store.exists("records/x.jsonl")
    store.put("records/x.jsonl", b'{"index":1}\n{"index":2}\n')
    assert store.exists("records/x.jsonl")
    assert not store.exists("records")  # a "directory" is not a file
    with store.open("records/x.jsonl") as stream:
        assert list(stream) == [b'{"index":1}\n', b'{"index":2}\n']
    store.put("records/x.jsonl", b"replaced")
    with store.open("records/x.jsonl") as stream:
        assert stream.read() == b"replaced"


def test_listing_is_sorted_relative_and_matches_a_name_prefix(store: Store) -> None:
    for name in reversed(NAMES):
        store.put(name, name.encode())
    assert list(store.list("")) == NAMES  # S3 order: "a-b" before "a/b" ('-' < '/')
    records = [n for n in NAMES if n.startswith("records/")]
    assert list(store.list("records/")) == records
    assert list(store.list("records/000000000100")) == records[1:3]
    assert list(store.list("records/a")) == ["records/a-b", "records/a/b"]
    assert list(store.list("nothing/")) == []
    assert list(store.list("records/000000000000-job-3.jsonl/")) == []


def test_a_missing_name_is_object_not_found(store: Store) -> None:
    store.put("records/present", b"")
    with pytest.raises(ObjectNotFound, match="records/absent") as raised:
        store.open("records/absent")
    assert isinstance(raised.value, FileNotFoundError)
    assert isinstance(raised.value, StoreError)
    assert raised.value.args[0].startswith(store.url)


def test_lines_stream_from_a_big_file(store: Store) -> None:
    lines = [b"%08d %s\n" % (i, b"x" * (i % 300)) for i in range(40_000)]  # about 6.5 MB
    store.put("logs/big.log", b"".join(lines))
    with store.open("logs/big.log") as stream:
        assert stream.readline() == lines[0]
        assert stream.read(4) == lines[1][:4]
        assert stream.readline() == lines[1][4:]
        count = 2
        for line, expected in zip(stream, lines[2:], strict=True):
            assert line == expected
            count += 1
    assert count == len(lines)
    with store.open("logs/big.log") as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8")
        assert sum(1 for _ in text) == len(lines)


def test_empty_objects(store: Store) -> None:
    store.put("records/empty", b"")
    assert store.exists("records/empty")
    with store.open("records/empty") as stream:
        assert stream.read() == b""
        assert list(stream) == []


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "a/../b", "./a", "a/"])
def test_names_are_checked(store: Store, name: str) -> None:
    with pytest.raises(StoreError, match="not a store file name"):
        store.put(name, b"")
    with pytest.raises(StoreError, match="not a store file name"):
        store.exists(name)
    with pytest.raises(StoreError, match="not a store file name"):
        store.open(name)


def test_prefixes_are_checked(store: Store) -> None:
    for prefix in ("/records", "../x", "records/../"):
        with pytest.raises(StoreError, match="not a prefix"):
            store.list(prefix)


# ------------------------------------------------------------------ S3 only


def test_pagination_over_thousands_of_objects(
    minio_server: MinioServer, bucket: str, open_s3: Callable[..., S3Store]
) -> None:
    client = minio_server.client()
    names = [f"records/{i:012d}-job-{i % 7}.jsonl" for i in range(1050)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"p/{n}", Body=b"{}"), names))
    client.put_object(Bucket=bucket, Key="p/logs/job-1.log", Body=b"")
    client.put_object(Bucket=bucket, Key="elsewhere/records/x", Body=b"")

    store = open_s3(f"s3://{bucket}/p")
    assert list(store.list("records/")) == names  # S3's own page of 1000, then the rest
    small = open_s3(f"s3://{bucket}/p", page_size=100)
    requests: list[dict[str, Any]] = []
    real = small._client.list_objects_v2

    def counting(**request: Any) -> Any:
        requests.append(request)
        return real(**request)

    small._client.list_objects_v2 = counting
    listing = small.list("records/")
    assert next(listing) == names[0]
    assert len(requests) == 1, "pages are fetched as the listing is consumed"
    assert [names[0], *listing] == names
    assert len(requests) == 11
    assert all(r["MaxKeys"] == 100 for r in requests)


def test_a_missing_bucket_is_named(
    minio_server: MinioServer, open_s3: Callable[..., S3Store]
) -> None:
    store = open_s3("s3://no-such-bucket/p")
    message = (
        f"s3://no-such-bucket/p: the bucket 'no-such-bucket' does not exist at the endpoint "
        f"{minio_server.endpoint}"
    )
    for call in (
        lambda: list(store.list("records/")),
        lambda: store.exists("records/x"),
        lambda: store.open("records/x"),
        lambda: store.put("records/x", b""),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        assert str(raised.value) == message
        assert not isinstance(raised.value, ObjectNotFound)


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        ({"secret_key": "wrong-secret"}, "access denied: wrong secret key"),
        (
            {"access_key": "nobody", "secret_key": "x" * 12},
            "access denied: the store does not know the access key",
        ),
    ],
)
def test_bad_credentials_are_access_denied(
    bucket: str, open_s3: Callable[..., S3Store], credentials: dict[str, str], reason: str
) -> None:
    store = open_s3(f"s3://{bucket}/p", **credentials)
    for call, doing in (
        (lambda: list(store.list("records/")), "listing objects"),
        (lambda: store.open("records/x"), "reading records/x"),
        (lambda: store.put("records/x", b""), "writing records/x"),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        text = str(raised.value)
        assert text.startswith(f"s3://{bucket}/p: {doing}: {reason}"), text
        assert "check the credentials" in text
        assert "Traceback" not in text and "botocore" not in text
    # A HEAD request's answer has no body, so no code: it is still access denied.
    with pytest.raises(StoreError, match="looking for records/x: access denied"):
        store.exists("records/x")


def test_an_unreachable_endpoint_is_named(bucket: str, open_s3: Callable[..., S3Store]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_s3(f"s3://{bucket}", endpoint=endpoint)
    expected = f"s3://{bucket}: cannot reach the endpoint {endpoint} (connection refused)"
    for call in (lambda: list(store.list("")), lambda: store.exists("a"), lambda: store.open("a")):
        with pytest.raises(StoreError) as raised:
            call()
        assert str(raised.value) == expected


def test_settings_fall_back_to_the_environment(
    minio_server: MinioServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in minio_server.environment().items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{bucket}/from-env")
    assert isinstance(store, S3Store)
    assert store.endpoint == minio_server.endpoint
    store.put("records/x", b"1\n")
    assert list(store.list("")) == ["records/x"]


@pytest.mark.parametrize(
    ("url", "options", "problem"),
    [
        ("s3://Bad_Bucket/p", {}, "not a valid bucket name"),
        ("s3://bucket/p", {"endpoint": "localhost:9000"}, "not an http:// or https:// URL"),
        ("s3://bucket/p", {"access_key": "only-the-key"}, "both the access key and the secret"),
        ("s3://bucket/p", {"page_size": 0}, "page_size must be at least 1"),
        ("gs://bucket/p", {}, "unsupported result store"),
        ("file://relative/path", {}, "needs an absolute path"),
        ("  ", {}, "the result store URL is empty"),
    ],
)
def test_bad_urls_and_options_are_store_errors(
    url: str, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(StoreError, match=problem):
        open_store(url, **options)


def test_open_store_picks_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), DirectoryStore)
    by_file_url = open_store(f"file://{tmp_path}")
    assert isinstance(by_file_url, DirectoryStore)
    assert by_file_url.url == str(tmp_path)
    s3 = open_store("s3://bucket/a/b/", endpoint="http://127.0.0.1:9")
    assert isinstance(s3, S3Store)
    assert s3.url == "s3://bucket/a/b"
    assert open_store("s3://bucket", endpoint="http://127.0.0.1:9").url == "s3://bucket"


# ------------------------------------------------------------------ directory only


def test_a_missing_directory_lists_as_an_error_and_put_creates_it(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "not-yet")
    with pytest.raises(StoreError, match="not-yet: no such directory"):
        list(store.list(""))
    assert not store.exists("records/x")
    store.put("records/x", b"1")
    assert list(store.list("")) == ["records/x"]
    assert (tmp_path / "not-yet" / "records" / "x").read_bytes() == b"1"


def test_put_leaves_no_partial_file_and_listing_hides_one(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put("records/x", b"1")
    (tmp_path / "records" / ".y.abc123.partial").write_bytes(b"half")  # a put in progress
    assert list(store.list("")) == ["records/x"]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [".y.abc123.partial", "x"]


def test_a_file_in_the_way_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "records").write_text("a file, not a directory")
    store = DirectoryStore(tmp_path)
    with pytest.raises(StoreError, match="cannot write records/x"):
        store.put("records/x", b"1")
    assert list(store.list("records/")) == []
