"""The adapter's reconcile against an in-memory API: what it does when things go wrong.

A shard that cannot be built, an unexpected error, a status reset or unreadable after a restart, a
ConfigMap edited mid-run, spec.items edited behind the API server's back, pods refused by
admission: each ends with a condition, an Event, and the job going on (or failing with a reason).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from microtask_operator import labels as L
from microtask_operator.adapter import reconcile as reconcile_module
from microtask_operator.adapter.kube import ApiError
from microtask_operator.adapter.observe import NodeInfo
from microtask_operator.adapter.reconcile import Cluster, Reconciler
from microtask_operator.api import indexsets
from microtask_operator.api.indexsets import apply_patch
from microtask_operator.api.items import ItemsError
from microtask_operator.core.decision import APPLY_ORDER, Step
from microtask_operator.core.timefmt import to_rfc3339
from microtask_operator.core.types import Event, Pool
from microtask_operator.metrics import Metrics
from microtask_operator.settings import Settings
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

NS = "team"
UID = "0123456789abcdef"
T0 = 1_800_000_000.0


def matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Does a label selector of `key=value` and `key in (a,b)` terms match the labels?"""
    terms = re.findall(r"([^,=\s]+)\s*(?:=\s*([^,]*)|\s+in\s+\(([^)]*)\))", selector)
    assert terms, selector
    for key, value, values in terms:
        wanted = {value} if not values else {v.strip() for v in values.split(",")}
        if labels.get(key) not in wanted:
            return False
    return True


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
        self.status: dict[str, Any] = {}  # the MicrotaskJob's status as the API server holds it
        self.config_map_bodies: dict[str, dict[str, Any]] = {}
        self.patch_error: ApiError | None = None  # the next status patch fails
        self.patch_applies = False  # ... after the API server applied it
        self.selectors: list[str] = []  # of the collections of Jobs deleted

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

    async def delete_jobs(self, namespace: str, selector: str) -> None:
        self.calls.append("delete_jobs")
        self.selectors.append(selector)
        for name, job in list(self.jobs.items()):
            if matches(selector, job["metadata"].get("labels") or {}):
                del self.jobs[name]

    async def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        self.calls.append("suspend_job")

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append("patch_status")
        if self.patch_error is not None:
            error, self.patch_error = self.patch_error, None
            if self.patch_applies:
                self.status = apply_patch(self.status, status)
            raise error
        self.status_patches.append(copy.deepcopy(status))
        self.status = apply_patch(self.status, status)

    async def get_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_status")
        return copy.deepcopy(self.status)

    async def put_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(f"put_config_map {body['metadata']['name']}")
        self.config_maps[body["metadata"]["name"]] = dict(body.get("data") or {})
        self.config_map_bodies[body["metadata"]["name"]] = copy.deepcopy(body)

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

    def __init__(
        self,
        spec: Mapping[str, Any],
        status: Mapping[str, Any] | None = None,
        *,
        inline_chars: int | None = None,
    ) -> None:
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
        self.api.status = copy.deepcopy(self.body["status"])
        self.inline_chars = inline_chars
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
            inline_chars=self.inline_chars,
        )

    def step(self, seconds: float = 1.0) -> None:
        self.now += seconds
        self.reconcile()
        self.after_reconcile()

    def reconcile(self) -> reconcile_module.Outcome:
        """One reconcile, and the clean-up it left behind it."""

        async def once() -> reconcile_module.Outcome:
            try:
                return await self.reconciler.reconcile(self.body)
            finally:
                await self.reconciler.flush()

        return asyncio.run(once())

    def after_reconcile(self) -> None:
        """What the watch shows next: the status and annotations as written."""
        self.body["status"] = copy.deepcopy(self.api.status)
        if self.api.annotations:
            self.body["metadata"]["annotations"] = dict(self.api.annotations)

    def finish(self, shard: int, first: int, count: int, *, failed: IndexSet | None = None) -> None:
        """The shard's pod ends with every microtask it ran succeeded (but `failed`, exit 1)."""
        failed = failed or IndexSet.EMPTY
        report = Report(
            succeeded=IndexSet.from_range(first, first + count) - failed,
            failed={1: failed} if failed else {},
            count=count,
            seconds_total=1.0,
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

    def set_status(self, status: dict[str, Any]) -> None:
        """Someone else writes the status (while the operator is away)."""
        self.body["status"] = copy.deepcopy(status)
        self.api.status = copy.deepcopy(status)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body["status"])

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions") or [] if c["type"] == type_), None)

    def shard_ids(self) -> list[int]:
        return sorted(int(j["metadata"]["labels"][L.SHARD]) for j in self.api.jobs.values())


