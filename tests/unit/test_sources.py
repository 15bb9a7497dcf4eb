"""A rerun's source (items.fromJob) and the result store's root: tables of the pure rules."""

from __future__ import annotations

from typing import Any

import pytest
from microtask_operator.api.loading import validate_job
from microtask_operator.api.model import Items, MicrotaskJob, Output
from microtask_operator.api.sources import (
    ConfigMapNeeded,
    Rerun,
    SourceProblem,
    SourceReason,
    pod_store_root,
    rerun_store_url,
    resolve_rerun,
    store_url,
)
from microtask_runner.indexset import IndexSet

RANGE = {"range": {"start": 0, "end": 10}}


def job(name: str = "again", items: dict[str, Any] | None = None, **spec: Any) -> MicrotaskJob:
    document: dict[str, Any] = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": name},
        "spec": {
            "items": items or {"fromJob": {"name": "first"}},
            "template": {"spec": {"containers": [{"name": "w", "image": "x", "command": ["r"]}]}},
            **spec,
        },
    }
    validated, problems = validate_job(document)
    assert validated is not None, problems
    return validated


def source(
    phase: str | None = "Failed", items: dict[str, Any] | None = None, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "first"},
        "spec": {"items": items or RANGE},
        "status": {"phase": phase, **status} if phase else status,
    }
    return body


def output(**store: Any) -> Output:
    return Output.model_validate(store)


# --- the store ----------------------------------------------------------------------------------

S3 = output(s3={"url": "s3://bucket/runs/"})
CLAIM = output(volume={"claimName": "results", "path": "team//a/"})
NAMED = output(volume={"name": "results"})


@pytest.mark.parametrize(
    ("store", "url", "in_pod"),
    [
        (S3, "s3://bucket/runs/first", "s3://bucket/runs/first"),
        (output(s3={"url": "s3://bucket"}), "s3://bucket/first", "s3://bucket/first"),
        (CLAIM, "volume://claim:results/team/a/first", "/var/run/microtask/output/team/a/first"),
        (NAMED, "volume://results/first", "/var/run/microtask/output/first"),
    ],
)
def test_store_roots(store: Output, url: str, in_pod: str) -> None:
    assert store_url(store, "first") == url
    assert pod_store_root(store, url) == in_pod


@pytest.mark.parametrize(
    ("store", "url", "reachable"),
    [
        (S3, "s3://bucket/elsewhere/first", True),  # the same bucket, another prefix
        (S3, "s3://other/runs/first", False),
        (S3, "volume://results/first", False),
        (NAMED, "volume://claim:results/first", False),  # a claim is not a template volume
        (NAMED, "volume://resultsx/first", False),
        (CLAIM, "volume://claim:results/x/first", True),
        (CLAIM, "s3://bucket/first", False),
    ],
)
def test_which_stores_a_spec_reaches(store: Output, url: str, reachable: bool) -> None:
    assert (pod_store_root(store, url) is not None) == reachable


@pytest.mark.parametrize(
    ("store", "source_url", "expected"),
    [
        (S3, "s3://bucket/runs/first", "s3://bucket/runs/first"),  # reused as is
        (S3, "s3://bucket/old/first", "s3://bucket/old/first"),
        (S3, "s3://other/runs/root", "s3://bucket/runs/root"),  # own store, the root's name
        (NAMED, "s3://bucket/runs/root", "volume://results/root"),
        (S3, None, "s3://bucket/runs/first"),  # the source kept no records
        (None, "s3://bucket/runs/first", None),  # no output: no records
    ],
)
def test_a_reruns_store(store: Output | None, source_url: str | None, expected: str | None) -> None:
    assert rerun_store_url(store, source_url, "first") == expected


# --- items.fromJob ------------------------------------------------------------------------------


def resolved(result: object) -> Rerun:
    assert isinstance(result, Rerun), result
    return result


@pytest.mark.parametrize(
    ("status", "left"),
    [
        ({"total": 10, "succeededIndexes": "0-2,5-9"}, "3-4"),
        ({"total": 10, "succeededIndexes": "0-9"}, ""),  # nothing left
        ({"total": 10, "succeededIndexes": "0-4", "failedIndexes": "5"}, "5-9"),  # and not run
        ({"total": 10}, "0-9"),  # nothing succeeded
        ({}, "0-9"),  # never started (an invalid spec, a failed dependency): all of it
        ({"total": 4, "succeededIndexes": "1"}, "0,2-3"),  # the status's total holds
    ],
)
def test_what_is_left_to_rerun(status: dict[str, Any], left: str) -> None:
    rerun = resolved(resolve_rerun(job(), source(**status)))
    assert rerun.indexes == (IndexSet.parse(left) if left else IndexSet())
    assert rerun.job == "first"
    assert rerun.items == Items.model_validate(RANGE)


