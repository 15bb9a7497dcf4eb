"""Finding a job's store, status and logs on a cluster, with the Kubernetes calls replaced."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from microtask_operator import cli
from microtask_operator.kubecli.config import Connection
from microtask_operator.results import target
from microtask_operator.results.target import (
    JobStatus,
    TargetError,
    cluster_target,
    resolve_target,
)
from microtask_runner.indexset import IndexSet
from test_results_support import Rec, directory_store, microtask_output, write_log, write_records
from urllib3.exceptions import MaxRetryError

CONNECTION = Connection(
    api=SimpleNamespace(configuration=SimpleNamespace(host="https://10.0.0.1:6443")),  # type: ignore[arg-type]
    namespace="batch",
    context="lab",
)


def job_body(*, output: dict[str, Any] | None, url: str | None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "thumbs"}, "spec": {}, "status": dict(status)}
    if output is not None:
        body["spec"]["output"] = output
    if url is not None:
        body["status"]["output"] = {"url": url}
    return body


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replaces the Kubernetes calls; the test fills in what they return."""
    world: dict[str, Any] = {"job": None, "secret": None, "pods": [], "pod_logs": {}, "stores": []}
    monkeypatch.setattr(target, "connect", lambda context, namespace: CONNECTION)
    monkeypatch.setattr(target, "read_job", lambda connection, name: world["job"])

    def read_secret(connection: Connection, name: str) -> dict[str, str] | None:
        world["secret_read"] = name
        return world["secret"]

    def open_store(url: str, **options: Any) -> Any:
        world["stores"].append((url, options))
        return directory_store(world.get("root", Path("/nonexistent")))

    monkeypatch.setattr(target, "read_secret", read_secret)
    monkeypatch.setattr(target, "open_store", open_store)
    monkeypatch.setattr(target, "shard_pods", lambda connection, job, shard: world["pods"])
    monkeypatch.setattr(
        target,
        "open_pod_log",
        lambda connection, pod, container: world["pod_logs"].get(pod),
    )
    for variable in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    ):
        monkeypatch.delenv(variable, raising=False)
    return world


S3 = {"s3": {"url": "s3://bucket/out", "endpoint": "http://minio:9000", "region": "eu-west-1"}}


def test_a_missing_microtaskjob(cluster):
    with pytest.raises(TargetError) as error:
        cluster_target("thumbs")
    assert str(error.value) == 'MicrotaskJob "thumbs" not found in namespace "batch"'


def test_a_job_without_spec_output(cluster):
    cluster["job"] = job_body(output=None, url=None)
    with pytest.raises(TargetError, match=r"spec\.output is not set"):
        cluster_target("thumbs")


def test_a_job_not_started(cluster):
    cluster["job"] = job_body(output=S3, url=None)
    with pytest.raises(TargetError, match="has no result store yet"):
        cluster_target("thumbs")


def test_a_volume_store_cannot_be_read_from_here(cluster):
    url = "volume://claim:shared/out/thumbs"
    cluster["job"] = job_body(output={"volume": {"claimName": "shared", "path": "out"}}, url=url)
    with pytest.raises(TargetError) as error:
        cluster_target("thumbs")
    assert f"is on a volume ({url})" in str(error.value)
    assert str(error.value).endswith(
        "kubectl cp -n batch POD:/var/run/microtask/output/out/thumbs ./thumbs, "
        "then add --store ./thumbs (e.g. microtask results thumbs --store ./thumbs)"
    )


def test_a_copied_store_with_the_status_from_the_cluster(cluster, tmp_path):
    url = "volume://claim:shared/out/thumbs"
    cluster["job"] = job_body(
        output={"volume": {"claimName": "shared", "path": "out"}},
        url=url,
        total=10,
        succeeded=4,
        succeededIndexes="0-3",
        phase="Failed",
    )
    (tmp_path / "records").mkdir()
    target = resolve_target("thumbs", store=str(tmp_path))
    assert target.description == 'MicrotaskJob "thumbs" (namespace "batch")'
    assert [url for url, _ in cluster["stores"]] == [str(tmp_path)]
    assert target.status is not None and target.status.succeeded == IndexSet.parse("0-3")
    with pytest.raises(TargetError, match="not both"):
        resolve_target(str(tmp_path / "records"), store=str(tmp_path))