RANGE = {"items": {"range": {"end": 20}}, "microtasksPerShard": 5, "parallelism": 2}


@pytest.fixture(autouse=True)
def harvested_jobs_deleted_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most tests here watch one harvest's delete: no batching of them but where asked for."""
    monkeypatch.setattr(reconcile_module, "HARVESTED_DELETES_TOGETHER", 1)


def test_harvested_jobs_are_deleted_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile_module, "HARVESTED_DELETES_TOGETHER", 3)
    world = World({**RANGE, "items": {"range": {"end": 40}}, "parallelism": 4})
    world.step()
    world.finish(0, 0, 5)
    world.api.calls.clear()
    world.step()
    # One harvested: its Job waits for company (the core asks for it again next time)...
    assert world.status["succeeded"] == 5
    assert "delete_jobs" not in world.api.calls and "j-s0" in world.api.jobs
    world.finish(1, 5, 5)
    world.step()
    assert "delete_jobs" not in world.api.calls
    # ...until three wait: one request for all of them.
    world.finish(2, 10, 5)
    world.step()
    assert world.api.calls.count("delete_jobs") == 1
    assert world.api.selectors[-1].endswith(f"{L.SHARD} in (0,1,2)")
    assert not {"j-s0", "j-s1", "j-s2"} & set(world.api.jobs)
    # One alone goes once it has waited long enough.
    world.finish(3, 15, 5)
    world.step()
    assert world.api.calls.count("delete_jobs") == 1
    world.step(reconcile_module.HARVESTED_DELETE_WAIT_SECONDS)
    assert world.api.calls.count("delete_jobs") == 2 and "j-s3" not in world.api.jobs
    # Counted once all along.
    assert world.status["succeeded"] == 20


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
    world.set_status({})
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
    world.set_status({**world.status, "succeededIndexes": "not an index set"})
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
    # A pod a couple of seconds late is normal under load: no Event list for it yet.
    world.step(seconds=2)
    assert "pod_refusals" not in world.api.calls
    assert world.status["phase"] != "Failed"
    world.step(seconds=4)
    # The Events are listed behind that reconcile; what they say is applied by the next one.
    assert world.api.calls.count("pod_refusals") == 1
    assert world.status["phase"] != "Failed"
    world.step(seconds=0.1)
    assert world.status["phase"] == "Failed"
    failed = world.condition("Failed")
    assert failed is not None and failed["reason"] == "PodsRefused"
    assert "violates PodSecurity" in failed["message"]
    assert world.api.jobs == {}  # cancelled


def test_the_events_of_a_late_pod_are_listed_behind_the_reconcile() -> None:
    world = World(RANGE)
    world.step()
    gate = asyncio.Event()
    woken: list[bool] = []
    world.reconciler.wake = lambda: woken.append(True)
    real = world.api.pod_refusals

    async def slow(namespace: str, job_name: str, *, uid: str | None = None) -> str | None:
        await gate.wait()
        return await real(namespace, job_name, uid=uid)

    world.api.pod_refusals = slow  # type: ignore[method-assign]
    world.api.refusal = 'pods "j-s0-abcde" is forbidden: violates PodSecurity "restricted:latest"'

    async def scenario() -> None:
        world.now += 6
        # It returns, its status written, while the list hangs.
        await asyncio.wait_for(world.reconciler.reconcile(world.body), timeout=10)
        assert world.api.status_patches and woken == []
        world.after_reconcile()
        world.now += 1
        await asyncio.wait_for(world.reconciler.reconcile(world.body), timeout=10)
        assert world.api.calls.count("pod_refusals") == 0  # one check at a time
        gate.set()
        await world.reconciler.flush()
        assert woken == [True]  # found: the loop is woken to act on it
        world.after_reconcile()
        world.now += 0.1
        await world.reconciler.reconcile(world.body)
        await world.reconciler.flush()

    asyncio.run(scenario())
    world.after_reconcile()
    assert world.status["phase"] == "Failed"


