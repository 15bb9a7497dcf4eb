"""Node and pod trouble with no retry budget to spare: blips shorter and longer than
nodeLostGraceSeconds, a node deleted, a runner OOM-killed, a runner SIGKILLed.

Each run holds the same microtask of every shard (``ExecutionLog.hold``), so when the trouble
strikes every pod in flight is known to be inside a known microtask and none is between two: the
work each disruption takes away is exact. Then the hold is released and the job must succeed with
no microtask failed and no attempt charged for work that never ran.

Attempts are counted as the status documents them: a microtask whose run the operator learns of
(from a report) is an attempt; the work of a pod lost without a report (its node went away) is
unknown to the operator and goes back uncounted, so `attempts` equals the executions minus those.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.support import (
    Deadline,
    ExecutionLog,
    OperatorRuns,
    chaos_job,
    shard_pods,
    status_of,
    stream,
    wait_finished,
)
from tests.integration.harness.cluster import Cluster
from tests.integration.harness.kubelet import cpu_node

TOTAL = 60
PER_SHARD = 10
PARALLELISM = 3
HELD = 3  # the 4th microtask of every shard waits for the release
BUDGET_SECONDS = 120
# One attempt only: a loss that charged an attempt would fail a microtask for good.
ONE_ATTEMPT = {"maxAttempts": 1, "backoffSeconds": 0.2, "maxBackoffSeconds": 1}

pytestmark = pytest.mark.usefixtures("healthy_nodes")


@dataclass
class Disrupted:
    """What a disruption took away: shards whose pods died without a report, and how many
    microtasks were killed while they ran (their runs are reported, hence attempts)."""

    lost_shards: set[int]
    killed_running: int = 0


def _shard(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"]["microtask.dev/shard"])


def run_through(
    cluster: Cluster,
    seed: int,
    tmp_path: Path,
    name: str,
    disrupt: Callable[[dict[str, Any], list[dict[str, Any]]], Disrupted],
    *,
    moved: bool,
    **spec: Any,
) -> None:
    """Run a job, disrupt one of its pods while every pod in flight is held, check the counts.

    ``disrupt(target, pods)`` gets the pod picked by the seed and every running pod of the job.
    ``moved``: the disruption is the node's doing, so the work moves (rebalance ``node_lost``);
    otherwise the pod failed and nothing is rebalanced.
    """
    log = ExecutionLog(tmp_path / name, sleep=0.05)
    log.hold([shard * PER_SHARD + HELD for shard in range(TOTAL // PER_SHARD)])
    deadline = Deadline(BUDGET_SECONDS)
    disrupted = Disrupted(set())

    def facts() -> str:
        return f"status {status_of(cluster, name)}\n{disrupted}\n{cluster.dump()}"

    with OperatorRuns(cluster) as runs, runs.explain(seed, facts):
        runs.start()
        cluster.create(
            chaos_job(name, log, total=TOTAL, per_shard=PER_SHARD, parallelism=PARALLELISM, **spec)
        )

        def all_held() -> list[dict[str, Any]] | None:
            held = {e.shard for e in log.executions() if e.index % PER_SHARD == HELD}
            pods = [
                p
                for p in shard_pods(cluster, name)
                if (p.get("status") or {}).get("phase") == "Running"
            ]
            return pods if len(held) == PARALLELISM and len(pods) == PARALLELISM else None

        pods = sorted(deadline.wait_for(all_held, "every pod in flight held"), key=_shard)
        target = stream(seed, f"nodes/{name}").choice(pods)
        node = target["spec"]["nodeName"]
        print(f"seed {seed}: {name}: disrupting shard {_shard(target)} on {node}")
        held_index = next(
            e.index
            for e in log.executions()
            if e.shard == _shard(target) and e.index % PER_SHARD == HELD
        )
        disrupted = disrupt(target, pods)
        log.release()
        status = wait_finished(cluster, name, deadline)

        executions = log.executions()
        unknown = log.of_shards(disrupted.lost_shards)
        per_index = log.per_index()
        print(
            f"seed {seed}: {name}: {len(executions)} executions, {len(unknown)} of them lost "
            f"without a report; status attempts {status.get('attempts')}, failed "
            f"{status.get('failed')}, rebalances {status.get('rebalances')}"
        )
        assert status["phase"] == "Succeeded", status
        assert (status["succeeded"], status.get("failed", 0)) == (TOTAL, 0), status
        assert status["succeededIndexes"] == f"0-{TOTAL - 1}"
        assert set(per_index) == set(range(TOTAL))
        again = {i for i, n in per_index.items() if n > 1}
        redone = {e.index for e in unknown} | ({held_index} if disrupted.killed_running else set())
        assert again <= redone, f"run again without a reason: {sorted(again - redone)}"
        assert status["attempts"] == len(executions) - len(unknown), (
            f"attempts {status['attempts']}, executions {len(executions)}, "
            f"{len(unknown)} of them on pods lost without a report"
        )
        assert status.get("succeededAfterRetry", 0) == disrupted.killed_running, status
        rebalances = status.get("rebalances") or {}
        if moved:
            assert {k for k, n in rebalances.items() if n} == {"node_lost"}, rebalances
        else:
            assert not rebalances.get("node_lost") and not rebalances.get("job_deleted"), rebalances


def lost_on(node: str, pods: list[dict[str, Any]]) -> set[int]:
    return {_shard(p) for p in pods if p["spec"]["nodeName"] == node}


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_blip_shorter_than_the_grace_charges_nothing(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    def blip(target: dict[str, Any], pods: list[dict[str, Any]]) -> Disrupted:
        node = target["spec"]["nodeName"]
        seconds = stream(seed, "nodes/short-blip").uniform(3.0, 5.0)
        cluster.set_node_ready(node, False)
        time.sleep(seconds)
        cluster.set_node_ready(node, True)
        return Disrupted(lost_on(node, pods))

    run_through(
        cluster,
        seed,
        tmp_path,
        "short-blip",
        blip,
        moved=True,
        retry=ONE_ATTEMPT,
        rebalance={"nodeLostGraceSeconds": 20},
    )


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_blip_longer_than_the_grace_moves_the_work_and_charges_nothing(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    name = "long-blip"

    def blip(target: dict[str, Any], pods: list[dict[str, Any]]) -> Disrupted:
        node = target["spec"]["nodeName"]
        cluster.set_node_ready(node, False)
        cluster.wait_for(
            lambda: (status_of(cluster, name).get("rebalances") or {}).get("node_lost"),
            timeout=60,
            message="the operator to give up the lost node's shards",
        )
        cluster.set_node_ready(node, True)
        return Disrupted(lost_on(node, pods))

    run_through(
        cluster,
        seed,
        tmp_path,
        name,
        blip,
        moved=True,
        retry=ONE_ATTEMPT,
        rebalance={"nodeLostGraceSeconds": 2},
    )


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_deleted_node_moves_the_work_and_charges_nothing(
    cluster: Cluster, chaos_cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    def delete(target: dict[str, Any], pods: list[dict[str, Any]]) -> Disrupted:
        node = target["spec"]["nodeName"]
        cluster.delete_node(node)
        # A new node takes its place, so the cluster keeps three for the tests after this one.
        spare = f"cpu-{len(chaos_cluster.kubelet.nodes)}"
        cluster.add_node(cpu_node(spare))
        return Disrupted(lost_on(node, pods))

    run_through(
        cluster,
        seed,
        tmp_path,
        "deleted-node",
        delete,
        moved=True,
        retry=ONE_ATTEMPT,
        rebalance={"nodeLostGraceSeconds": 2},
    )


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_an_oom_killed_runner_charges_only_the_microtask_it_ran(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    def oom(target: dict[str, Any], pods: list[dict[str, Any]]) -> Disrupted:
        del pods
        cluster.oom_kill(target["metadata"]["name"])
        return Disrupted(set(), killed_running=1)

    # The microtask that ran out of memory spends an attempt, so it needs a second one.
    run_through(
        cluster,
        seed,
        tmp_path,
        "oom",
        oom,
        moved=False,
        retry={"maxAttempts": 2, "backoffSeconds": 0.2, "maxBackoffSeconds": 1},
    )


@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_a_sigkilled_runner_charges_only_the_microtask_it_ran(
    cluster: Cluster, seed: int, tmp_path: Path
) -> None:
    def sigkill(target: dict[str, Any], pods: list[dict[str, Any]]) -> Disrupted:
        del pods
        pid = cluster.pod_pid(target["metadata"]["name"])
        assert pid is not None, "the held pod has no process"
        os.kill(pid, signal.SIGKILL)
        return Disrupted(set(), killed_running=1)

    run_through(
        cluster,
        seed,
        tmp_path,
        "sigkill",
        sigkill,
        moved=False,
        retry={"maxAttempts": 2, "backoffSeconds": 0.2, "maxBackoffSeconds": 1},
    )
