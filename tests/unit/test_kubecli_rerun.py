"""`microtask rerun NAME --failed` on a cluster: the new job's name, spec and labels, refusals."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from microtask_operator.api.limits import MAX_NAME_LENGTH
from microtask_operator.api.loading import validate_job
from microtask_operator.kubecli import rerun
from microtask_operator.kubecli.client import Kube
from microtask_operator.kubecli.errors import CliError
from microtask_operator.kubecli.rerun import RERUN_OF, rerun_base, rerun_body, rerun_name


def old_job(name: str = "thumbs", labels: dict[str, str] | None = None, **status: Any) -> Any:
    return {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {
            "name": name,
            "namespace": "team",
            "uid": "u1",
            "resourceVersion": "12",
            "labels": labels or {},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "finalizers": ["microtask.dev/finalizer"],
        },
        "spec": {
            "items": {"range": {"start": 0, "end": 100}},
            "microtasksPerShard": 10,
            "parallelism": 4,
            "dependsOn": ["prepare"],
            "template": {
                "spec": {"containers": [{"name": "w", "image": "i", "command": ["true"]}]}
            },
            "output": {"volume": {"claimName": "results"}},
        },
        "status": status,
    }


FAILED: dict[str, Any] = {
    "phase": "Failed",
    "total": 100,
    "succeeded": 90,
    "failed": 4,
    "notRun": 6,
    "startTime": "2023-11-14T22:13:20Z",
}


def test_names_count_up_and_stay_within_the_limit() -> None:
    assert rerun_name("thumbs", 1) == "thumbs-rerun-1"
    long = "a" * MAX_NAME_LENGTH
    assert rerun_name(long, 12) == "a" * (MAX_NAME_LENGTH - 9) + "-rerun-12"
    assert len(rerun_name(long, 12)) == MAX_NAME_LENGTH
    # Cut where a dash would end the shortened base: no double dash.
    assert rerun_name("a" * 36 + "-bcdef", 1) == "a" * 36 + "-rerun-1"


def test_a_rerun_of_a_rerun_continues_the_series() -> None:
    assert rerun_base(old_job("thumbs-rerun-1", {RERUN_OF: "thumbs"})) == "thumbs"
    # Only a real rerun: a job that merely has such a name keeps it whole.
    assert rerun_base(old_job("thumbs-rerun-1")) == "thumbs-rerun-1"


def test_the_rerun_reads_its_items_from_the_old_job() -> None:
    body = rerun_body(old_job(labels={"team": "a", RERUN_OF: "older"}), "thumbs-rerun-1")
    assert body["metadata"] == {
        "name": "thumbs-rerun-1",
        "labels": {"team": "a", RERUN_OF: "thumbs"},
    }
    assert body["spec"]["items"] == {"fromJob": {"name": "thumbs", "indexes": "failed"}}
    assert "dependsOn" not in body["spec"]
    assert body["spec"]["output"] == {"volume": {"claimName": "results"}}
    assert "status" not in body
    job, problems = validate_job(body)
    assert job is not None, problems


class FakeKube:
    namespace = "team"

    def __init__(self, old: dict[str, Any], taken: list[str], races: int = 0) -> None:
        self.old = old
        self.taken = taken
        self.races = races
        self.created: list[dict[str, Any]] = []

    def get_job(self, name: str, namespace: str) -> dict[str, Any]:
        return self.old

    def list_jobs(self, namespace: str) -> dict[str, Any]:
        return {"items": [{"metadata": {"name": n}} for n in self.taken]}

    def create_job(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        if self.races:
            self.races -= 1
            raise CliError("exists", status=409, reason="AlreadyExists")
        self.created.append(body)
        return body


def run(
    monkeypatch: pytest.MonkeyPatch, kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(Kube, "from_args", classmethod(lambda cls, args: kube))
    args = argparse.Namespace(job="thumbs", namespace=None, context=None, watch=False)
    code = rerun.rerun_on_cluster(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_first_free_number_is_taken(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube(old_job(**FAILED), ["thumbs", "thumbs-rerun-1", "thumbs-rerun-2"], races=1)
    code, out, _ = run(monkeypatch, kube, capsys)
    assert code == 0
    # 1 and 2 were listed; 3 was created by someone else meanwhile.
    assert [b["metadata"]["name"] for b in kube.created] == ["thumbs-rerun-4"]
    assert out == (
        "microtaskjob.microtask.dev/thumbs-rerun-4 created: reruns 10 microtasks of thumbs "
        "(4 failed, 6 never ran)\n"
    )


@pytest.mark.parametrize(
    ("status", "code", "said"),
    [
        ({"phase": "Running", "total": 100}, 1, "is Running: only a finished MicrotaskJob"),
        ({}, 1, "is not started yet"),
        (
            {
                "phase": "Failed",
                "conditions": [{"type": "Invalid", "status": "True", "message": "spec.items: bad"}],
            },
            1,
            "never ran (spec.items: bad): fix its spec",
        ),
        (
            {"phase": "Succeeded", "total": 5, "succeeded": 5, "startTime": "2023-11-14T22:13:20Z"},
            0,
            "all 5 microtasks succeeded; nothing to rerun",
        ),
    ],
)
def test_what_is_not_rerun(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: dict[str, Any],
    code: int,
    said: str,
) -> None:
    kube = FakeKube(old_job(**status), [])
    got, out, err = run(monkeypatch, kube, capsys)
    assert got == code
    assert said in (out + err)
    assert kube.created == []