def test_a_refusal_found_for_a_shard_whose_pod_came_meanwhile_is_dropped() -> None:
    world = World(RANGE)
    world.step()
    world.api.refusal = 'pods "j-s0-abcde" is forbidden: violates PodSecurity "restricted:latest"'
    world.step(seconds=6)  # the check runs behind this reconcile and finds the refusal
    assert world.api.calls.count("pod_refusals") == 1
    for shard in (0, 1):
        world.pods[f"j-s{shard}"] = [_running_pod(f"j-s{shard}-abcde", to_rfc3339(world.now))]
    world.step(seconds=0.1)
    assert world.status["phase"] == "Running"
    assert world.condition("Failed") is None


def _running_pod(name: str, stamp: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": stamp},
        "spec": {"nodeName": "cpu-0"},
        "status": {
            "phase": "Running",
            "startTime": stamp,
            "containerStatuses": [{"state": {"running": {"startedAt": stamp}}}],
        },
    }


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


# --- large index sets: kept in ConfigMaps, read back after a restart ----------------------------

SCATTERED = {
    "items": {"range": {"end": 3000}},
    "microtasksPerShard": 1000,
    "parallelism": 3,
    "retry": {"maxAttempts": 1, "maxFailedMicrotasks": 3000},
}
EVERY_THIRD = IndexSet.from_indexes(range(0, 3000, 3))


def _run_scattered(world: World, shards: range = range(3)) -> None:
    world.step()
    for shard in shards:
        world.finish(
            shard,
            shard * 1000,
            1000,
            failed=EVERY_THIRD & IndexSet.from_range(shard * 1000, shard * 1000 + 1000),
        )
    world.step()


def _parts(world: World) -> dict[str, dict[str, str]]:
    return {k: v for k, v in world.api.config_maps.items() if "-indexes-" in k}


def test_large_index_sets_go_to_config_maps_first_and_come_back_after_a_restart() -> None:
    world = World(SCATTERED, inline_chars=500)
    world.step()
    world.api.calls.clear()
    for shard in range(2):
        first = shard * 1000
        world.finish(
            shard, first, 1000, failed=EVERY_THIRD & IndexSet.from_range(first, first + 1000)
        )
    world.step()
    status = world.status
    part = f"j-indexes-{UID[:8]}-a0"
    assert [c["name"] for c in status["indexSets"]["configMaps"]] == [part]
    assert set(status["indexSets"]["fields"]) >= {"failedIndexes", "succeededIndexes"}
    assert (
        status["failedIndexes"].startswith("0,3,6,9,") and "more ranges" in status["failedIndexes"]
    )
    # The part was written before the status that names it, and is owned by the job.
    assert world.api.calls.index(f"put_config_map {part}") < world.api.calls.index("patch_status")
    body = world.api.config_map_bodies[part]
    assert body["metadata"]["ownerReferences"][0]["uid"] == UID
    assert body["metadata"]["labels"][L.JOB] == "j"
    expected = EVERY_THIRD & IndexSet.from_range(0, 2000)
    assert world.reconciler.state is not None and world.reconciler.state.failed == expected

    # The operator restarts: the new one reads the parts and goes on with the exact sets.
    world.reconciler = world.new_reconciler()
    world.step()
    assert world.condition("Recovered") is None
    assert world.reconciler.state is not None and world.reconciler.state.failed == expected
    assert world.reconciler.state.succeeded == IndexSet.from_range(0, 2000) - expected
    world.finish(2, 2000, 1000, failed=EVERY_THIRD & IndexSet.from_range(2000, 3000))
    world.step()
    world.step()
    assert world.status["phase"] == "Succeeded" and world.status["failed"] == 1000  # tolerated
    exact = indexsets.join(world.status, world.api.config_maps)
    assert IndexSet.from_compact(exact["failedIndexes"]) == EVERY_THIRD
    assert len(json.dumps(world.status)) < 8000


