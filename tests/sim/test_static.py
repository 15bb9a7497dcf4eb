"""The baseline: a plain Indexed Job, with per-pod retries and no rebalancing."""

from __future__ import annotations

from microtask_operator.core.types import Accelerator
from microtask_operator.simulator import simulate, simulate_static

from .scenarios import cluster, cpu_nodes, gpu_nodes, job


def test_a_healthy_cluster_runs_each_microtask_once() -> None:
    result = simulate_static(job(2000, 20, 16), cluster([cpu_nodes(4)]), seed=1)

    assert result.phase == "Succeeded" and result.finished
    assert len(result.succeeded) == 2000 and result.attempts == 2000
    assert result.shards == 100


def test_a_failed_microtask_reruns_its_whole_chunk() -> None:
    flaky = cluster([cpu_nodes(4)], workload={"failureRate": 0.01})

    result = simulate_static(job(2000, 20, 16, max_attempts=5), flaky, seed=1)
    microtask = simulate(job(2000, 20, 16, max_attempts=5), flaky, seed=1)

    assert result.phase == "Succeeded"
    reruns = result.attempts - result.total
    assert reruns > 0 and reruns % 20 == 0  # whole chunks of 20
    assert result.wasted_seconds > 0  # the chunk's successes were redone
    # Item-level retries run only the failed microtasks again.
    assert microtask.attempts - microtask.total < reruns / 5


def test_a_lost_node_costs_a_run_and_may_fail_the_index() -> None:
    lossy = cluster([cpu_nodes(4)], losses=[{"node": "cpu-1", "at": 30, "deletedAfter": 10}])
    spec = job(2000, 20, 16, max_attempts=1)

    static = simulate_static(spec, lossy, seed=1)
    microtask = simulate(spec, lossy, seed=1)

    # One run per index allowed: the lost pods' chunks fail for good...
    assert static.phase == "Failed" and len(static.failed) > 0
    # ...while Microtask relaunches lost work without spending the only attempt.
    assert microtask.phase == "Succeeded" and len(microtask.failed) == 0


def test_an_auto_job_is_a_gpu_job_that_waits_for_gpus() -> None:
    mixed = cluster([gpu_nodes(1), cpu_nodes(4)])

    result = simulate_static(job(500, 10, 16, Accelerator.AUTO), mixed, seed=1)

    assert result.completed_by_pool == {"gpu": 500}
    assert result.busy_seconds["cpu"] == 0
