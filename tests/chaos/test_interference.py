"""Others at work on the same objects: items edited mid-run (the spec's, a ConfigMap's), the status
reset while the operator is away, a shard's Job deleted, the MicrotaskJob deleted and re-created.

Each test lets the whole run play out and reports every way it went wrong at once, so one run
tells which of the guarantees hold.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.support import (
    Deadline,
    ExecutionLog,
    Findings,
    OperatorRuns,
    chaos_job,
    condition,
    shard_pods,
    status_of,
    stream,
    wait_executions,
    wait_finished,
)
from tests.integration.harness.apiclient import ApiError
from tests.integration.harness.cluster import Cluster

BUDGET_SECONDS = 100
RETRY = {"maxAttempts": 1, "backoffSeconds": 0.2, "maxBackoffSeconds": 1}


def started(cluster: Cluster, name: str) -> bool:
    return bool(status_of(cluster, name).get("startTime"))


# --- (a) spec.items edited once started --------------------------------------------------------


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_items_edits_after_the_start_are_refused_and_change_nothing(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    """Shrinking a list, moving range.start, extending range.end of a running job: the API
    server refuses each edit, and the job runs exactly the items it started with."""
    words = [f"w{i:02d}" for i in range(40)]
    rng = stream(seed, "interference/items")
    edits: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "listed": [("shrink the list", {"list": words[: rng.randint(5, 30)]})],
        "ranged": [
            # Merge patches: the second edit keeps the first one's start, if it was taken.
            ("move range.start", {"range": {"start": 100 + rng.randint(1, 20)}}),
            ("extend range.end", {"range": {"end": 140 + rng.randint(1, 40)}}),
        ],
    }
    logs = {name: ExecutionLog(tmp_path / name, sleep=0.1) for name in edits}
    expected = {"listed": words, "ranged": [str(100 + i) for i in range(40)]}
    findings = Findings()
    deadline = Deadline(BUDGET_SECONDS)
    with OperatorRuns(cluster) as runs, runs.explain(seed):
        runs.start()
        sources = {"listed": {"list": words}, "ranged": {"range": {"start": 100, "end": 140}}}
        for name, items in sources.items():
            body = chaos_job(name, logs[name], per_shard=5, parallelism=2, retry=RETRY)
            body["spec"]["items"] = items
            cluster.create(body)
        for name, changes in edits.items():
            deadline.wait_for(partial(started, cluster, name), f"{name} started")
            wait_executions(logs[name], deadline, 6)
            for what, items in changes:
                wait_executions(logs[name], deadline, logs[name].count() + 2)
                try:
                    cluster.patch("microtaskjobs", name, {"spec": {"items": items}})
                except ApiError as error:
                    findings.check(
                        error.code == 422 and "items" in error.message,
                        f"{name}: {what}: refused with {error.code} {error.message!r}",
                    )
                else:
                    findings.problems.append(f"{name}: {what}: the API server accepted it")
        for name, log in logs.items():
            status = findings.attempt(
                name, partial(wait_finished, cluster, name, deadline, at_most=45)
            )
            if status is None:
                continue
            findings.check(
                status.get("phase") == "Succeeded"
                and status.get("succeededIndexes") == "0-39"
                and status.get("total") == 40,
                f"{name}: final status {_brief(status)}, expected 40 succeeded (0-39)",
            )
            foreign = [
                (e.index, e.item)
                for e in log.executions()
                if e.index >= 40 or e.item != expected[name][e.index]
            ]
            findings.check(
                not foreign, f"{name}: runs of items it did not start with: {foreign[:10]}"
            )
            missing = set(range(40)) - set(log.per_index())
            findings.check(not missing, f"{name}: indexes never run: {sorted(missing)[:20]}")
        print(f"seed {seed}: items edits: {findings.problems or 'all held'}")
        findings.assert_none()


def _brief(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("phase", "total", "succeeded", "failed", "attempts", "succeededIndexes", "message")
    return {k: status.get(k) for k in keys}


# --- (b) the items' ConfigMap edited once started ------------------------------------------------


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_config_map_edited_after_the_start_is_ignored_and_said_so(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    """The items' ConfigMap rewritten mid-run (and the operator restarted): the job runs the
    lines it started with, and a condition SpecChangeIgnored says the edit is ignored."""
    rng = stream(seed, "interference/config-map")
    lines = [f"line-{i:02d}" for i in range(40)]
    edited = [f"edited-{i:02d}" for i in range(40 + rng.randint(-20, 20))]
    name = "from-map"
    log = ExecutionLog(tmp_path / name, sleep=0.1)
    findings = Findings()
    ignored: list[dict[str, Any]] = []
    deadline = Deadline(BUDGET_SECONDS)

    def note(status: dict[str, Any]) -> None:
        found = condition(status, "SpecChangeIgnored")
        if found is not None and found.get("status") == "True":
            ignored.append(found)

    with OperatorRuns(cluster) as runs, runs.explain(seed):
        runs.start()
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "words"},
                "data": {"list": "\n".join(lines) + "\n"},
            }
        )
        body = chaos_job(name, log, per_shard=5, parallelism=2, retry=RETRY)
        body["spec"]["items"] = {"configMapRef": {"name": "words", "key": "list"}}
        cluster.create(body)
        deadline.wait_for(lambda: started(cluster, name), f"{name} started")
        wait_executions(log, deadline, 6)
        cluster.patch("configmaps", "words", {"data": {"list": "\n".join(edited) + "\n"}})
        # A restarted operator must hold on to what the job started with, too.
        time.sleep(1.0)
        runs.kill()
        runs.start()
        status = findings.attempt(
            name, lambda: wait_finished(cluster, name, deadline, at_most=60, watch=note)
        )
        if status is not None:
            note(status)
            findings.check(
                status.get("phase") == "Succeeded"
                and status.get("succeededIndexes") == "0-39"
                and status.get("total") == 40,
                f"final status {_brief(status)}, expected 40 succeeded (0-39)",
            )
        foreign = [
            (e.index, e.item) for e in log.executions() if e.index >= 40 or e.item != lines[e.index]
        ]
        findings.check(not foreign, f"runs of items it did not start with: {foreign[:10]}")
        missing = set(range(40)) - set(log.per_index())
        findings.check(not missing, f"indexes never run: {sorted(missing)[:20]}")
        findings.check(ignored, "no condition SpecChangeIgnored=True was seen")
        print(f"seed {seed}: ConfigMap edit: {findings.problems or 'all held'}")
        findings.assert_none()


# --- (c) the status reset while the operator is away ----------------------------------------------


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_status_reset_while_the_operator_is_away_is_recovered_and_said_so(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    """The status wiped while the operator is stopped: the restarted operator rebuilds it from
    the Jobs, says so (condition Recovered, reason StatusReset; a warning Event) and finishes
    with no index lost."""
    total = 200
    name = "reset"
    log = ExecutionLog(tmp_path / name, sleep=0.02)
    findings = Findings()
    recovered: list[dict[str, Any]] = []
    deadline = Deadline(BUDGET_SECONDS)
    at = stream(seed, "interference/reset").randint(40, 120)

    def note(status: dict[str, Any]) -> None:
        found = condition(status, "Recovered")
        if found is not None and found.get("status") == "True":
            recovered.append(found)

    with OperatorRuns(cluster) as runs, runs.explain(seed):
        runs.start()
        cluster.create(chaos_job(name, log, total=total, per_shard=10, parallelism=3, retry=RETRY))
        wait_executions(log, deadline, at)
        runs.stop()
        before = status_of(cluster, name)
        # What a careless `kubectl edit --subresource=status`, or a restore without the status,
        # leaves: no counters, no index sets, no shard ids.
        cluster.patch("microtaskjobs", name, {"status": None}, subresource="status")
        findings.check(not status_of(cluster, name), "the status could not be reset")
        runs.start()
        status = findings.attempt(
            name, lambda: wait_finished(cluster, name, deadline, at_most=80, watch=note)
        )
        if status is not None:
            note(status)
            findings.check(
                status.get("phase") == "Succeeded"
                and status.get("succeededIndexes") == f"0-{total - 1}"
                and status.get("succeeded") == total
                and not status.get("failed"),
                f"final status {_brief(status)}, expected {total} succeeded",
            )
        missing = set(range(total)) - set(log.per_index())
        findings.check(not missing, f"indexes never run: {sorted(missing)[:20]}")
        findings.check(
            any(c.get("reason") == "StatusReset" for c in recovered),
            f"no condition Recovered=True with reason StatusReset was seen ({recovered[-1:]})",
        )
        warnings = [
            e
            for e in cluster.list("events")
            if e.get("type") == "Warning" and e.get("reason") in ("StatusReset", "Recovered")
        ]
        findings.check(warnings, "no warning Event (reason StatusReset or Recovered)")
        print(
            f"seed {seed}: status reset after {at} executions (status then: {_brief(before)}): "
            f"{log.count()} executions; {findings.problems or 'all held'}"
        )
        findings.assert_none()


# --- (d) a shard's Job deleted by someone else ---------------------------------------------------


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_shard_job_deleted_by_someone_else_counts_as_job_deleted(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    """A running shard's Job deleted by someone else: its work goes back uncharged and the
    rebalance is counted as job_deleted, not as a lost node."""
    total, per_shard, parallelism, held = 60, 10, 3, 3
    name = "job-deleted"
    log = ExecutionLog(tmp_path / name, sleep=0.05)
    log.hold([shard * per_shard + held for shard in range(total // per_shard)])
    findings = Findings()
    deadline = Deadline(BUDGET_SECONDS)
    with OperatorRuns(cluster) as runs, runs.explain(seed, cluster.dump):
        runs.start()
        cluster.create(
            chaos_job(
                name, log, total=total, per_shard=per_shard, parallelism=parallelism, retry=RETRY
            )
        )

        def all_held() -> list[str] | None:
            shards = {e.shard for e in log.executions() if e.index % per_shard == held}
            return (
                sorted(j["metadata"]["name"] for j in cluster.list("jobs"))
                if len(shards) == parallelism
                else None
            )

        jobs = deadline.wait_for(all_held, "every shard in flight held")
        victim = stream(seed, "interference/job-deleted").choice(jobs)
        victim_shard = int(victim.rsplit("-s", 1)[1])
        cluster.delete("jobs", victim)
        log.release()
        status = wait_finished(cluster, name, deadline)
        executions = log.executions()
        lost = [e for e in executions if e.shard == victim_shard]
        rebalances = status.get("rebalances") or {}
        print(
            f"seed {seed}: deleted {victim}: {len(executions)} executions ({len(lost)} by the "
            f"deleted shard), attempts {status.get('attempts')}, rebalances {rebalances}"
        )
        findings.check(
            status.get("phase") == "Succeeded"
            and status.get("succeeded") == total
            and not status.get("failed"),
            f"final status {_brief(status)}, expected {total} succeeded and none failed",
        )
        findings.check(
            rebalances.get("job_deleted", 0) >= 1, f"no job_deleted rebalance: {rebalances}"
        )
        findings.check(not rebalances.get("node_lost"), f"counted as node_lost: {rebalances}")
        again = {i for i, n in log.per_index().items() if n > 1}
        findings.check(
            again <= {e.index for e in lost}, f"run again without a reason: {sorted(again)}"
        )
        # What the deleted shard ran counts when its report was read before the pod went away.
        findings.check(
            len(executions) - len(lost) <= status.get("attempts", 0) <= len(executions),
            f"attempts {status.get('attempts')} outside [{len(executions) - len(lost)}, "
            f"{len(executions)}]",
        )
        findings.assert_none()


# --- (e) the MicrotaskJob deleted mid-run, and deleted and re-created ---------------------------


def _in_flight(cluster: Cluster, name: str) -> int:
    return sum(
        1 for p in shard_pods(cluster, name) if (p.get("status") or {}).get("phase") == "Running"
    )


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_deleted_job_stops_promptly_and_a_re_created_one_runs_alone(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    """A MicrotaskJob deleted mid-run starts no more microtasks than it had shards in flight
    and leaves no pod; deleted and re-created at once, its old pods never run beside the new."""
    rng = stream(seed, "interference/deleted")
    name = "doomed"
    spec: dict[str, Any] = {"total": 400, "per_shard": 10, "parallelism": 4, "retry": RETRY}
    # Microtasks of a second: a deletion reaches a pod within the one it runs (or the next,
    # started while the deletion was on its way, which the bound below allows one per pod).
    first = ExecutionLog(tmp_path / "first", sleep=1.0)
    second = ExecutionLog(tmp_path / "second", sleep=1.0)
    third = ExecutionLog(tmp_path / "third", sleep=1.0)
    findings = Findings()
    deadline = Deadline(BUDGET_SECONDS)

    def gone() -> bool:
        return (
            cluster.get("microtaskjobs", name) is None
            and not shard_pods(cluster, name)
            and not cluster.list("jobs", labels=f"microtask.dev/job={name}")
        )

    with OperatorRuns(cluster) as runs, runs.explain(seed, cluster.dump):
        runs.start()
        # 1. Deleted: only what runs at that moment may finish; nothing is left behind.
        cluster.create(chaos_job(name, first, **spec))
        wait_executions(first, deadline, rng.randint(10, 30))
        in_flight = _in_flight(cluster, name)
        mark = first.count()
        cluster.delete("microtaskjobs", name)
        findings.attempt(
            "everything gone", lambda: deadline.wait_for(gone, "pods and Jobs gone", at_most=40)
        )
        after = first.count() - mark
        findings.check(
            after <= in_flight,
            f"{after} microtasks started after the deletion ({in_flight} shards were in flight)",
        )

        # 2. Deleted and re-created at once: no old pod runs beside the new ones.
        cluster.create(chaos_job(name, second, **spec))
        wait_executions(second, deadline, rng.randint(10, 30))
        old_uid = (cluster.get("microtaskjobs", name) or {})["metadata"]["uid"]
        cluster.delete("microtaskjobs", name)

        def recreate() -> bool:
            try:
                cluster.create(chaos_job(name, third, **spec))
            except ApiError as error:
                if error.code == 409:  # the old one is still being deleted
                    return False
                raise
            return True

        deadline.wait_for(recreate, "the name free again", at_most=60)
        deadline.wait_for(lambda: third.count() > 0, "the new job's first microtask", at_most=40)
        old_when_new_ran = second.count()
        # An old pod being terminated may still finish the microtask it runs; one that is not
        # being terminated would go on with its shard.
        old_pods = [
            p["metadata"]["name"]
            for p in shard_pods(cluster, name)
            if p["metadata"]["labels"].get("microtask.dev/job-uid") == old_uid
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]
        findings.check(not old_pods, f"old pods running beside the new job's: {old_pods}")
        time.sleep(2.0)
        later = second.count() - old_when_new_ran
        findings.check(not later, f"the old job ran {later} microtasks after the new one started")
        cluster.delete("microtaskjobs", name)
        findings.attempt(
            "cleanup", lambda: deadline.wait_for(gone, "pods and Jobs gone", at_most=40)
        )
        print(
            f"seed {seed}: deleted with {in_flight} shards in flight: {after} microtasks after; "
            f"re-created: {findings.problems or 'all held'}"
        )
        findings.assert_none()