def test_status_patches_send_only_what_changed() -> None:
    world = World(SCATTERED, inline_chars=500)
    _run_scattered(world, range(1))
    patches = world.api.status_patches
    assert "startTime" in patches[0] and "items" in patches[0]
    assert "startTime" not in patches[-1] and "items" not in patches[-1]
    assert "failedIndexes" in patches[-1] and "indexSets" in patches[-1]
    replayed: dict[str, Any] = {}
    for patch in patches:
        replayed = apply_patch(replayed, patch)
    assert replayed == world.api.status
    # Nothing changed: nothing sent.
    count = len(patches)
    world.step()
    assert len(world.api.status_patches) == count


def test_a_missing_part_after_a_restart_is_said_and_the_job_rebuilt() -> None:
    world = World(SCATTERED, inline_chars=500)
    _run_scattered(world, range(1))
    (part,) = _parts(world)
    del world.api.config_maps[part]
    world.reconciler = world.new_reconciler()
    world.step()
    cond = world.condition("Recovered")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == "StatusUnreadable"
    assert f"ConfigMap {part}" in cond["message"] and "missing" in cond["message"]
    assert "get_status" in world.api.calls  # read again first, in case the copy was behind


def test_a_status_patch_that_failed_after_it_was_applied_leaves_nothing_stale() -> None:
    world = World(SCATTERED, inline_chars=500)
    _run_scattered(world, range(1))
    assert world.status["indexSets"]["configMaps"][0]["name"].endswith("-a0")
    # The API server applies the next patch (it now names slot b) but the answer is lost.
    world.api.patch_error = ApiError("patch", "status", "error", "connection reset")
    world.api.patch_applies = True
    world.finish(1, 1000, 1000, failed=EVERY_THIRD & IndexSet.from_range(1000, 2000))
    with pytest.raises(ApiError):
        world.step()
    assert world.api.status["indexSets"]["configMaps"][0]["name"].endswith("-b0")
    world.api.calls.clear()
    world.finish(2, 2000, 1000, failed=EVERY_THIRD & IndexSet.from_range(2000, 3000))
    world.step()
    # The status is read again: the new content goes to slot a, never over the named slot b.
    assert world.api.calls[0:1] == ["get_status"] or "get_status" in world.api.calls
    assert world.status["indexSets"]["configMaps"][0]["name"].endswith("-a0")
    exact = indexsets.join(world.status, world.api.config_maps)
    assert IndexSet.from_compact(exact["failedIndexes"]) == EVERY_THIRD


def test_a_rerun_of_a_job_with_offloaded_index_sets_runs_exactly_its_failures() -> None:
    source = World(SCATTERED, inline_chars=500)
    _run_scattered(source)
    source.step()
    assert source.status["phase"] == "Succeeded" and "indexSets" in source.status
    rerun = World(
        {
            "items": {"fromJob": {"name": "j"}},
            "microtasksPerShard": 1000,
            "parallelism": 1,
        }
    )
    rerun.body["metadata"]["name"] = "again"
    rerun.api.config_maps.update(source.api.config_maps)
    rerun.reconciler.name = "again"
    rerun.reconciler.cluster.job_of = lambda ns, name: source.body if name == "j" else None
    rerun.step()
    assert IndexSet.from_compact(rerun.status["source"]["indexes"]) == EVERY_THIRD
    assert rerun.status["total"] == 1000


def test_a_status_reset_mid_run_is_written_again_whole() -> None:
    world = World(RANGE)
    world.step()
    started = world.status["startTime"]
    world.set_status({})  # someone wipes it while the operator runs
    world.finish(0, 0, 5)
    world.step()
    # Not only what changed since the operator's last write: all of it, start time included.
    assert world.status["startTime"] == started
    assert world.status["items"]["digest"].startswith("sha256:")
    assert world.status["succeeded"] == 5