def test_s3_with_credentials_from_the_environment(cluster, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    output = {"s3": {**S3["s3"], "secretName": "creds"}}
    cluster["job"] = job_body(output=output, url="s3://bucket/out/thumbs", phase="Running")
    found = cluster_target("thumbs")
    # the store takes them from the environment itself, with any session token
    assert cluster["stores"] == [
        ("s3://bucket/out/thumbs", {"endpoint": "http://minio:9000", "region": "eu-west-1"})
    ]
    assert "secret_read" not in cluster
    assert found.description == 'MicrotaskJob "thumbs" (namespace "batch")'
    assert found.status is not None and found.status.running


def test_s3_with_credentials_from_the_jobs_secret(cluster):
    cluster["secret"] = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    cluster["job"] = job_body(
        output={"s3": {**S3["s3"], "secretName": "creds"}}, url="s3://bucket/out/thumbs"
    )
    cluster_target("thumbs", endpoint="http://localhost:9000")
    assert cluster["secret_read"] == "creds"
    assert cluster["stores"][0][1] == {
        "endpoint": "http://localhost:9000",  # --endpoint wins over the in-cluster one
        "region": "eu-west-1",
        "access_key": "k",
        "secret_key": "s",
    }


def test_a_missing_secret_asks_for_exported_credentials(cluster):
    cluster["job"] = job_body(
        output={"s3": {**S3["s3"], "secretName": "creds"}}, url="s3://bucket/out/thumbs"
    )
    with pytest.raises(TargetError, match="export the store's credentials"):
        cluster_target("thumbs")


def test_no_credentials_and_no_secret_use_the_default_chain(cluster):
    cluster["job"] = job_body(output=S3, url="s3://bucket/out/thumbs")
    cluster_target("thumbs")
    assert "access_key" not in cluster["stores"][0][1]


def test_the_status_of_the_object(cluster):
    failed = IndexSet.from_indexes(range(0, 3000, 3))
    cluster["job"] = job_body(
        output=S3,
        url="s3://bucket/out/thumbs",
        phase="Failed",
        total=4000,
        succeeded=2000,
        failed=len(failed),
        succeededIndexes="1000-2999",
        failedIndexes=failed.to_compact(),
        source={"job": "orig", "indexes": "1000-4999"},
    )
    status = cluster_target("thumbs").status
    assert status is not None
    assert status.failed == failed
    assert status.universe == IndexSet.parse("1000-4999")
    assert status.never_ran_candidates() == IndexSet.parse("3000-4999")
    assert not status.running


def test_large_index_sets_kept_outside_the_status_are_unknown():
    status = JobStatus.from_status({"total": 10, "succeeded": 4, "phase": "Running"})
    assert status.succeeded is None
    assert status.never_ran_candidates() is None
    assert JobStatus.from_status({"total": 10}).succeeded == IndexSet.EMPTY


# ------------------------------------------------------------------ the real small functions


class FakeApi:
    """Stands for CustomObjectsApi and CoreV1Api: every call raises what it was given."""

    raises: Exception | None = None
    returns: Any = None

    def __init__(self, api: Any) -> None:
        pass

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        if FakeApi.raises is not None:
            raise FakeApi.raises
        return FakeApi.returns

    get_namespaced_custom_object = read_namespaced_secret = list_namespaced_pod = _call
    read_namespaced_pod_log = _call


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    from kubernetes import client

    monkeypatch.setattr(client, "CustomObjectsApi", FakeApi)
    monkeypatch.setattr(client, "CoreV1Api", FakeApi)
    FakeApi.raises = FakeApi.returns = None
    return FakeApi


def test_read_job_maps_api_errors(fake_api):
    fake_api.raises = ApiException(status=404, reason="Not Found")
    assert target.read_job(CONNECTION, "x") is None
    fake_api.raises = ApiException(status=403, reason="Forbidden")
    with pytest.raises(
        TargetError, match=r"not allowed to read MicrotaskJobs in namespace 'batch' \(403"
    ):
        target.read_job(CONNECTION, "x")
    fake_api.raises = MaxRetryError(None, "/apis", reason=ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]
    with pytest.raises(TargetError) as error:
        target.read_job(CONNECTION, "x")
    assert "cannot reach the cluster (context 'lab', server https://10.0.0.1:6443)" in str(
        error.value
    )


def test_read_secret_403_asks_for_exported_credentials(fake_api):
    fake_api.raises = ApiException(status=403, reason="Forbidden")
    with pytest.raises(TargetError) as error:
        target.read_secret(CONNECTION, "creds")
    assert "not allowed to read the Secret 'creds'" in str(error.value)
    assert "AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=..." in str(error.value)


def test_read_secret_decodes_its_data(fake_api):
    fake_api.returns = SimpleNamespace(data={"AWS_ACCESS_KEY_ID": "a2V5", "bad": "%%%"})
    assert target.read_secret(CONNECTION, "creds") == {"AWS_ACCESS_KEY_ID": "key"}


def test_shard_pods_newest_first(fake_api):
    def pod(name: str, created: str) -> SimpleNamespace:
        return SimpleNamespace(
            metadata=SimpleNamespace(name=name, creation_timestamp=created),
            spec=SimpleNamespace(containers=[SimpleNamespace(name="worker")]),
        )

    fake_api.returns = SimpleNamespace(items=[pod("old", "2026-01-01"), pod("new", "2026-01-02")])
    assert target.shard_pods(CONNECTION, "thumbs", 3) == [("new", "worker"), ("old", "worker")]


def test_open_pod_log_of_a_gone_pod(fake_api):
    fake_api.raises = ApiException(status=404, reason="Not Found")
    assert target.open_pod_log(CONNECTION, "p", "worker") is None


# ------------------------------------------------------------------ logs from pods


def test_logs_read_the_pod_while_it_exists_then_the_store_copy(cluster, tmp_path, capsysbinary):
    cluster["root"] = tmp_path
    cluster["job"] = job_body(output=S3, url="s3://bucket/out/thumbs", phase="Running", total=5)
    write_records(tmp_path, [Rec(0)], job="thumbs", shard=0)
    write_log(tmp_path, microtask_output(0, 1, ["from the store"]), job="thumbs", shard=0)
    cluster["pods"] = [("thumbs-0-a", "worker")]
    cluster["pod_logs"] = {
        "thumbs-0-a": io.BytesIO(microtask_output(0, 1, ["from the pod"]).encode())
    }

    assert cli.main(["logs", "thumbs", "--index", "0"]) == 0
    assert capsysbinary.readouterr().out == b"from the pod\n"

    cluster["pod_logs"] = {}  # the pod is gone: its log with it
    assert cli.main(["logs", "thumbs", "--index", "0"]) == 0
    assert capsysbinary.readouterr().out == b"from the store\n"


def test_results_of_a_cluster_job(cluster, tmp_path, capsysbinary):
    cluster["root"] = tmp_path
    cluster["job"] = job_body(
        output=S3,
        url="s3://bucket/out/thumbs",
        phase="Failed",
        total=3,
        succeededIndexes="0",
        succeeded=1,
    )
    write_records(tmp_path, [Rec(0), Rec(1, outcome="failed")], job="thumbs")
    assert cli.main(["results", "thumbs", "-n", "batch", "--failed", "-o", "csv"]) == 0
    rows = capsysbinary.readouterr().out.decode().splitlines()
    assert [row.split(",")[:3] for row in rows[1:]] == [["1", "1", "failed"], ["2", "", "notRun"]]