def test_a_rerun_of_a_rerun_works_on_the_first_jobs_items_and_its_own_indexes() -> None:
    earlier = {"job": "zero", "items": {"list": list("abcdefghij")}, "indexes": "2-6"}
    body = source("Succeeded", {"fromJob": {"name": "zero"}}, source=earlier)
    body["status"].update(total=5, succeededIndexes="2,4", output={"url": "s3://b/zero"})
    rerun = resolved(resolve_rerun(job(), body))
    assert rerun.indexes == IndexSet.parse("3,5-6")
    assert rerun.items == Items.model_validate({"list": list("abcdefghij")})
    assert rerun.source_output == "s3://b/zero"
    assert rerun.to_status() == {
        "job": "first",
        "items": {"list": list("abcdefghij")},
        "indexes": "3,5-6",
    }
    assert Rerun.from_status(rerun.to_status()) == Rerun("first", rerun.items, rerun.indexes)


@pytest.mark.parametrize(
    ("body", "reason", "final"),
    [
        (None, SourceReason.NOT_FOUND, False),
        (source("Running"), SourceReason.NOT_FINISHED, False),
        (source("Pending"), SourceReason.NOT_FINISHED, False),
        (source(None), SourceReason.NOT_FINISHED, False),
        (source("Failed", {"range": {"start": 5, "end": 3}}), SourceReason.UNUSABLE, False),
        (source("Failed", {"fromJob": {"name": "zero"}}), SourceReason.UNUSABLE, False),
        (source("Failed", total=-1), SourceReason.UNUSABLE, False),
        (source("Failed", total=20), SourceReason.UNUSABLE, False),  # more than its items
    ],
)
def test_sources_that_cannot_be_rerun(
    body: dict[str, Any] | None, reason: SourceReason, final: bool
) -> None:
    problem = resolve_rerun(job(), body)
    assert isinstance(problem, SourceProblem), problem
    assert (problem.reason, problem.final) == (reason, final)
    assert "first" in problem.message


def test_a_job_cannot_rerun_itself() -> None:
    problem = resolve_rerun(job("first"), source())
    assert isinstance(problem, SourceProblem)
    assert (problem.reason, problem.final) == (SourceReason.UNUSABLE, True)


def test_a_config_map_source_is_read_to_check_the_indexes() -> None:
    items = {"configMapRef": {"name": "urls", "key": "urls.txt"}}
    body = source("Failed", items, total=4, succeededIndexes="0,2")
    assert resolve_rerun(job(), body) == ConfigMapNeeded("urls")
    rerun = resolved(resolve_rerun(job(), body, {"urls.txt": "a\nb\nc\nd\n"}))
    assert rerun.indexes == IndexSet.parse("1,3")
    problem = resolve_rerun(job(), body, {"urls.txt": "a\nb\n"})  # edited since: fewer lines
    assert isinstance(problem, SourceProblem) and problem.reason is SourceReason.UNUSABLE
    problem = resolve_rerun(job(), body, {"other": "a\n"})
    assert isinstance(problem, SourceProblem) and "urls.txt" in problem.message


def test_a_list_reruns_shards_must_fit_the_environment() -> None:
    items = {"list": ["x" * 60_000] * 4}
    body = source("Failed", items, total=4)
    assert resolved(resolve_rerun(job(microtasksPerShard=1), body)).indexes == IndexSet.parse("0-3")
    problem = resolve_rerun(job(microtasksPerShard=4), body)
    assert isinstance(problem, SourceProblem) and "microtasksPerShard" in problem.message


def test_summaries() -> None:
    items = Items.model_validate(RANGE)
    assert Rerun("first", items, IndexSet()).summary() == (
        "nothing to rerun: every microtask of first succeeded"
    )
    assert Rerun("first", items, IndexSet.parse("1-3")).summary() == (
        "rerunning 3 microtasks of first"
    )
    with pytest.raises(ValueError, match=r"status\.source"):
        Rerun.from_status({"job": "first", "indexes": "0"})