def test_harvested_shards_go_in_one_delete_of_exactly_their_jobs() -> None:
    world = World({**RANGE, "parallelism": 3})
    world.step()
    assert world.shard_ids() == [0, 1, 2]
    # A Job of an earlier MicrotaskJob of the same name (another uid) is not this one's.
    world.api.jobs["j-s1-old"] = {
        "metadata": {"name": "j-s1-old", "labels": {L.JOB: "j", L.JOB_UID: "old", L.SHARD: "1"}}
    }
    world.finish(0, 0, 5)
    world.finish(2, 10, 5)
    world.api.calls.clear()
    world.step()
    assert world.status["succeeded"] == 10
    assert world.api.calls.count("delete_jobs") == 1
    assert world.api.selectors[-1] == f"{L.JOB}=j,{L.JOB_UID}={UID},{L.SHARD} in (0,2)"
    # The status that records the harvest is written before the Jobs go.
    assert world.api.calls.index("patch_status") < world.api.calls.index("delete_jobs")
    assert sorted(world.api.jobs) == ["j-s1", "j-s1-old", "j-s3"]


def test_a_delete_sent_a_moment_ago_is_not_sent_again() -> None:
    world = World(RANGE)
    world.step()
    world.finish(0, 0, 5)
    job = world.api.jobs["j-s0"]
    world.api.delete_jobs = _ignored(world.api)  # type: ignore[method-assign]
    world.step()
    world.api.jobs["j-s0"] = job  # the watch still shows it
    world.pods.pop("j-s1", None)
    world.step()
    assert world.api.calls.count("delete_jobs") == 1


def _ignored(api: FakeApi) -> Any:
    async def delete_jobs(namespace: str, selector: str) -> None:
        api.calls.append("delete_jobs")

    return delete_jobs


