"""The adapter's reconcile against an in-memory API: what it does when things go wrong.

A shard that cannot be built, an unexpected error, a status reset or unreadable after a restart, a
ConfigMap edited mid-run, spec.items edited behind the API server's back, pods refused by
admission: each ends with a condition, an Event, and the job going on (or failing with a reason).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from microtask_operator import labels as L
from microtask_operator.adapter import reconcile as reconcile_module
from microtask_operator.adapter.kube import ApiError
from microtask_operator.adapter.observe import NodeInfo
from microtask_operator.adapter.reconcile import Cluster, Reconciler
from microtask_operator.api.items import ItemsError
from microtask_operator.core.timefmt import to_rfc3339
from microtask_operator.core.types import Event, Pool
from microtask_operator.metrics import Metrics
from microtask_operator.settings import Settings
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

NS = "team"
UID = "0123456789abcdef"
T0 = 1_800_000_000.0


class FakeApi:
    """The KubeApi calls the reconciler makes, answered from memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.annotations: dict[str, str] = {}
        self.refusal: str | None = None
        self.create_error: ApiError | None = None
        self.calls: list[str] = []

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append("create_job")
        if self.create_error is not None:
            raise self.create_error
        name = body["metadata"]["name"]
        if name in self.jobs:
            return False
        job = copy.deepcopy(body)
        job["metadata"]["creationTimestamp"] = to_rfc3339(T0)
        self.jobs[name] = job
        return True

    async def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append("delete_job")
        self.jobs.pop(name, None)

    async def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        self.calls.append("suspend_job")

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append("patch_status")
        self.status_patches.append(copy.deepcopy(status))

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.calls.append("annotate")
        self.annotations.update(annotations)

    async def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        self.calls.append(f"get_config_map {name}")
        data = self.config_maps.get(name)
        return dict(data) if data is not None else None

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append("create_config_map")
        name = body["metadata"]["name"]
        if name in self.config_maps:
            return False
        self.config_maps[name] = dict(body.get("data") or {})
        return True

    async def pod_refusals(
        self, namespace: str, job_name: str, *, uid: str | None = None
    ) -> str | None:
        self.calls.append("pod_refusals")
        return self.refusal


class World:
    """One MicrotaskJob, its reconciler, and the pods the test makes finish."""

    def __init__(self, spec: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> None:
        self.api = FakeApi()
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.events: list[Event] = []
        self.now = T0
        self.body: dict[str, Any] = {
            "apiVersion": "microtask.dev/v1alpha1",
            "kind": "MicrotaskJob",
            "metadata": {
                "name": "j",
                "namespace": NS,
                "uid": UID,
                "generation": 1,
                "creationTimestamp": to_rfc3339(T0 - 10),
            },
            "spec": {
                "template": {"spec": {"containers": [{"name": "w", "image": "busybox"}]}},
                "callable": "pkg.mod:fn",
                **copy.deepcopy(dict(spec)),
            },
            "status": dict(status or {}),
        }
        self.reconciler = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        nodes = {"cpu-0": NodeInfo(ready=True, since=None, pool=Pool.CPU)}
        return Reconciler(
            namespace=NS,
            name="j",
            api=self.api,  # type: ignore[arg-type]
            metrics=Metrics(registry=None),
            settings=Settings(),
            cluster=Cluster(
                jobs=lambda ns, mtj: list(self.api.jobs.values()),
                pods=lambda ns, job: self.pods.get(job, []),
                nodes=lambda: nodes,
                phase_of=lambda ns, mtj: None,
            ),
            emit=self.events.append,
            clock=lambda: self.now,
        )

    def step(self, seconds: float = 1.0) -> None:
        self.now += seconds
        asyncio.run(self.reconciler.reconcile(self.body))
        if self.api.status_patches:
            merged = dict(self.body["status"])
            merged.update(self.api.status_patches[-1])
            self.body["status"] = merged
        if self.api.annotations:
            self.body["metadata"]["annotations"] = dict(self.api.annotations)

    def finish(self, shard: int, first: int, count: int) -> None:
        """The shard's pod ends with every microtask it ran succeeded."""
        report = Report(
            succeeded=IndexSet.from_range(first, first + count), count=count, seconds_total=1.0
        ).encode()
        stamp = to_rfc3339(self.now)
        self.pods[f"j-s{shard}"] = [
            {
                "metadata": {"name": f"j-s{shard}-x", "creationTimestamp": stamp},
                "spec": {"nodeName": "cpu-0"},
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "reason": "Completed",
                                    "message": report,
                                    "startedAt": stamp,
                                    "finishedAt": stamp,
                                }
                            }
                        }
                    ],
                },
            }
        ]

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body["status"])

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions") or [] if c["type"] == type_), None)

    def shard_ids(self) -> list[int]:
        return sorted(int(j["metadata"]["labels"][L.SHARD]) for j in self.api.jobs.values())


