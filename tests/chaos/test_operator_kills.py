"""The operator SIGKILLed at seeded points of a 10,000-microtask run, some microtasks failing once.

Whatever the operator was doing when it died (creating Jobs, writing the status, harvesting,
deleting), the run ends with every microtask succeeded once in the status, run exactly as often as
its failures call for, each shard's Job created once, and `status.attempts` equal to the
executions counted outside the operator.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from tests.chaos.support import (
    Deadline,
    ExecutionLog,
    OperatorRuns,
    chaos_job,
    created_jobs,
    kill_points,
    status_of,
    stream,
    wait_finished,
)
from tests.integration.harness.cluster import Cluster

TOTAL = 10_000
PER_SHARD = 100
PARALLELISM = 10
KILLS = 10
FAILING_ONCE = 6
BUDGET_SECONDS = 330


def reached(log: ExecutionLog, point: float) -> bool:
    return log.count() >= point


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_sigkilled_operator_loses_nothing_and_repeats_nothing(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    rng = stream(seed, "operator-kills")
    log = ExecutionLog(tmp_path / "kills")
    failing = sorted(rng.sample(range(TOTAL), FAILING_ONCE))
    log.fail_once(failing)
    points = kill_points(seed, KILLS, TOTAL)
    pauses = [(rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.5)) for _ in points]
    print(f"seed {seed}: failing once {failing}; kills after {[int(p) for p in points]} executions")
    deadline = Deadline(BUDGET_SECONDS)
    name = "kills"

    def facts() -> str:
        status = status_of(cluster, name)
        brief = {
            k: status.get(k) for k in ("phase", "succeeded", "failed", "attempts", "nextShard")
        }
        return f"status {brief}; {log.count()} executions; {len(created_jobs(cluster, name))} Jobs"

    with OperatorRuns(cluster) as runs, runs.explain(seed, facts):
        runs.start()
        cluster.create(
            chaos_job(
                name,
                log,
                total=TOTAL,
                per_shard=PER_SHARD,
                parallelism=PARALLELISM,
                # Retries in retry shards (not in their pods): their Jobs are what kills hit.
                retry={
                    "maxAttempts": 3,
                    "backoffSeconds": 0.2,
                    "maxBackoffSeconds": 1,
                    "inPod": False,
                },
            )
        )
        for point, (before, after) in zip(points, pauses, strict=True):
            deadline.wait_for(partial(reached, log, point), f"{int(point)} executions")
            time.sleep(before)  # somewhere within a reconcile, not always at its start
            runs.kill()
            time.sleep(after)
            runs.start()
        status = wait_finished(cluster, name, deadline)

        executions = log.executions()
        per_index = Counter(e.index for e in executions)
        created = created_jobs(cluster, name)
        relayed = cluster.proxy.count("create", "jobs", code=201)
        shards = int(status.get("nextShard") or 0)
        print(
            f"seed {seed}: {runs.kills} kills, {len(executions)} executions, "
            f"attempts {status.get('attempts')}, {shards} shards ({shards - TOTAL // PER_SHARD} "
            f"retry shards), {len(created)} Jobs created, "
            f"{relayed} answers 201 to POST jobs reached the operator"
        )
        assert runs.kills == KILLS
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status.get("failed", 0)) == (TOTAL, 0), status
        assert status["succeededIndexes"] == f"0-{TOTAL - 1}"
        wrong = {
            i: per_index.get(i, 0)
            for i in range(TOTAL)
            if per_index.get(i, 0) != (2 if i in failing else 1)
        }
        assert not wrong, (
            f"indexes run a wrong number of times (index: runs): {dict(list(wrong.items())[:20])}"
        )
        assert len(executions) == TOTAL + FAILING_ONCE
        assert status["attempts"] == len(executions)
        twice = [n for n, k in Counter(created).items() if k > 1]
        assert not twice, f"Jobs created twice: {twice}"
        assert shards > TOTAL // PER_SHARD, "the failures got no retry shard"
        assert sorted(created) == sorted(f"{name}-s{i}" for i in range(shards))
        # The API server's audit log counts every Job it created; the proxy logs an answer only
        # when it reaches a live client, so a create the kill cut short is missing there (and
        # the restarted operator must have adopted its Job, not made another).
        assert relayed <= len(created)