class FailingCreates(FakeApi):
    """Creates of the named Jobs fail: for a while (503), or for good (422)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()
        self.refuse: set[str] = set()

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        self.calls.append(f"create_job {name}")
        if name in self.fail:
            raise ApiError("create", name, 503, "Unavailable")
        if name in self.refuse:
            raise ApiError("create", name, 422, "Invalid", "is invalid")
        return await super().create_job(namespace, body)


def test_creates_go_in_shard_order_and_stop_at_a_failure() -> None:
    world = World({**RANGE, "parallelism": 3})
    api = world.api = FailingCreates()
    api.fail = {"j-s1"}
    world.reconciler = world.new_reconciler()
    with pytest.raises(ApiError):
        world.step()
    # What a failure (or a kill) leaves is a prefix: no shard id is skipped.
    assert [c for c in api.calls if c.startswith("create_job ")] == [
        "create_job j-s0",
        "create_job j-s1",
    ]
    assert sorted(api.jobs) == ["j-s0"]
    assert api.status_patches == []  # nothing recorded: the next reconcile starts from the Jobs
    api.fail = set()
    world.step()
    assert world.shard_ids() == [0, 1, 2]
    assert world.status["running"] == 15


def test_the_loop_may_settle_only_while_every_microtask_left_is_in_flight() -> None:
    world = World(RANGE)  # 4 shards, 2 at a time
    assert not world.reconcile().settle  # shards 2 and 3 wait for a slot: a finish starts one
    world.after_reconcile()
    world.finish(0, 0, 5)
    world.finish(1, 5, 5)
    world.now += 1
    outcome = world.reconcile()
    assert world.shard_ids() == [2, 3]
    assert outcome.settle  # the last wave: a change can only be harvested
    world.after_reconcile()
    world.finish(2, 10, 5, failed=IndexSet.from_range(10, 11))
    world.now += 1
    assert not world.reconcile().settle  # a retry waits to start


def test_the_clean_up_runs_behind_the_reconcile_and_in_order() -> None:
    world = World(RANGE)
    world.step()
    world.finish(0, 0, 5)
    gate = asyncio.Event()
    order: list[str] = []
    real = world.api.delete_jobs

    async def slow_delete(namespace: str, selector: str) -> None:
        await gate.wait()
        order.append("delete")
        await real(namespace, selector)

    async def suspend(namespace: str, name: str, suspend: bool) -> None:
        order.append(f"suspend {name}")

    world.api.delete_jobs = slow_delete  # type: ignore[method-assign]
    world.api.suspend_job = suspend  # type: ignore[method-assign]

    async def scenario() -> None:
        world.now += 1
        # It returns while the delete hangs (waiting for it, it would never return).
        await asyncio.wait_for(world.reconciler.reconcile(world.body), timeout=10)
        assert world.api.status["succeeded"] == 5 and "j-s0" in world.api.jobs
        world.after_reconcile()
        world.body["spec"]["suspend"] = True
        world.now += 1
        await asyncio.wait_for(world.reconciler.reconcile(world.body), timeout=10)
        assert order == []  # the suspends wait for the delete before them
        gate.set()
        await world.reconciler.flush()

    asyncio.run(scenario())
    assert order[0] == "delete" and order[1:] and all(o.startswith("suspend") for o in order[1:])
    assert "j-s0" not in world.api.jobs


def test_a_refused_create_fails_the_job_and_the_jobs_created_before_it_go() -> None:
    world = World({**RANGE, "parallelism": 3})
    api = world.api = FailingCreates()
    api.refuse = {"j-s1"}
    world.reconciler = world.new_reconciler()
    world.step()
    assert world.status["phase"] == "Failed"
    failed = world.condition("Failed")
    assert failed is not None and "Job j-s1: is invalid" in failed["message"]
    assert "create_job j-s2" not in api.calls
    # The shard created in the same reconcile is known to the decision: cancelled, not left.
    assert api.jobs == {}


def test_many_harvested_shards_are_deleted_a_bounded_number_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile_module, "DELETES_PER_REQUEST", 2)
    world = World({**RANGE, "parallelism": 4})
    world.step()
    for shard in range(4):
        world.finish(shard, shard * 5, 5)
    world.step()
    assert world.status["phase"] == "Succeeded"
    assert world.api.selectors == [
        f"{L.JOB}=j,{L.JOB_UID}={UID},{L.SHARD} in (0,1)",
        f"{L.JOB}=j,{L.JOB_UID}={UID},{L.SHARD} in (2,3)",
    ]
    assert world.api.jobs == {}


def _steps_taken(world: World) -> list[Step]:
    """The reconciler's steps, noted as it takes them (the work behind it runs later)."""
    taken: list[Step] = []
    reconciler = world.reconciler
    for name, step in [
        ("_create", Step.CREATE),
        ("_write_status", Step.RECORD),
        ("_delete", Step.DELETE),
        ("_suspend", Step.SUSPEND),
        ("emit", Step.EMIT),
    ]:
        original = getattr(reconciler, name)

        def noted(*args: Any, _original: Any = original, _step: Step = step, **kw: Any) -> Any:
            taken.append(_step)
            return _original(*args, **kw)

        setattr(reconciler, name, noted)
    return taken


def test_the_reconcile_takes_its_steps_in_the_core_order() -> None:
    world = World({**RANGE, "parallelism": 3})
    world.step()
    world.finish(0, 0, 5)  # harvested: deleted; a new shard takes its slot
    world.finish(1, 5, 5, failed=IndexSet.from_range(5, 6))  # an event says it failed
    taken = _steps_taken(world)
    world.step()
    assert {Step.CREATE, Step.RECORD, Step.DELETE, Step.EMIT} <= set(taken)
    assert taken == sorted(taken, key=APPLY_ORDER.index)
    # Suspended: the shards in flight are suspended after the status says so.
    world.body["spec"]["suspend"] = True
    taken.clear()
    world.step()
    assert Step.SUSPEND in taken and Step.EMIT in taken
    assert taken == sorted(taken, key=APPLY_ORDER.index)