RANGE = {"items": {"range": {"end": 20}}, "microtasksPerShard": 5, "parallelism": 2}


def test_a_shard_that_cannot_be_built_holds_new_shards_but_harvests_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(RANGE)
    world.step()
    assert world.shard_ids() == [0, 1]
    real_build = reconcile_module.build_job

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ItemsError("indexes 10-14 are outside the inline list")

    monkeypatch.setattr(reconcile_module, "build_job", broken)
    world.finish(0, 0, 5)
    world.step()
    world.step()
    assert world.status["succeeded"] == 5  # harvested all the same
    assert world.shard_ids() == [1]  # the harvested Job went; nothing new was made
    cond = world.condition("ReconcileError")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == "ShardBuildFailed"
    assert "outside the inline list" in cond["message"]
    warnings = [e for e in world.events if e.reason == "ShardBuildFailed"]
    assert len(warnings) == 1 and warnings[0].warning  # once, not once per reconcile

    monkeypatch.setattr(reconcile_module, "build_job", real_build)
    world.step()
    assert world.shard_ids() == [1, 2]
    cond = world.condition("ReconcileError")
    assert cond is not None and cond["status"] == "False"


def test_an_unexpected_error_becomes_a_condition_and_one_event() -> None:
    world = World(RANGE)
    world.step()
    asyncio.run(world.reconciler.report_error(RuntimeError("boom")))
    asyncio.run(world.reconciler.report_error(RuntimeError("boom")))
    patch = world.api.status_patches[-1]
    cond = next(c for c in patch["conditions"] if c["type"] == "ReconcileError")
    assert cond["status"] == "True" and cond["reason"] == "UnexpectedError"
    assert "RuntimeError: boom" in cond["message"]
    assert [e.reason for e in world.events].count("UnexpectedError") == 1


def test_the_start_is_noted_outside_the_status_once() -> None:
    world = World(RANGE)
    world.step()
    world.step()
    assert world.api.annotations == {L.STARTED_AT: world.status["startTime"]}
    assert world.api.calls.count("annotate") == 1


def test_a_status_reset_while_away_is_recognised_and_recovered_from_the_jobs() -> None:
    world = World(RANGE)
    world.step()
    started = world.status["startTime"]
    # The operator stops; someone resets the status; the operator comes back.
    world.body["status"] = {}
    world.api.status_patches.clear()
    world.reconciler = world.new_reconciler()
    world.step()
    cond = world.condition("Recovered")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "StatusReset"
    assert "2 shard Jobs" in cond["message"]
    assert world.status["startTime"] == started
    assert world.shard_ids() == [0, 1]  # the Jobs that exist are adopted, not made again
    assert [e.reason for e in world.events if e.warning].count("StatusReset") == 1
    world.finish(0, 0, 5)
    world.finish(1, 5, 5)
    for _ in range(6):
        world.step()
        for job in list(world.api.jobs.values()):
            shard = int(job["metadata"]["labels"][L.SHARD])
            first = IndexSet.from_compact(job["metadata"]["annotations"][L.INDEXES]).first()
            assert first is not None
            world.finish(shard, first, 5)
    assert world.status["phase"] == "Succeeded"
    assert world.status["succeededIndexes"] == "0-19"


