"""The result store and reruns on the real control plane: records, logs, items.fromJob.

The store is a template volume whose hostPath is a folder of the test (our kubelet, like a real
one, gives the worker that very folder), so what the runner wrote is read back here, with the
contract's own names and delimiters.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from microtask_runner import contract
from microtask_runner.indexset import IndexSet

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    shard_jobs,
    status_of,
    wait_phase,
)

pytestmark = pytest.mark.timeout(240)


def with_store(body: dict[str, Any], folder: Path, path: str = "batches") -> dict[str, Any]:
    """`body` writing its records to `folder` (a hostPath volume of the template)."""
    pod = body["spec"]["template"]["spec"]
    pod["volumes"] = [
        {"name": "results", "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"}}
    ]
    body["spec"]["output"] = {"volume": {"name": "results", "path": path}}
    return body


def records(root: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """(job, shard, record) of every record under the store root `root`."""
    found: list[tuple[str, int, dict[str, Any]]] = []
    for file in sorted((root / contract.RECORDS_DIR).iterdir()):
        parsed = contract.parse_records_name(file.name)
        assert parsed is not None, file.name
        first, job, shard = parsed
        lines = [json.loads(line) for line in file.read_text().splitlines()]
        assert lines and lines[0]["index"] == first, file.name
        found.extend((job, shard, line) for line in lines)
    return found


def delimited(log: str) -> list[tuple[int, int, int]]:
    """(index, attempt, exit code) of every microtask a log copy shows, begin and end paired."""
    shown: list[tuple[int, int, int]] = []
    begun: tuple[int, int] | None = None
    for line in log.splitlines():
        begin = contract.parse_begin(line)
        if begin is not None:
            assert begun is None, f"a begin inside microtask {begun}"
            begun = begin
            continue
        end = contract.parse_end(line)
        if end is not None:
            assert begun == end[:2], f"{end} ends {begun}"
            shown.append(end)
            begun = None
    assert begun is None
    return shown


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def test_records_and_logs_land_in_a_volume_store(cluster: Cluster, tmp_path: Path) -> None:
    # Index 7 fails its first attempt: its pod runs it again (retry.inPod), and the store keeps
    # both attempts' records.
    command = [
        "python3",
        "-c",
        "import os, sys; i = os.environ['MICROTASK_INDEX']; print('working on', i);"
        "sys.exit(3 if i == '7' and os.environ['MICROTASK_ATTEMPT'] == '1' else 0)",
    ]
    body = microtask_job("stored", total=25, per_shard=10, parallelism=2, command=command)
    with running_operator(cluster) as op:
        cluster.create(with_store(body, tmp_path))
        status = wait_phase(cluster, "stored")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["output"] == {"url": "volume://results/batches/stored"}
        assert (status["attempts"], status["succeededAfterRetry"]) == (26, 1)
        op.assert_clean()

    root = tmp_path / "batches" / "stored"
    found = records(root)
    nodes = {n["metadata"]["name"] for n in cluster.list("nodes")}
    attempts = Counter((r["index"], r["attempt"]) for _, _, r in found)
    assert attempts == Counter({**{(i, 1): 1 for i in range(25)}, (7, 2): 1})
    for job, _, record in found:
        assert job == record["job"] == "stored"
        failed = (record["index"], record["attempt"]) == (7, 1)
        assert record["outcome"] == ("failed" if failed else "succeeded")
        assert record["node"] in nodes  # MICROTASK_NODE, from the downward API
        assert record["pool"] == "cpu"
    # One records file and one log copy per shard: three, both attempts of index 7 in one.
    shards = {shard for _, shard, _ in found}
    assert len(shards) == 3
    assert len({shard for _, shard, r in found if r["index"] == 7}) == 1
    logs = sorted(p.name for p in (root / contract.LOGS_DIR).iterdir())
    assert logs == sorted(contract.log_name("stored", s).split("/")[1] for s in shards)
    shown = []
    for shard in shards:
        log = (root / contract.log_name("stored", shard)).read_text()
        shown.extend(delimited(log))
        for index, _, _ in delimited(log):
            assert f"working on {index}\n" in log
    assert sorted(shown) == sorted((r["index"], r["attempt"], r["exitCode"]) for _, _, r in found)


def test_a_rerun_runs_exactly_what_failed_into_the_same_store(
    cluster: Cluster, tmp_path: Path
) -> None:
    executions = tmp_path / "executions"
    fixed = tmp_path / "fixed"
    # Every execution appends its index; 3, 11 and 12 fail for good until the program is fixed.
    command = [
        "python3",
        "-c",
        "import os, sys; i = os.environ['MICROTASK_INDEX'];"
        f"open({str(executions)!r}, 'a').write(i + '\\n');"
        f"sys.exit(2 if i in ('3', '11', '12') and not os.path.exists({str(fixed)!r}) else 0)",
    ]
    retry = {"nonRetryableExitCodes": [2], "maxFailedMicrotasks": 3, "backoffSeconds": 0.2}
    first = microtask_job("first", total=20, per_shard=5, command=command, retry=retry)
    rerun = microtask_job("again", per_shard=2, command=command)
    rerun["spec"]["items"] = {"fromJob": {"name": "first"}}
    with running_operator(cluster) as op:
        cluster.create(with_store(first, tmp_path / "store"))
        status = wait_phase(cluster, "first")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["failedIndexes"] == "3,11-12"
        store = status["output"]["url"]
        assert store == "volume://results/batches/first"
        assert sorted(map(int, executions.read_text().split())) == list(range(20))

        fixed.touch()
        cluster.create(with_store(rerun, tmp_path / "store"))
        status = wait_phase(cluster, "again")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["source"] == {
            "job": "first",
            "items": {"range": {"start": 0, "end": 20, "step": 1}},
            "indexes": "3,11-12",
        }
        assert status["output"] == {"url": store}  # the first job's store, as is
        assert (status["total"], status["succeeded"], status["failed"]) == (3, 3, 0)
        assert IndexSet.parse(status["succeededIndexes"]) == IndexSet.parse("3,11-12")
        resolved = condition(status, "WaitingForDependencies")
        assert resolved.get("status", "False") == "False"
        op.assert_clean()

    # The microtasks kept their indexes: exactly the three ran again, once each.
    ran = Counter(map(int, executions.read_text().split()))
    assert ran == Counter({**dict.fromkeys(range(20), 1), 3: 2, 11: 2, 12: 2})
    found = records(tmp_path / "store" / "batches" / "first")
    outcomes = {(job, r["index"]): r["outcome"] for job, _, r in found}
    assert {i for job, i in outcomes if job == "first"} == set(range(20))
    assert {i: outcomes[("again", i)] for job, i in outcomes if job == "again"} == {
        3: "succeeded",
        11: "succeeded",
        12: "succeeded",
    }
    assert outcomes[("first", 11)] == "failed"


def test_a_rerun_waits_for_its_source_to_appear_and_finish(cluster: Cluster) -> None:
    # Index 4 fails for good in `later` only: its rerun succeeds.
    command = [
        "python3",
        "-c",
        "import os, sys; sys.exit(2 if os.environ['MICROTASK_JOB'] == 'later'"
        " and os.environ['MICROTASK_INDEX'] == '4' else 0)",
    ]
    rerun = microtask_job("later-again", command=command)
    rerun["spec"]["items"] = {"fromJob": {"name": "later"}}
    source = microtask_job(
        "later",
        total=6,
        per_shard=2,
        command=command,
        retry={"nonRetryableExitCodes": [2], "maxFailedMicrotasks": 1},
    )
    with running_operator(cluster) as op:
        cluster.create(rerun)

        def waiting() -> dict[str, Any] | None:
            status = status_of(cluster, "later-again")
            held = condition(status, "WaitingForDependencies")
            return status if held.get("reason") == "SourceNotFound" else None

        status = cluster.wait_for(waiting, timeout=30, message="SourceNotFound")
        assert status is not None and status["phase"] == "Pending"
        held = condition(status, "WaitingForDependencies")
        assert held["status"] == "True" and "later" in held["message"]
        ready = condition(status, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "SourceNotFound")
        assert not shard_jobs(cluster, "later-again")

        cluster.create(source)
        assert wait_phase(cluster, "later")["status"]["failedIndexes"] == "4"
        status = wait_phase(cluster, "later-again")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["source"]["indexes"] == "4"
        assert status["succeededIndexes"] == "4"
        assert "output" not in status  # no spec.output: no store
        assert condition(status, "WaitingForDependencies")["status"] == "False"
        op.assert_clean()


def test_a_rerun_with_nothing_left_succeeds_at_once(cluster: Cluster) -> None:
    rerun = microtask_job("noop")
    rerun["spec"]["items"] = {"fromJob": {"name": "clean"}}
    with running_operator(cluster) as op:
        cluster.create(microtask_job("clean", total=4, per_shard=2))
        assert wait_phase(cluster, "clean")["status"]["phase"] == "Succeeded"
        cluster.create(rerun)
        status = wait_phase(cluster, "noop")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["message"] == "nothing to rerun: every microtask of clean succeeded"
        assert status["source"]["indexes"] == ""
        assert status["total"] == 0
        assert condition(status, "Complete")["status"] == "True"
        assert not shard_jobs(cluster, "noop")
        op.assert_clean()
