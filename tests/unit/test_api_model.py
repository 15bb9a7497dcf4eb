"""The MicrotaskJob API model: defaults, limits, cross-field rules, messages, conversions."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from microtask_operator.api import conditions, limits, names
from microtask_operator.api.convert import to_core_spec
from microtask_operator.api.items import (
    ItemsError,
    largest_shard,
    parse_config_map_items,
    runner_items,
    total_microtasks,
)
from microtask_operator.api.loading import InvalidSpecError, parse_job, validate_job
from microtask_operator.api.model import MicrotaskJob, MicrotaskJobStatus, StatusCondition
from microtask_operator.core.types import Accelerator, CoreSpec
from microtask_runner.indexset import IndexSet


def body(**spec: Any) -> dict[str, Any]:
    """A valid MicrotaskJob with `spec` fields replaced (None removes a field)."""
    base: dict[str, Any] = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": "thumbs"},
        "spec": {
            "items": {"range": {"start": 0, "end": 100}},
            "template": {
                "spec": {"containers": [{"name": "worker", "image": "x", "command": ["echo"]}]}
            },
        },
    }
    for key, value in spec.items():
        if value is None:
            base["spec"].pop(key, None)
        else:
            base["spec"][key] = value
    return base


def worker(**fields: Any) -> dict[str, Any]:
    """A template whose worker container has `fields` replaced (None removes a field)."""
    container: dict[str, Any] = {"name": "worker", "image": "x", "command": ["echo"]}
    for key, value in fields.items():
        if value is None:
            container.pop(key, None)
        else:
            container[key] = value
    return {"spec": {"containers": [container]}}


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    job, found = validate_job(document)
    assert (job is None) == bool(found)
    return [(p.path, p.message) for p in found]


def paths(document: dict[str, Any]) -> list[str]:
    return [path for path, _ in problems(document)]


def model(document: dict[str, Any]) -> MicrotaskJob:
    job, found = validate_job(document)
    assert job is not None, found
    return job


# --- defaults and names ---------------------------------------------------------------------------


def test_minimal_job_gets_the_documented_defaults() -> None:
    spec = model(body()).spec
    assert spec.microtasks_per_shard == "auto"
    assert spec.target_shard_seconds is None  # 60 s (api.convert)
    assert spec.parallelism == 10
    assert spec.placement.accelerator == "cpu"
    assert spec.placement.fallback_after_seconds == 120
    assert spec.placement.fallback_cooldown_seconds == 300
    assert spec.placement.gpu.count == 1
    assert spec.placement.gpu.resource_name is None  # the operator's setting decides
    assert spec.placement.cpu.avoid_gpu_nodes is True
    assert spec.placement.spread is True
    assert (spec.retry.max_attempts, spec.retry.backoff_seconds) == (3, 10)
    assert (spec.retry.max_backoff_seconds, spec.retry.max_failed_microtasks) == (300, 0)
    assert spec.retry.non_retryable_exit_codes == []
    assert spec.timeouts.microtask_seconds is None
    assert spec.speculation.enabled is False
    assert (spec.speculation.slowdown_factor, spec.speculation.min_samples) == (3, 5)
    assert spec.speculation.max_fraction == 0.1
    assert spec.rebalance.node_lost_grace_seconds == 30
    bad = spec.rebalance.bad_nodes
    assert (bad.enabled, bad.soft_after_failures, bad.hard_after_failures) == (True, 2, 4)
    assert (bad.exclude_seconds, bad.max_excluded_fraction) == (600, 0.5)
    assert spec.suspend is False
    assert spec.depends_on == []
    assert spec.keep_failed_shards == 3
    assert spec.items.source == "range"


def test_literals_match_the_api_names() -> None:
    job = model(body())
    assert f"{job.api_version}" == names.API_VERSION
    assert job.kind == names.KIND
    assert names.CRD_NAME == "microtaskjobs.microtask.dev"


def test_condition_vocabulary() -> None:
    assert {t.value for t in conditions.ConditionType} == {
        "Ready",
        "Complete",
        "Failed",
        "Invalid",
        "Suspended",
        "WaitingForDependencies",
        "SpecChangeIgnored",
        "ReconcileError",
        "Recovered",
    }
    reasons = {r.value for r in conditions.ConditionReason}
    for reason in ("Running", "AllSucceeded", "TooManyFailures", "DeadlineExceeded"):
        assert reason in reasons
    for reason in ("InvalidSpec", "DependencyFailed", "WaitingForDependencies", "Suspended"):
        assert reason in reasons
    assert all(r.value[0].isupper() and " " not in r.value for r in conditions.ConditionReason)
    assert {p.value for p in conditions.Phase} == {
        "Pending",
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
    }
    assert conditions.Reason is conditions.ConditionReason
    # `kubectl explain` lists every condition type the operator sets.
    fields = (StatusCondition.model_fields["type"], MicrotaskJobStatus.model_fields["conditions"])
    for field in fields:
        described = field.description or ""
        missing = [t.value for t in conditions.ConditionType if t.value not in described]
        assert missing == [], f"not described: {missing}"


def test_the_model_dumps_back_to_camel_case() -> None:
    document = body(microtasksPerShard=5, retry={"maxAttempts": 2})
    dumped = model(document).model_dump(by_alias=True, exclude_unset=True)
    assert dumped == document


# --- items ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "path", "words"),
    [
        ({}, "spec.items", "exactly one of range, list, configMapRef, fromJob (found: none)"),
        (
            {"range": {"end": 3}, "list": [1]},
            "spec.items",
            "exactly one of range, list, configMapRef, fromJob (found: range, list)",
        ),
        ({"range": {"start": 5, "end": 5}}, "spec.items.range.end", "greater than start (5)"),
        ({"range": {"end": 10, "step": 0}}, "spec.items.range.step", "at least 1"),
        ({"range": {"start": 0}}, "spec.items.range.end", "required"),
        ({"list": []}, "spec.items.list", "at least 1 entry, not 0"),
        ({"list": ["a", None]}, "spec.items.list[1]", "must not be null"),
        ({"configMapRef": {"name": "c", "key": "k", "format": "csv"}}, "", "'lines' or 'json'"),
        ({"configMapRef": {"name": "Bad_Name", "key": "k"}}, "spec.items.configMapRef.name", ""),
        ({"configMapRef": {"name": "c", "key": "a/b"}}, "spec.items.configMapRef.key", ""),
        ({"rnage": {"end": 3}}, "spec.items.rnage", "did you mean 'range'?"),
    ],
)
def test_item_source_problems(items: dict[str, Any], path: str, words: str) -> None:
    found = problems(body(items=items))
    assert found, "expected a problem"
    assert any((not path or p == path) and words in m for p, m in found), found


def test_range_count_and_total_limit() -> None:
    job = model(body(items={"range": {"start": 10, "end": 20, "step": 3}}))
    assert job.spec.items.range_ is not None
    assert job.spec.items.range_.count == 4  # 10, 13, 16, 19
    assert total_microtasks(job) == 4
    limit = limits.MAX_TOTAL_MICROTASKS
    assert not problems(body(items={"range": {"end": limit}}))
    found = problems(body(items={"range": {"end": limit + 1}}))
    assert found == [("spec.items.range.end", found[0][1])]
    assert "10,000,000" in found[0][1]
    # A large step keeps a wide range small.
    assert not problems(body(items={"range": {"start": -(10**15), "end": 10**15, "step": 10**9}}))


def test_inline_list_limits() -> None:
    assert not problems(body(items={"list": list(range(limits.MAX_INLINE_ITEMS))}))
    found = problems(body(items={"list": list(range(limits.MAX_INLINE_ITEMS + 1))}))
    assert found == [("spec.items.list", "must have at most 10000 entries, not 10001")]
    big = ["x" * 100] * 3000  # ~306 KiB of JSON
    found = problems(body(items={"list": big}))
    assert found[0][0] == "spec.items.list"
    assert "KiB" in found[0][1] and "ConfigMap" in found[0][1]


def test_inline_items_of_one_shard_must_fit_the_environment() -> None:
    items = {"list": ["y" * 1000] * 200}  # 200 KiB: fine in total
    assert not problems(body(items=items, microtasksPerShard=50))
    found = problems(body(items=items, microtasksPerShard=200))
    assert [p for p, _ in found] == ["spec.microtasksPerShard"]
    assert "environment" in found[0][1]


def test_auto_shards_are_cut_to_fit_the_environment() -> None:
    items = {"list": ["y" * 1000] * 200}
    job = model(body(items=items))
    assert job.spec.microtasks_per_shard == "auto"
    largest = largest_shard(job)
    # ~1 KiB per item in a 96 KiB environment string: the most that fit, and no more.
    assert 90 <= largest < 100
    assert to_core_spec(job).microtasks_per_shard == largest
    assert largest_shard(model(body())) == limits.MAX_MICROTASKS_PER_SHARD
    assert largest_shard(model(body(items=items, microtasksPerShard=7))) == 7
    huge = problems(body(items={"list": ["z" * 100_000]}))
    assert [p for p, _ in huge] == ["spec.microtasksPerShard"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "must be a whole number or auto, not 'fast'"),
        ("Auto", "must be a whole number or auto, not 'Auto'"),
        (2.5, "must be a whole number or auto, not 2.5"),
        (True, "must be a whole number or auto, not a boolean"),
        (0, "must be at least 1, not 0"),
        (10_001, "must be at most 10000, not 10001"),
    ],
)
def test_microtasks_per_shard_is_a_number_or_auto(value: Any, message: str) -> None:
    assert problems(body(microtasksPerShard=value)) == [("spec.microtasksPerShard", message)]


def test_target_shard_seconds_sizes_auto_shards_only() -> None:
    assert to_core_spec(model(body())).target_shard_seconds == 60.0
    core = to_core_spec(model(body(targetShardSeconds=15)))
    assert core.target_shard_seconds == 15.0
    fixed = to_core_spec(model(body(microtasksPerShard=5)))
    assert (fixed.microtasks_per_shard, fixed.target_shard_seconds) == (5, None)
    found = problems(body(microtasksPerShard=5, targetShardSeconds=15))
    assert [p for p, _ in found] == ["spec.targetShardSeconds"]
    assert "only with microtasksPerShard: auto" in found[0][1]
    assert [p for p, _ in problems(body(targetShardSeconds=0))] == ["spec.targetShardSeconds"]


def test_inline_list_accepts_scalars_and_small_objects() -> None:
    values = ["a", 1, 2.5, True, {"url": "https://x", "size": [1, 2]}, [1, 2]]
    job = model(body(items={"list": values}))
    assert total_microtasks(job) == len(values)


# --- scalar fields: bounds and strict types -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("microtasksPerShard", 0, "spec.microtasksPerShard"),
        ("microtasksPerShard", 10_001, "spec.microtasksPerShard"),
        ("parallelism", 0, "spec.parallelism"),
        ("parallelism", 10_001, "spec.parallelism"),
        ("parallelism", "10", "spec.parallelism"),
        ("parallelism", True, "spec.parallelism"),
        ("parallelism", 2.5, "spec.parallelism"),
        ("keepFailedShards", 21, "spec.keepFailedShards"),
        ("keepFailedShards", -1, "spec.keepFailedShards"),
        ("suspend", "yes", "spec.suspend"),
        ("retry", {"maxAttempts": 0}, "spec.retry.maxAttempts"),
        ("retry", {"maxAttempts": 101}, "spec.retry.maxAttempts"),
        ("retry", {"backoffSeconds": -1}, "spec.retry.backoffSeconds"),
        ("retry", {"nonRetryableExitCodes": [256]}, "spec.retry.nonRetryableExitCodes[0]"),
        ("retry", {"nonRetryableExitCodes": [2, 3, 2]}, "spec.retry.nonRetryableExitCodes[2]"),
        ("retry", {"maxFailedMicrotasks": 10_001}, "spec.retry.maxFailedMicrotasks"),
        ("retry", {"backoffSeconds": 60, "maxBackoffSeconds": 30}, "spec.retry.maxBackoffSeconds"),
        ("timeouts", {"microtaskSeconds": 0}, "spec.timeouts.microtaskSeconds"),
        ("timeouts", {"shardSeconds": -5}, "spec.timeouts.shardSeconds"),
        ("timeouts", {"jobSeconds": float("inf")}, "spec.timeouts.jobSeconds"),
        ("timeouts", {"jobSeconds": float("nan")}, "spec.timeouts.jobSeconds"),
        ("speculation", {"slowdownFactor": 1}, "spec.speculation.slowdownFactor"),
        ("speculation", {"maxFraction": 0}, "spec.speculation.maxFraction"),
        ("speculation", {"maxFraction": 1.5}, "spec.speculation.maxFraction"),
        ("speculation", {"minSamples": 0}, "spec.speculation.minSamples"),
        (
            "rebalance",
            {"badNodes": {"softAfterFailures": 3, "hardAfterFailures": 2}},
            "spec.rebalance.badNodes.hardAfterFailures",
        ),
        (
            "rebalance",
            {"badNodes": {"maxExcludedFraction": 2}},
            "spec.rebalance.badNodes.maxExcludedFraction",
        ),
        ("placement", {"accelerator": "tpu"}, "spec.placement.accelerator"),
        ("placement", {"fallbackAfterSeconds": -1}, "spec.placement.fallbackAfterSeconds"),
        ("placement", {"gpu": {"count": 0}}, "spec.placement.gpu.count"),
        ("placement", {"gpu": {"resourceName": "bad name"}}, "spec.placement.gpu.resourceName"),
        (
            "placement",
            {"gpu": {"nodeSelector": {"bad key!": "x"}}},
            "spec.placement.gpu.nodeSelector['bad key!']",
        ),
        (
            "placement",
            {"cpu": {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}},
            "spec.placement.cpu.tolerations[0].value",
        ),
        (
            "placement",
            {"cpu": {"tolerations": [{"effect": "NoSchedule"}]}},
            "spec.placement.cpu.tolerations[0].operator",
        ),
        ("priorityClassName", "High_Priority", "spec.priorityClassName"),
        ("queueName", "q" * 64, "spec.queueName"),
        ("callable", "not a callable", "spec.callable"),
        ("callable", "module.only", "spec.callable"),
        ("dependsOn", ["other", "other"], "spec.dependsOn[1]"),
        ("dependsOn", ["thumbs"], "spec.dependsOn"),
        ("dependsOn", ["UPPER"], "spec.dependsOn[0]"),
        ("dependsOn", "other", "spec.dependsOn"),
        ("timeouts", {"dependenciesSeconds": 0}, "spec.timeouts.dependenciesSeconds"),
        ("timeouts", {"dependenciesSeconds": -5}, "spec.timeouts.dependenciesSeconds"),
        ("timeouts", {"dependenciesSeconds": "60"}, "spec.timeouts.dependenciesSeconds"),
    ],
)
def test_field_problems_are_reported_at_their_path(field: str, value: Any, path: str) -> None:
    found = paths(body(**{field: value}))
    assert path in found, found


def test_seconds_accept_integers_and_fractions() -> None:
    spec = model(body(timeouts={"microtaskSeconds": 2, "shardSeconds": 0.5})).spec
    assert spec.timeouts.microtask_seconds == 2.0
    assert isinstance(spec.timeouts.microtask_seconds, float)
    assert spec.timeouts.shard_seconds == 0.5
    assert spec.timeouts.dependencies_seconds is None  # no limit unless set
    spec = model(body(timeouts={"dependenciesSeconds": 90})).spec
    assert spec.timeouts.dependencies_seconds == 90.0


def test_messages_are_plain_words() -> None:
    found = dict(problems(body(parallelism="10", retry={"maxAttempts": 0}, suspend=None)))
    assert found["spec.parallelism"] == "must be an integer, not a string"
    assert found["spec.retry.maxAttempts"] == "must be at least 1, not 0"
    found = dict(problems(body(placement={"accelerator": "tpu"})))
    assert found["spec.placement.accelerator"] == "must be 'gpu', 'cpu' or 'auto', not 'tpu'"
    found = dict(problems(body(items=None)))
    assert found["spec.items"] == "required field is missing"
    found = dict(problems(body(template=[])))
    assert found["spec.template"] == "must be a mapping, not a list"


def test_unknown_fields_are_errors_with_suggestions() -> None:
    found = dict(problems(body(paralelism=3)))
    assert found["spec.paralelism"] == "unknown field (did you mean 'parallelism'?)"
    found = dict(problems(body(microtasks_per_shard=3)))
    assert found["spec.microtasks_per_shard"] == (
        "unknown field (did you mean 'microtasksPerShard'?)"
    )
    found = dict(problems(body(retry={"maxAttempt": 2}, zzz=1)))
    assert found["spec.retry.maxAttempt"] == "unknown field (did you mean 'maxAttempts'?)"
    assert found["spec.zzz"] == "unknown field"
    document = body()
    document["extra"] = 1
    assert ("extra", "unknown field") in problems(document)


def test_every_problem_is_reported_not_just_the_first() -> None:
    found = paths(body(parallelism=0, microtasksPerShard=0, retry={"maxAttempts": 0}))
    assert {"spec.parallelism", "spec.microtasksPerShard", "spec.retry.maxAttempts"} <= set(found)


# --- metadata -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("a" * 45, True),
        ("a" * 46, False),
        ("thumbs-2024", True),
        ("Thumbs", False),
        ("-thumbs", False),
        ("thumbs-", False),
        ("thumbs.v2", False),
        ("", False),
    ],
)
def test_name_is_a_short_dns_label(name: str, ok: bool) -> None:
    document = body()
    document["metadata"]["name"] = name
    assert (not paths(document)) == ok
    if not ok:
        assert paths(document) == ["metadata.name"]


def test_metadata_from_the_api_server_is_accepted() -> None:
    document = body()
    document["metadata"].update(
        namespace="team-a",
        uid="6f1c1a52-0000-0000-0000-000000000000",
        generation=3,
        resourceVersion="123",
        creationTimestamp="2024-05-01T10:00:00Z",
        managedFields=[{"manager": "kubectl"}],
        labels={"team": "a"},
    )
    assert model(document).metadata.namespace == "team-a"


@pytest.mark.parametrize(
    ("api_version", "kind", "path"),
    [
        ("microtask.dev/v1", "MicrotaskJob", "apiVersion"),
        ("microtask.dev/v1alpha1", "Job", "kind"),
        (None, "MicrotaskJob", "apiVersion"),
    ],
)
def test_api_version_and_kind(api_version: str | None, kind: str, path: str) -> None:
    document = body()
    document["kind"] = kind
    if api_version is None:
        del document["apiVersion"]
    else:
        document["apiVersion"] = api_version
    assert path in paths(document)


# --- the pod template -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "words"),
    [
        ({"spec": {"containers": []}}, "spec.template.spec.containers", "at least 1"),
        ({"spec": {}}, "spec.template.spec.containers", "required"),
        (worker(image=None), "spec.template.spec.containers[0].image", "required"),
        (worker(image=""), "spec.template.spec.containers[0].image", "at least 1 character"),
        (worker(name="Worker"), "spec.template.spec.containers[0].name", "DNS-1123"),
        (worker(command=None), "spec.template.spec.containers[0].command", "required"),
        (worker(command=[]), "spec.template.spec.containers[0].command", "required"),
        (worker(command="echo hi"), "spec.template.spec.containers[0].command", "a list"),
        (worker(command=["echo", 1]), "spec.template.spec.containers[0].command[1]", "string"),
        (
            worker(env=[{"name": "MICROTASK_ITEMS", "value": "x"}]),
            "spec.template.spec.containers[0].env[0].name",
            "set by the operator",
        ),
        (
            worker(terminationMessagePath="/tmp/x"),
            "spec.template.spec.containers[0].terminationMessagePath",
            "/dev/termination-log",
        ),
        (
            worker(terminationMessagePolicy="FallbackToLogsOnError"),
            "spec.template.spec.containers[0].terminationMessagePolicy",
            "File",
        ),
        (
            {"spec": {"restartPolicy": "OnFailure", **worker()["spec"]}},
            "spec.template.spec.restartPolicy",
            "'Never'",
        ),
        (
            {
                "spec": {
                    "volumes": [{"name": "microtask-items", "emptyDir": {}}],
                    **worker()["spec"],
                }
            },
            "spec.template.spec.volumes[0].name",
            "choose another name",
        ),
        (
            {"metadata": {"labels": {"microtask.dev/shard": "1"}}, **worker()},
            "spec.template.metadata.labels['microtask.dev/shard']",
            "set by the operator",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"name": "w", "image": "x", "command": ["a"]},
                        {"name": "w", "image": "y"},
                    ]
                }
            },
            "spec.template.spec.containers[1].name",
            "duplicate",
        ),
        ({"spec": worker()["spec"], "other": 1}, "spec.template.other", "unknown field"),
    ],
)
def test_template_problems(template: dict[str, Any], path: str, words: str) -> None:
    found = problems(body(template=template))
    assert any(p == path and words in m for p, m in found), found


def test_template_keeps_kubernetes_fields_it_does_not_model() -> None:
    template = worker(
        resources={"limits": {"cpu": "1", "memory": "1Gi"}},
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        env=[{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
    )
    template["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    template["spec"]["serviceAccountName"] = "worker"
    template["metadata"] = {"labels": {"app": "thumbs"}, "annotations": {"a": "b"}}
    job = model(body(template=template))
    dumped = job.spec.template.model_dump(by_alias=True, exclude_unset=True)
    assert dumped == template


def test_python_mode_needs_no_command_and_forbids_one() -> None:
    job = model(body(callable="thumbs.work:run", template=worker(command=None)))
    assert job.spec.callable_ == "thumbs.work:run"
    found = problems(body(callable="thumbs.work:run"))
    assert found[0][0] == "spec.template.spec.containers[0].command"
    assert "callable" in found[0][1]
    found = problems(body(callable="m:f", template=worker(command=None, args=["x"])))
    assert found[0][0] == "spec.template.spec.containers[0].args"


def test_a_job_cannot_depend_on_itself() -> None:
    found = problems(body(dependsOn=["other", "thumbs"]))
    assert found == [("spec.dependsOn", "a MicrotaskJob cannot depend on itself")]
    assert model(body(dependsOn=["a", "b"])).spec.depends_on == ["a", "b"]


# --- status ---------------------------------------------------------------------------------------

FULL_STATUS: dict[str, Any] = {
    "phase": "Running",
    "observedGeneration": 2,
    "total": 1000,
    "succeeded": 420,
    "failed": 1,
    "running": 100,
    "queued": 479,
    "attempts": 530,
    "shardsInFlight": 10,
    "speculativeCopies": 1,
    "succeededIndexes": "0-419",
    "failedIndexes": "999",
    "retryQueue": [{"attempts": 1, "notBefore": "2024-05-01T10:00:10Z", "indexes": "500-509"}],
    "retiredShards": "0-41",
    "nextShard": 52,
    "rebalances": {"node_lost": 2, "straggler": 1},
    "excludedNodes": [
        {"node": "n1", "level": "soft", "until": "2024-05-01T10:10:00Z", "failures": 2}
    ],
    "nodeFailures": [
        {
            "node": "n1",
            "failures": 2,
            "lastFailure": "2024-05-01T10:00:00Z",
            "suspect": "3,7-9",
            "exclusions": 1,
        }
    ],
    "durations": {"gpu": {"count": 300, "seconds": 120.5}, "cpu": {"count": 120, "seconds": 600}},
    "gpuFallbackUntil": "2024-05-01T10:05:00Z",
    "wastedSeconds": 12.5,
    "items": {"digest": "sha256:" + "0f" * 32, "configMap": "thumbs-items-5d7c9e4e"},
    "startTime": "2024-05-01T09:59:00Z",
    "completionTime": "2024-05-01T11:00:00Z",
    "message": "420/1000 succeeded",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Running",
            "message": "running",
            "lastTransitionTime": "2024-05-01T09:59:00Z",
            "observedGeneration": 2,
        }
    ],
}


def test_the_core_writes_exactly_the_status_the_crd_keeps() -> None:
    """Fields outside the status schema would be pruned by the API server and lost on restart."""
    from microtask_operator.core import conditions as core_conditions
    from microtask_operator.core.planner import plan
    from microtask_operator.core.state import CoreState, NodeRecord, PoolDurations, RetryBatch
    from microtask_operator.core.types import ClusterView, Pool

    state = CoreState(
        succeeded=IndexSet.parse("0-9"),
        failed=IndexSet.parse("10"),
        retry=(RetryBatch(1, 2000.0, IndexSet.parse("11-12")),),
        retired=IndexSet.parse("0-2"),
        kept=IndexSet.parse("2"),
        next_shard=3,
        attempts=14,
        rebalances={"node_lost": 1},
        nodes={
            "n1": NodeRecord(3, 1500.0, "soft", 2100.0, shards=4, exclusions=2),
            "n2": NodeRecord(1, 1400.0, shards=2),
        },
        durations={Pool.CPU: PoolDurations(3, 10, 12.5, 1, 3)},
        gpu_fallback_until=1900.0,
        wasted_seconds=3.5,
        start_time=1000.0,
        message="running",
        conditions=(core_conditions.Condition("Ready", "True", "Running", "running", 1000.0),),
    )
    job = model(body(items={"range": {"end": 100}}, microtasksPerShard=5))
    decision = plan(to_core_spec(job), state, [], ClusterView(), 1800.0)
    status = {**decision.status, "observedGeneration": 1}
    parsed = MicrotaskJobStatus.model_validate(status)  # strict: unknown fields are errors
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    assert dumped == {k: v for k, v in status.items() if v is not None}
    assert set(conditions.ConditionReason) >= {
        getattr(core_conditions, name)
        for name in dir(core_conditions)
        if name.startswith("REASON_")
    }


def test_status_model_round_trips_every_field() -> None:
    status = MicrotaskJobStatus.model_validate(FULL_STATUS)
    assert status.model_dump(by_alias=True, exclude_none=True) == FULL_STATUS
    assert MicrotaskJobStatus.model_validate({}).phase is None  # every field optional


@pytest.mark.parametrize(
    "change",
    [
        {"phase": "Done"},
        {"succeeded": -1},
        {"excludedNodes": [{"node": "n", "level": "medium", "until": "x", "failures": 1}]},
        {"conditions": [{"type": "Ready", "status": "true"}]},
        {"retryQueue": [{"attempts": 1}]},
        {"unknownCounter": 1},
        {"items": {"digest": "md5:0f0f"}},
        {"items": {"digest": "sha256:" + "0F" * 32}},
        {"items": {"configMap": "thumbs-items-5d7c9e4e"}},
        {"items": {"digest": "sha256:" + "0f" * 32, "configMap": "Not_A_Name"}},
    ],
)
def test_status_model_rejects_bad_values(change: dict[str, Any]) -> None:
    document = body()
    document["status"] = {**FULL_STATUS, **change}
    _, found = validate_job(document, include_status=True)
    assert found and all(p.path.startswith("status") for p in found), found


def test_the_status_does_not_invalidate_the_spec_by_default() -> None:
    document = body()
    document["status"] = {"phase": "SomethingNew", "futureField": 1}
    assert validate_job(document)[0] is not None


def test_parse_job_raises_with_every_problem() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_job(body(parallelism=0, items={}))
    assert {p.path for p in info.value.problems} == {"spec.parallelism", "spec.items"}
    assert "spec.parallelism" in str(info.value)
    assert parse_job(body()).metadata.name == "thumbs"


def test_validate_job_accepts_any_mapping() -> None:
    class Body(dict[str, Any]):
        pass

    document = Body(copy.deepcopy(body()))
    assert validate_job(document)[0] is not None


# --- conversions ----------------------------------------------------------------------------------


def test_to_core_spec_carries_every_policy() -> None:
    job = model(
        body(
            items={"range": {"end": 1000}},
            microtasksPerShard=25,
            parallelism=7,
            placement={
                "accelerator": "auto",
                "fallbackAfterSeconds": 60,
                "fallbackCooldownSeconds": 90,
            },
            retry={
                "maxAttempts": 5,
                "backoffSeconds": 2,
                "maxBackoffSeconds": 20,
                "nonRetryableExitCodes": [2, 3],
                "maxFailedMicrotasks": 4,
            },
            speculation={"enabled": True, "slowdownFactor": 2, "minSamples": 3, "maxFraction": 0.5},
            rebalance={
                "nodeLostGraceSeconds": 15,
                "badNodes": {
                    "enabled": False,
                    "softAfterFailures": 1,
                    "hardAfterFailures": 3,
                    "excludeSeconds": 60,
                    "maxExcludedFraction": 0.25,
                },
            },
            timeouts={"jobSeconds": 3600},
            suspend=True,
            keepFailedShards=5,
        )
    )
    core = to_core_spec(job)
    assert isinstance(core, CoreSpec)
    assert core.total == 1000
    assert (core.microtasks_per_shard, core.parallelism) == (25, 7)
    assert core.accelerator is Accelerator.AUTO
    assert (core.fallback_after_seconds, core.fallback_cooldown_seconds) == (60, 90)
    assert core.retry.max_attempts == 5
    assert (core.retry.backoff_seconds, core.retry.max_backoff_seconds) == (2, 20)
    assert core.retry.non_retryable_exit_codes == frozenset({2, 3})
    assert core.retry.max_failed_microtasks == 4
    assert core.speculation.enabled is True
    assert (core.speculation.slowdown_factor, core.speculation.min_samples) == (2, 3)
    assert core.speculation.max_fraction == 0.5
    assert core.bad_nodes.enabled is False
    assert (core.bad_nodes.soft_after_failures, core.bad_nodes.hard_after_failures) == (1, 3)
    assert (core.bad_nodes.exclude_seconds, core.bad_nodes.max_excluded_fraction) == (60, 0.25)
    assert core.node_lost_grace_seconds == 15
    assert core.job_timeout_seconds == 3600
    assert core.suspend is True
    assert core.keep_failed_shards == 5
    assert to_core_spec(job.spec, total=3).total == 3


def test_defaults_agree_with_the_core() -> None:
    core = to_core_spec(model(body()))
    # microtasksPerShard auto: the API's largest shard, sized to run 60 s.
    reference = CoreSpec(total=100, microtasks_per_shard=10_000, target_shard_seconds=60.0)
    assert core == reference


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("a\nb\n", "lines", ["a", "b"]),
        ("a\nb", "lines", ["a", "b"]),
        ("a\r\nb\r\n", "lines", ["a", "b"]),
        # blank (or whitespace-only) lines are not items
        ("a\n\nb\n", "lines", ["a", "b"]),
        ("a\n  \t\nb\n", "lines", ["a", "b"]),
        ("", "lines", []),
        ("\n", "lines", []),
        ('[1, "x", {"a": 2}]', "json", [1, "x", {"a": 2}]),
        ("[]", "json", []),
    ],
)
def test_config_map_items_follow_the_runner_rules(text: str, fmt: Any, expected: list[Any]) -> None:
    assert parse_config_map_items(text, fmt) == expected


def test_total_of_a_config_map_source() -> None:
    job = model(body(items={"configMapRef": {"name": "urls", "key": "list.txt"}}))
    assert total_microtasks(job, {"list.txt": "a\nb\nc\n"}) == 3
    with pytest.raises(ItemsError, match="needed"):
        total_microtasks(job)
    with pytest.raises(ItemsError, match=r"no key 'list.txt'.*keys: other"):
        total_microtasks(job, {"other": "x"})
    json_job = model(body(items={"configMapRef": {"name": "u", "key": "k", "format": "json"}}))
    assert total_microtasks(json_job, {"k": "[1, 2]"}) == 2
    with pytest.raises(ItemsError, match="not valid JSON"):
        total_microtasks(json_job, {"k": "[1,"})
    with pytest.raises(ItemsError, match="JSON array"):
        total_microtasks(json_job, {"k": '{"a": 1}'})
    with pytest.raises(ItemsError, match="ConfigMap"):
        to_core_spec(job)
    assert to_core_spec(job, {"list.txt": "x\n"}).total == 1


def test_runner_items_for_each_source() -> None:
    shard = IndexSet.parse("2-3")
    ranged = model(body(items={"range": {"start": 100, "end": 200, "step": 5}}))
    assert runner_items(ranged, shard) == {"range": {"start": 100, "step": 5}}
    listed = model(body(items={"list": ["a", {"b": 1}, "c", 4]}))
    assert runner_items(listed, shard) == {"values": {"2": "c", "3": 4}}
    with pytest.raises(ItemsError):
        runner_items(listed, IndexSet.parse("3-4"))
    mapped = model(body(items={"configMapRef": {"name": "u", "key": "k", "format": "json"}}))
    assert runner_items(mapped, shard, "/etc/microtask/items/k") == {
        "file": "/etc/microtask/items/k",
        "format": "json",
    }
    with pytest.raises(ItemsError):
        runner_items(mapped, shard)


def test_runner_reads_what_the_operator_writes(tmp_path: Any) -> None:
    """The MICROTASK_ITEMS the operator builds gives the runner the intended items."""
    from microtask_runner.items import load_items

    listed = model(body(items={"list": ["a", {"b": 1}, "c", 4]}))
    shard = IndexSet.parse("1-3")
    source = load_items(json.dumps(runner_items(listed, shard)))
    assert [source.get(i) for i in shard] == [{"b": 1}, "c", 4]
    ranged = model(body(items={"range": {"start": 100, "end": 200, "step": 5}}))
    source = load_items(json.dumps(runner_items(ranged, shard)))
    assert [source.get(i) for i in shard] == [105, 110, 115]
    text = "a\r\n\nb\n \nc"
    path = tmp_path / "k"
    path.write_bytes(text.encode())
    mapped = model(body(items={"configMapRef": {"name": "u", "key": "k"}}))
    source = load_items(json.dumps(runner_items(mapped, IndexSet.parse("0-2"), str(path))))
    assert [source.get(i) for i in range(3)] == parse_config_map_items(text, "lines")
    assert parse_config_map_items(text, "lines") == ["a", "b", "c"]
    assert total_microtasks(mapped, {"k": text}) == 3


# --- the digest of the item source ----------------------------------------------------------------


def test_the_items_digest_is_sha256_of_the_source_in_any_key_order() -> None:
    from types import MappingProxyType

    from microtask_operator.api.digest import items_digest

    items = {"list": ["a", {"x": 1, "y": [True, None, 2.5]}, 3]}
    digest = items_digest(items, None)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert MicrotaskJobStatus.model_validate({"items": {"digest": digest}}).items is not None
    reordered = {"list": ["a", {"y": [True, None, 2.5], "x": 1}, 3]}
    assert items_digest(reordered, None) == digest
    # Watched bodies hold views, not dicts and lists.
    view = MappingProxyType({"list": ("a", MappingProxyType({"y": [True, None, 2.5], "x": 1}), 3)})
    assert items_digest(view, None) == digest
    ranged = {"range": {"start": 0, "end": 10, "step": 1}}
    assert items_digest(ranged, None) == items_digest(
        {"range": {"step": 1, "end": 10, "start": 0}}, None
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"list": ["a", "b"]}, {"list": ["a"]}),
        ({"list": ["a", "b"]}, {"list": ["b", "a"]}),
        ({"list": [1]}, {"list": ["1"]}),
        ({"list": [1]}, {"list": [True]}),
        ({"list": [{"x": 1}]}, {"list": [{"x": 1, "y": None}]}),
        ({"range": {"start": 0, "end": 10}}, {"range": {"start": 1, "end": 10}}),
        ({"range": {"start": 0, "end": 10}}, {"range": {"start": 0, "end": 11}}),
        (
            {"configMapRef": {"name": "a", "key": "k", "format": "lines"}},
            {"configMapRef": {"name": "b", "key": "k", "format": "lines"}},
        ),
    ],
)
def test_any_change_of_the_items_changes_the_digest(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    from microtask_operator.api.digest import items_digest

    assert items_digest(before, None) != items_digest(after, None)


def test_the_digest_of_a_config_map_source_covers_its_text() -> None:
    from microtask_operator.api.digest import items_digest

    ref = {"configMapRef": {"name": "urls", "key": "urls.txt", "format": "lines"}}
    digest = items_digest(ref, "a\nb\n")
    assert items_digest(ref, "a\nb\n") == digest
    assert items_digest(ref, "a\nb\nc\n") != digest
    assert items_digest(ref, "a\r\nb\n") != digest
    assert items_digest(ref, "") != items_digest(ref, None)
    # The two parts cannot trade bytes: a text never passes for a part of the spec.
    assert items_digest({"list": ["a"]}, "b") != items_digest({"list": ["a", "b"]}, None)
    assert items_digest(ref, "\ud800") != digest  # a lone surrogate is hashed, not an error