def test_an_unreadable_status_is_recovered_with_a_condition() -> None:
    world = World(RANGE)
    world.step()
    world.body["status"] = {**world.status, "succeededIndexes": "not an index set"}
    world.reconciler = world.new_reconciler()
    world.step()
    cond = world.condition("Recovered")
    assert cond is not None and cond["reason"] == "StatusUnreadable"
    assert world.shard_ids() == [0, 1]


CONFIG_MAP = {
    "items": {"configMapRef": {"name": "inputs", "key": "items.txt"}},
    "microtasksPerShard": 2,
    "parallelism": 1,
}


def test_a_config_map_source_is_copied_at_the_start_and_later_edits_are_ignored() -> None:
    world = World(CONFIG_MAP)
    world.api.config_maps["inputs"] = {"items.txt": "a\nb\nc\nd\n"}
    world.step()
    snapshot = world.status["items"]["configMap"]
    assert snapshot.startswith("j-items-")
    assert world.api.config_maps[snapshot] == {"items.txt": "a\nb\nc\nd\n"}
    assert world.status["items"]["digest"].startswith("sha256:")
    # The shards mount the copy, never the user's ConfigMap.
    (job,) = world.api.jobs.values()
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert any((v.get("configMap") or {}).get("name") == snapshot for v in volumes)
    assert not any((v.get("configMap") or {}).get("name") == "inputs" for v in volumes)

    world.api.config_maps["inputs"] = {"items.txt": "x\ny\n"}
    world.step(seconds=60)
    cond = world.condition("SpecChangeIgnored")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "ItemsChanged"
    assert "ignored" in cond["message"]
    assert world.status["total"] == 4  # counted from the copy


def test_spec_items_edited_behind_the_api_servers_back_hold_new_shards() -> None:
    world = World(RANGE)
    world.step()
    world.body["spec"]["items"] = {"range": {"start": 100000, "end": 100020}}
    world.finish(0, 0, 5)
    world.step()
    assert world.status["succeeded"] == 5
    assert world.shard_ids() == [1]  # no shard runs items other than the ones started with
    cond = world.condition("SpecChangeIgnored")
    assert cond is not None and cond["status"] == "True"
    assert "spec.items changed after the job started" in cond["message"]
    world.body["spec"]["items"] = {"range": {"end": 20}}
    world.step()
    assert world.shard_ids() == [1, 2]
    cond = world.condition("SpecChangeIgnored")
    assert cond is not None and cond["status"] == "False"


def test_pods_refused_by_admission_fail_the_job_fast_quoting_the_refusal() -> None:
    world = World(RANGE)
    world.step()
    world.api.refusal = (
        'pods "j-s0-abcde" is forbidden: violates PodSecurity "restricted:latest": privileged'
    )
    world.step(seconds=2)
    assert world.status["phase"] == "Failed"
    failed = world.condition("Failed")
    assert failed is not None and failed["reason"] == "PodsRefused"
    assert "violates PodSecurity" in failed["message"]
    assert world.api.jobs == {}  # cancelled


def test_a_job_the_api_server_refuses_for_good_fails_the_job_quoting_it() -> None:
    world = World(RANGE)
    world.api.create_error = ApiError(
        "create",
        "job team/j-s0",
        422,
        "Unprocessable Entity",
        'Job.batch "j-s0" is invalid: spec.template.spec.containers[0].securityContext: '
        "Invalid value: cannot set allowPrivilegeEscalation to false and privileged to true",
    )
    world.step()
    assert world.status["phase"] == "Failed"
    failed = world.condition("Failed")
    assert failed is not None and failed["reason"] == "PodsRefused"
    assert "allowPrivilegeEscalation" in failed["message"]


def test_a_transient_refusal_is_retried_not_final() -> None:
    world = World(RANGE)
    world.api.create_error = ApiError(
        "create", "job team/j-s0", 403, "Forbidden", "exceeded quota: jobs, requested: count/jobs"
    )
    with pytest.raises(ApiError):
        world.step()
    world.api.create_error = None
    world.step()
    assert world.shard_ids() == [0, 1]
