"""Scattered failures on the real control plane: the status stays small, the exact sets do not leak.

The operator runs with a low inline limit (MICROTASK_STATUS_INLINE_CHARS), so a job of a few
thousand microtasks with every third one failing keeps its index sets in owned ConfigMaps. The
operator is killed mid-run and restarted; at the end the status is small, the ConfigMaps hold
exactly the failed and succeeded sets, and a rerun of the failures gets exactly them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.api import indexsets
from microtask_runner.indexset import IndexSet

from tests.integration.harness.cluster import Cluster
from tests.integration.operator_harness import (
    microtask_job,
    running_operator,
    status_of,
    wait_phase,
)
from tests.integration.test_cli_cluster import cli
from tests.integration.test_operator_items import operator_api

pytestmark = pytest.mark.timeout(300)

TOTAL = 3000
EVERY_THIRD = IndexSet.from_indexes(range(0, TOTAL, 3))
FAILING = ["sh", "-c", "test $((MICROTASK_INDEX % 3)) -ne 0"]
ENV = {indexsets.INLINE_CHARS_ENV: "200"}


def _parts(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    return {
        cm["metadata"]["name"]: cm
        for cm in cluster.list("configmaps", labels=f"microtask.dev/job={name}")
        if "-indexes-" in cm["metadata"]["name"]
    }


def _exact(cluster: Cluster, status: dict[str, Any]) -> dict[str, Any]:
    """The shared loader, reading the ConfigMaps as any client would."""

    def read(name: str) -> dict[str, str] | None:
        found = cluster.get("configmaps", name)
        return None if found is None else dict(found.get("data") or {})

    return indexsets.load(status, read)


def _offloaded(cluster: Cluster, name: str) -> bool:
    return "indexSets" in status_of(cluster, name)


def test_scattered_failures_keep_the_status_small_across_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    body = microtask_job(
        "scatter",
        total=TOTAL,
        per_shard=250,
        parallelism=2,
        command=FAILING,
        retry={"maxAttempts": 1, "maxFailedMicrotasks": TOTAL, "backoffSeconds": 0.2},
    )
    with running_operator(cluster, env=ENV) as op:
        cluster.create(body)
        cluster.wait_for(
            lambda: (
                _offloaded(cluster, "scatter")
                and status_of(cluster, "scatter").get("succeeded", 0) >= 500
            ),
            timeout=120,
            message="index sets offloaded, some progress",
        )
        op.kill()  # no clean-up: as when its node dies
    middle = status_of(cluster, "scatter")
    assert middle.get("phase") == "Running", middle
    before = _exact(cluster, middle)
    assert IndexSet.from_compact(before["failedIndexes"]) <= EVERY_THIRD

    with running_operator(cluster, env=ENV) as op:
        obj = wait_phase(cluster, "scatter", timeout=180)
        op.assert_clean()
    status = obj["status"]
    assert status["phase"] == "Succeeded", status  # the failures are tolerated
    assert (status["succeeded"], status["failed"]) == (TOTAL - len(EVERY_THIRD), len(EVERY_THIRD))
    assert status["attempts"] == TOTAL  # nothing ran twice across the restart
    assert not any(c["type"] == "Recovered" for c in status.get("conditions") or [])

    # Small, readable, and naming its parts; the parts owned by the job.
    assert len(json.dumps(status)) < 16 * 1024
    assert status["failedIndexes"].startswith("0,3,6,9,")
    assert status["failedIndexes"].endswith("more ranges)")
    reference = status["indexSets"]
    parts = _parts(cluster, "scatter")
    assert {c["name"] for c in reference["configMaps"]} <= set(parts)
    assert len(parts) <= indexsets.MAX_CONFIG_MAPS
    uid = obj["metadata"]["uid"]
    for part in parts.values():
        assert part["metadata"]["ownerReferences"][0]["uid"] == uid
        assert part["metadata"]["name"].startswith(f"scatter-indexes-{uid[:8]}-")

    # The operator reads a status afresh (after a failed patch) as its ServiceAccount may.
    fresh = asyncio.run(operator_api(cluster).get_status(cluster.namespace, "scatter"))
    assert fresh == status

    # The shared loader gets the exact sets.
    exact = _exact(cluster, status)
    assert IndexSet.from_compact(exact["failedIndexes"]) == EVERY_THIRD
    assert IndexSet.from_compact(exact["succeededIndexes"]) == (
        IndexSet.from_range(0, TOTAL) - EVERY_THIRD
    )

    # `microtask rerun --failed` runs exactly the failures (kept in ConfigMaps in its turn).
    user = cli(cluster, tmp_path)
    with running_operator(cluster, env=ENV) as op:
        made = user.expect(0, "rerun", "scatter", "--failed", timeout=60)
        assert "scatter-rerun-1 created" in made.stdout
        rerun = wait_phase(cluster, "scatter-rerun-1", timeout=120)["status"]
        op.assert_clean()
    assert rerun["total"] == len(EVERY_THIRD)
    source = _exact(cluster, rerun)["source"]
    assert IndexSet.from_compact(source["indexes"]) == EVERY_THIRD
