"""The API answering a seeded share of the operator's requests with errors, cutting its watches
and holding some answers back: the run ends exactly as a clean run of the same job beside it.

Two namespaces run the same job at the same time, each with an operator of its own: one behind a
clean fault proxy, one behind a proxy with the chaos profile. Their final statuses agree on every
field that does not depend on timing; both count executions exactly; the troubled operator creates
no Job twice and makes no more requests than a generous bound derived from the job's size.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.support import (
    Chaos,
    ChaosProfile,
    Deadline,
    ExecutionLog,
    OperatorRuns,
    chaos_job,
    created_jobs,
    stream,
    wait_finished,
)
from tests.integration.harness.cluster import Cluster

TOTAL = 1_500
PER_SHARD = 25
PARALLELISM = 5
FAILING_ONCE = 4
BUDGET_SECONDS = 150
# Fields of the final status that do not depend on timing (shard ids, node choices and durations
# do: two failures harvested together share one retry shard).
OUTCOME_FIELDS = (
    "phase",
    "total",
    "succeeded",
    "failed",
    "running",
    "queued",
    "attempts",
    "shardsInFlight",
    "speculativeCopies",
    "succeededIndexes",
    "failedIndexes",
    "retryQueue",
    "inFlight",
    "rebalances",
    "notRun",
    "succeededAfterRetry",
)
# Requests the operator may make per shard, all causes together (watches, reads, status writes,
# creates, deletes, Events and their retries): a tight loop makes thousands.
REQUESTS_PER_SHARD = 10
REQUESTS_AT_START = 200


def outcome(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: status.get(k) for k in OUTCOME_FIELDS}
    # Which node a retry lands on decides whether a failure counts against a node: timing.
    out["rebalances"] = {k: v for k, v in (out["rebalances"] or {}).items() if k != "bad_node"}
    out["conditions"] = sorted(
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []
    )
    return out


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_api_errors_cut_watches_and_delays_end_like_a_clean_run(
    cluster: Cluster, chaos_cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    rng = stream(seed, "api-faults")
    failing = sorted(rng.sample(range(TOTAL), FAILING_ONCE))
    profile = ChaosProfile()
    clean_view = chaos_cluster.view()
    name = "faults"
    logs = {"clean": ExecutionLog(tmp_path / "clean"), "chaos": ExecutionLog(tmp_path / "chaos")}
    for log in logs.values():
        log.fail_once(failing)
    views = {"clean": clean_view, "chaos": cluster}
    deadline = Deadline(BUDGET_SECONDS)
    print(f"seed {seed}: failing once {failing}; profile {profile}")
    chaos = Chaos(cluster.proxy, profile, seed)
    try:
        with (
            OperatorRuns(clean_view) as clean_runs,
            OperatorRuns(cluster) as runs,
            runs.explain(seed, chaos.summary),
            clean_runs.explain(seed),
        ):
            clean_runs.start()
            with chaos:
                started = time.monotonic()
                runs.start()
                for kind, view in views.items():
                    view.create(
                        chaos_job(
                            name,
                            logs[kind],
                            total=TOTAL,
                            per_shard=PER_SHARD,
                            parallelism=PARALLELISM,
                            retry={"maxAttempts": 3, "backoffSeconds": 0.2, "maxBackoffSeconds": 1},
                        )
                    )
                statuses = {kind: wait_finished(v, name, deadline) for kind, v in views.items()}
                elapsed = time.monotonic() - started
            requests = len(cluster.proxy.requests)
            clean_requests = len(clean_view.proxy.requests)
            shards = int(statuses["chaos"].get("nextShard") or 0)
            created = created_jobs(cluster, name)
            print(
                f"seed {seed}: {chaos.summary()}; {requests} requests in {elapsed:.0f}s "
                f"({requests / elapsed:.1f}/s; the clean run: {clean_requests}); "
                f"{shards} shards, {len(created)} Jobs created"
            )

            assert outcome(statuses["chaos"]) == outcome(statuses["clean"])
            for kind, status in statuses.items():
                executions = logs[kind].per_index()
                assert status["phase"] == "Succeeded", (kind, status)
                assert status["succeededIndexes"] == f"0-{TOTAL - 1}", kind
                wrong = {
                    i: executions.get(i, 0)
                    for i in range(TOTAL)
                    if executions.get(i, 0) != (2 if i in failing else 1)
                }
                assert not wrong, f"{kind}: indexes run a wrong number of times: {wrong}"
                assert status["attempts"] == TOTAL + FAILING_ONCE, (kind, status)
            assert sum(chaos.injected.values()) > 0 and chaos.cuts > 0, chaos.summary()
            twice = [n for n, k in Counter(created).items() if k > 1]
            assert not twice, f"Jobs created twice: {twice}"
            assert sorted(created) == sorted(f"{name}-s{i}" for i in range(shards))
            bound = REQUESTS_AT_START + REQUESTS_PER_SHARD * shards
            assert requests <= bound, (
                f"{requests} requests for {shards} shards (at most {bound}): a tight loop?\n"
                f"{Counter((r.verb, r.resource, code) for r, code in cluster.proxy.requests)}"
            )
    finally:
        clean_view.close()
