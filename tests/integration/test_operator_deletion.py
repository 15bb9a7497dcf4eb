"""Deleting a MicrotaskJob stops its work at once, on the real control plane.

Each microtask appends its index to a file, then takes a second, so the file tells what ran and
when. The operator deletes a MicrotaskJob's Jobs itself before letting the MicrotaskJob go (the
garbage collector would get to them only later): after a delete, each pod may start at most one
more microtask (the one it was starting when told to stop), and a MicrotaskJob re-created under
the same name never runs beside the old one's pods.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.adapter.deletion import DeletionGuard, stop_work
from microtask_operator.adapter.kube import KubeApi
from microtask_operator.metrics import Metrics

from tests.integration.harness.apiclient import ApiError
from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import microtask_job, running_operator, shard_jobs

SHARDS = 3
# Long shards: none ends by itself while the test looks.
TOTAL, PER_SHARD = 300, 100


def appending(path: Path) -> list[str]:
    # `$NAME` reaches the shell as written; only `$(NAME)` would be expanded by Kubernetes.
    return ["sh", "-c", f"echo $MICROTASK_INDEX >> {path}; sleep 1"]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def uid_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def jobs_of(cluster: Cluster, uid: str) -> list[dict[str, Any]]:
    return cluster.list("jobs", labels=f"microtask.dev/job-uid={uid}")


def pods_of(cluster: Cluster, uid: str) -> list[dict[str, Any]]:
    return cluster.list("pods", labels=f"microtask.dev/job-uid={uid}")


def start(cluster: Cluster, name: str, path: Path) -> str:
    """Create the job and wait until every shard runs a microtask; its uid."""
    created = cluster.create(
        microtask_job(
            name,
            total=TOTAL,
            per_shard=PER_SHARD,
            parallelism=SHARDS,
            command=appending(path),
        )
    )
    uid = uid_of(created)
    cluster.wait_for(
        lambda: (
            len([p for p in pods_of(cluster, uid) if p["status"].get("phase") == "Running"])
            == SHARDS
            and lines(path) >= SHARDS
        ),
        timeout=60,
        message=f"{SHARDS} shards of {name} running",
    )
    return uid


def still_running(objects: list[dict[str, Any]]) -> list[str]:
    """Names of the objects not yet being deleted."""
    return [o["metadata"]["name"] for o in objects if not o["metadata"].get("deletionTimestamp")]


def wait_gone_then_check(cluster: Cluster, name: str, uid: str) -> None:
    """Wait until the MicrotaskJob is gone; its Jobs must have gone first, its pods with them."""
    cluster.wait_for(
        lambda: cluster.get("microtaskjobs", name) is None, timeout=60, message=f"{name} gone"
    )
    # The same instant, as near as a test can see it: nothing of it is left running.
    assert still_running(jobs_of(cluster, uid)) == [], cluster.dump()
    assert pods_of(cluster, uid) == [], cluster.dump()


def test_a_deleted_job_stops_at_once_and_goes_only_after_its_jobs(
    cluster: Cluster, tmp_path: Path
) -> None:
    marks = tmp_path / "indexes"
    with running_operator(cluster) as op:
        uid = start(cluster, "doomed", marks)
        before = lines(marks)
        cluster.delete("microtaskjobs", "doomed")
        wait_gone_then_check(cluster, "doomed", uid)
        cluster.wait_for(lambda: not shard_jobs(cluster, "doomed"), timeout=30, message="no Jobs")
        # Its pods are gone, so nothing of it runs any more: what they wrote is all there is.
        after = lines(marks)
        assert after - before <= SHARDS, f"{after - before} microtasks began after the delete"
        op.assert_clean()


def test_a_job_recreated_under_its_name_never_runs_beside_the_old_pods(
    cluster: Cluster, tmp_path: Path
) -> None:
    old_marks, new_marks = tmp_path / "old", tmp_path / "new"
    with running_operator(cluster) as op:
        old = start(cluster, "again", old_marks)
        cluster.delete("microtaskjobs", "again")

        def recreate() -> str | None:
            body = microtask_job(
                "again",
                total=TOTAL,
                per_shard=PER_SHARD,
                parallelism=SHARDS,
                command=appending(new_marks),
            )
            try:
                return uid_of(cluster.create(body))
            except ApiError as error:  # the old one is still there (being deleted)
                if error.code == 409:
                    return None
                raise

        new = cluster.wait_for(recreate, timeout=60, interval=0.05, message="re-created")
        assert new != old
        cluster.wait_for(lambda: jobs_of(cluster, new), timeout=30, interval=0.02, message="Job")
        # The new job's first Job exists: no pod of the old one is left to run beside it.
        assert pods_of(cluster, old) == [], cluster.dump()
        assert jobs_of(cluster, old) == [], cluster.dump()
        frozen = lines(old_marks)
        cluster.wait_for(lambda: lines(new_marks) >= SHARDS, timeout=60, message="new work")
        assert lines(old_marks) == frozen
        cluster.delete("microtaskjobs", "again")
        wait_gone_then_check(cluster, "again", new)
        op.assert_clean()


def test_a_job_deleted_while_the_operator_is_down_is_stopped_when_it_returns(
    cluster: Cluster, tmp_path: Path
) -> None:
    marks = tmp_path / "indexes"
    with running_operator(cluster):
        uid = start(cluster, "orphan", marks)
    cluster.delete("microtaskjobs", "orphan")
    # Nobody removes the finalizer while the operator is away: the MicrotaskJob waits for it.
    assert cluster.get("microtaskjobs", "orphan") is not None
    assert still_running(jobs_of(cluster, uid)) != []
    with running_operator(cluster) as op:
        wait_gone_then_check(cluster, "orphan", uid)
        op.assert_clean()


# --- the same order against an in-memory API (no cluster) --------------------------------------


class MemoryApi:
    """Jobs and pods of one MicrotaskJob; a pod goes once its Job has been gone for a while."""

    def __init__(self, jobs: list[str], pods_linger: int = 2) -> None:
        self.jobs = {name: {"metadata": {"name": name}} for name in jobs}
        self.pods = {f"{name}-pod": name for name in jobs}
        self.linger = dict.fromkeys(self.pods, pods_linger)
        self.deleted: list[str] = []
        self.selectors: set[str] = set()

    async def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.selectors.add(selector)
        return list(self.jobs.values())

    async def delete_jobs(self, namespace: str, selector: str) -> None:
        self.selectors.add(selector)
        self.deleted.extend(self.jobs)
        self.jobs.clear()

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.selectors.add(selector)
        for pod, job in list(self.pods.items()):
            if job not in self.jobs:
                self.linger[pod] -= 1
                if self.linger[pod] < 0:
                    del self.pods[pod]
        return [
            {"metadata": {"name": p, "deletionGracePeriodSeconds": 0}, "spec": {}}
            for p in self.pods
        ]


def test_stop_work_deletes_the_jobs_waits_for_the_loop_sweeps_again_then_waits_for_pods() -> None:
    api = MemoryApi(["doomed-s0", "doomed-s1"])

    async def scenario() -> None:
        done = asyncio.Event()

        async def last_reconcile() -> None:
            # A create sent before the deletion was seen lands after the first sweep.
            await asyncio.sleep(0.05)
            api.jobs["doomed-s2"] = {"metadata": {"name": "doomed-s2"}}
            api.pods["doomed-s2-pod"] = "doomed-s2"
            api.linger["doomed-s2-pod"] = 1
            done.set()

        racing = asyncio.create_task(last_reconcile())
        cleanup = await stop_work(api, "ns", "doomed", "u-1", daemon_done=done)  # type: ignore[arg-type]
        await racing
        assert cleanup.jobs_deleted == 3 and cleanup.pods_left == 0

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert sorted(api.deleted) == ["doomed-s0", "doomed-s1", "doomed-s2"]
    assert api.jobs == {} and api.pods == {}
    # This uid only: a re-created MicrotaskJob of the same name is not touched.
    assert api.selectors == {"microtask.dev/job=doomed,microtask.dev/job-uid=u-1"}


def test_stop_work_gives_up_on_pods_that_never_go() -> None:
    api = MemoryApi(["stuck-s0"], pods_linger=10**9)
    cleanup = asyncio.run(
        asyncio.wait_for(
            stop_work(api, "ns", "stuck", "u", daemon_done=None, pod_margin=0.3),  # type: ignore[arg-type]
            timeout=60,
        )
    )
    assert api.jobs == {} and cleanup.pods_left == 1


def test_no_job_is_created_for_a_microtaskjob_being_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[str] = []

    async def create_job(self: KubeApi, namespace: str, body: dict[str, Any]) -> bool:
        created.append(body["metadata"]["name"])
        return True

    monkeypatch.setattr(KubeApi, "create_job", create_job)
    deleting = False
    guard = DeletionGuard(KubeApi(Metrics()), lambda: deleting)
    assert asyncio.run(guard.create_job("ns", {"metadata": {"name": "j-s0"}})) is True
    deleting = True
    assert asyncio.run(guard.create_job("ns", {"metadata": {"name": "j-s1"}})) is False
    assert created == ["j-s0"]
