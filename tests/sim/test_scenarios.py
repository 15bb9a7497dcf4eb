"""Rebalancing scenarios at thousands of microtasks: the real core driven by the simulator.

Every run is deterministic by seed (simulated clock, seeded random streams), so the thresholds
below are exact facts about one run, not statistics; they leave margin so that reasonable tuning
of the core does not break them, while a lost policy does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from microtask_operator.core.types import Accelerator
from microtask_operator.simulator import Policies, SimulationResult, simulate, simulate_static
from microtask_runner.indexset import IndexSet

from .scenarios import cluster, cpu_nodes, gpu_nodes, job


def assert_each_microtask_ends_once(result: SimulationResult) -> None:
    """Succeeded and failed are disjoint, cover the job, and the core counted each once."""
    assert result.finished, result.message
    assert result.anomalies == []
    assert not (result.succeeded & result.failed)
    assert result.succeeded | result.failed == IndexSet.from_range(0, result.total)
    assert len(result.succeeded) + len(result.failed) == result.total
    # The per-decision deltas (what metrics add up) agree with the final sets.
    assert result.counted_succeeded == len(result.succeeded)
    assert result.counted_failed == len(result.failed)


# -- GPU pool full -----------------------------------------------------------------------------

GPU_FULL = cluster([gpu_nodes(1, gpus=1), cpu_nodes(8, slots=8)])
GPU_JOB = job(5000, 20, 64, Accelerator.AUTO)


def test_gpu_pool_full_work_finishes_on_cpu() -> None:
    result = simulate(GPU_JOB, GPU_FULL, seed=3)

    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    # Placement sends what the one GPU cannot take to free CPU slots at once: nothing waits
    # fallbackAfterSeconds on the GPU pool, so nothing needs to fall back.
    assert result.rebalanced.get("unschedulable_fallback", 0) == 0
    assert result.completed_by_pool["cpu"] > 4 * result.completed_by_pool["gpu"]
    assert result.ratio < 1.3
    # Moving work between pools is not the microtasks' fault: no attempt is spent.
    assert result.attempts == result.total


def test_without_fallback_the_job_queues_for_the_gpu() -> None:
    moving = simulate(GPU_JOB, GPU_FULL, seed=3)
    waiting = simulate(GPU_JOB, GPU_FULL, seed=3, policies=Policies(fallback=False))

    assert waiting.phase == "Succeeded"
    assert waiting.completed_by_pool["cpu"] == 0
    assert "unschedulable_fallback" not in waiting.rebalanced
    assert moving.makespan * 4 < waiting.makespan


# -- node loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "deleted_after",
    [60.0, None],
    ids=["deleted", "not-ready-forever"],
)
def test_node_lost_mid_run_loses_no_microtask_and_spends_no_attempt(
    deleted_after: float | None,
) -> None:
    loss: dict[str, object] = {"node": "cpu-2", "at": 100.0}
    if deleted_after is not None:
        loss["deletedAfter"] = deleted_after
    lossy = cluster([cpu_nodes(8, slots=4)], losses=[loss])
    spec = job(5000, 20, 32)

    result = simulate(spec, lossy, seed=5)

    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    assert len(result.failed) == 0
    assert result.rebalanced.get("node_lost", 0) >= 1
    # The lost shards ran again (more runs than microtasks)...
    assert result.executions > result.total
    assert result.wasted_seconds > 0
    # ...but on the attempt they had: no failures, so exactly one attempt per microtask.
    assert result.attempts == result.total


# -- stragglers --------------------------------------------------------------------------------

STRAGGLY = cluster(
    [cpu_nodes(16, slots=4)],
    workload={"stragglerRate": 0.05, "stragglerSlowdown": 10, "podStartupSeconds": 1},
)
STRAGGLER_JOB = job(10000, 20, 64, speculation=True)


def test_stragglers_speculation_beats_the_static_job() -> None:
    result = simulate(STRAGGLER_JOB, STRAGGLY, seed=1)
    static = simulate_static(STRAGGLER_JOB, STRAGGLY, seed=1)

    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    assert result.speculative_copies > 0
    assert result.rebalanced.get("straggler", 0) == result.speculative_copies
    assert result.attempts == result.total  # a copy is not a new attempt
    assert static.ratio > 2.0
    assert result.makespan <= 0.85 * static.makespan


def test_stragglers_makespan_close_to_the_lower_bound() -> None:
    """5% stragglers at 10x: about 1.4-1.6x the bound over seeds 1-6 (static: about 2.5x)."""
    for seed in (1, 3):
        result = simulate(STRAGGLER_JOB, STRAGGLY, seed=seed)
        static = simulate_static(STRAGGLER_JOB, STRAGGLY, seed=seed)
        assert result.ratio <= 1.6
        assert result.makespan <= 0.65 * static.makespan


# -- a node that fails everything --------------------------------------------------------------

BAD_NODE = cluster(
    [
        cpu_nodes(7, slots=4),
        {
            "name": "cpu-7",
            "pool": "cpu",
            "slots": 4,
            "bad": True,
            "badSecondsPerMicrotask": 0.2,
        },
    ]
)
BAD_NODE_JOB = job(5000, 10, 32, max_attempts=3)


def test_a_node_failing_everything_is_excluded_and_the_job_succeeds() -> None:
    result = simulate(BAD_NODE_JOB, BAD_NODE, seed=2)

    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    assert len(result.failed) == 0
    assert {"node": "cpu-7", "level": "hard"} in result.excluded_nodes
    # The status shows it (the job is shorter than the exclusion, so it is still in force).
    shown = {e["node"]: e["level"] for e in result.status["excludedNodes"]}
    assert shown.get("cpu-7") == "hard"
    assert result.rebalanced.get("bad_node", 0) >= 1


def test_without_exclusion_or_as_a_static_job_the_bad_node_fails_the_job() -> None:
    unguarded = simulate(BAD_NODE_JOB, BAD_NODE, seed=2, policies=Policies(exclusion=False))
    static = simulate_static(BAD_NODE_JOB, BAD_NODE, seed=2)

    assert unguarded.phase == "Failed"
    assert unguarded.excluded_nodes == []
    assert "bad_node" not in unguarded.rebalanced
    assert unguarded.anomalies == []
    assert static.phase == "Failed"
    assert len(static.failed) > 0


def test_bad_node_rebalances_match_the_exclusions_in_the_status() -> None:
    """Regression: a node the per-pool cap demoted was re-reported on every plan() call."""
    # Two bad nodes, but the cap (1/8 of the pool) allows only one hard exclusion.
    capped = cluster(
        [
            cpu_nodes(6, slots=4),
            {"name": "bad", "count": 2, "pool": "cpu", "slots": 4, "bad": True},
        ]
    )
    spec = job(2000, 10, 32, max_attempts=10, backoff=1.0, max_failed=2000)
    spec = replace(spec, bad_nodes=replace(spec.bad_nodes, max_excluded_fraction=0.125))

    result = simulate(spec, capped, seed=1)

    assert result.exclusion_changes > 0
    # One rebalance per exclusion level a node takes on, as the state (and status) shows it.
    assert result.rebalanced.get("bad_node", 0) == result.exclusion_changes


def test_transient_failures_do_not_get_healthy_nodes_excluded() -> None:
    flaky_work = cluster([cpu_nodes(8, slots=4)], workload={"failureRate": 0.005})

    result = simulate(job(5000, 20, 32), flaky_work, seed=7)

    assert result.phase == "Succeeded"
    assert result.excluded_nodes == []


# -- everything at once ------------------------------------------------------------------------

TROUBLE = cluster(
    [
        gpu_nodes(2, gpus=2),
        cpu_nodes(8, slots=4),
        {"name": "flaky", "pool": "cpu", "slots": 4, "bad": True},
    ],
    workload={
        "failureRate": 0.01,
        "exitCodes": {1: 5, 2: 1},
        "permanentFailureRate": 0.002,
        "crashRate": 0.002,
        "stragglerRate": 0.05,
        "podStartupSeconds": 1,
    },
    losses=[{"node": "cpu-1", "at": 100, "deletedAfter": 60}, {"node": "gpu-0", "at": 150}],
)
TROUBLE_JOB = job(
    8000,
    20,
    48,
    Accelerator.AUTO,
    speculation=True,
    max_attempts=4,
    max_failed=1000,
    non_retryable=frozenset({2}),
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_microtask_ends_exactly_once_whatever_goes_wrong(seed: int) -> None:
    result = simulate(TROUBLE_JOB, TROUBLE, seed=seed)

    assert result.phase == "Succeeded"  # failures are tolerated (maxFailedMicrotasks)
    assert_each_microtask_ends_once(result)
    assert len(result.failed) > 0  # permanent failures and exit code 2 did happen
    assert result.attempts <= result.total * 4  # never more than maxAttempts each
    for reason in ("node_lost", "straggler"):
        assert result.rebalanced.get(reason, 0) > 0, reason
    # (Nothing waits on the GPU pool long enough to fall back: placement uses free CPU slots
    # at once, and a copy is never kept off the only GPU node left.)
    assert result.completed_by_pool["cpu"] > 0


# -- determinism and policy flags --------------------------------------------------------------


def test_same_seed_same_result_different_seed_different_result() -> None:
    first = simulate(TROUBLE_JOB, TROUBLE, seed=11).to_json()
    again = simulate(TROUBLE_JOB, TROUBLE, seed=11).to_json()
    other = simulate(TROUBLE_JOB, TROUBLE, seed=12).to_json()

    assert first == again
    assert first != other
    assert simulate_static(TROUBLE_JOB, TROUBLE, seed=11).to_json() == (
        simulate_static(TROUBLE_JOB, TROUBLE, seed=11).to_json()
    )


def test_policy_flags_really_turn_policies_off() -> None:
    on = simulate(TROUBLE_JOB, TROUBLE, seed=1)
    no_fallback = simulate(TROUBLE_JOB, TROUBLE, seed=1, policies=Policies(fallback=False))
    no_speculation = simulate(TROUBLE_JOB, TROUBLE, seed=1, policies=Policies(speculation=False))
    no_exclusion = simulate(TROUBLE_JOB, TROUBLE, seed=1, policies=Policies(exclusion=False))

    assert on.completed_by_pool["cpu"] > 0
    assert "unschedulable_fallback" not in no_fallback.rebalanced
    assert no_fallback.completed_by_pool["cpu"] == 0

    assert on.speculative_copies > 0
    assert no_speculation.speculative_copies == 0
    assert "straggler" not in no_speculation.rebalanced

    assert on.excluded_nodes != []
    assert no_exclusion.excluded_nodes == []
    assert "bad_node" not in no_exclusion.rebalanced

    for result in (no_fallback, no_speculation, no_exclusion):
        assert result.policies != on.policies
        assert result.anomalies == []


# -- the mixed example cluster, with adaptive shard sizes ------------------------------------


def test_mixed_cluster_with_adaptive_shards_ends_within_a_third_of_the_bound() -> None:
    """GPU, CPU and slow CPU nodes, a node that fails everything, 5% stragglers at 10x,
    transient failures and a GPU node lost; the job as written (`microtasksPerShard: auto`,
    150 s shards). Seeds 1-3 end at 1.26, 1.24 and 1.21x the bound."""
    from pathlib import Path

    from microtask_operator.simulator import load_cluster
    from microtask_operator.simulator.jobfile import load_job

    examples = Path(__file__).resolve().parents[2] / "examples" / "clusters"
    spec = load_job(examples / "jobs" / "mixed.yaml").spec
    assert spec.target_shard_seconds == 150.0
    world = load_cluster(examples / "mixed.yaml")

    result = simulate(spec, world, seed=3)

    assert result.phase == "Succeeded" and not result.anomalies
    assert_each_microtask_ends_once(result)
    assert result.ratio <= 1.3
    # The node that fails everything is excluded; no healthy CPU node is.
    excluded = {e["node"] for e in result.excluded_nodes}
    assert "cpu-bad" in excluded
    assert not {n for n in excluded if n.startswith("cpu-") and n != "cpu-bad"}


def test_mixed_cluster_with_the_default_shard_sizes_ends_within_the_bound_target(
    tmp_path: Path,
) -> None:
    """The same job with `microtasksPerShard` and `targetShardSeconds` left out (the defaults:
    auto, 60 s): start-up measured, shards sized to it, slow nodes not taken for stragglers.
    The worst of seeds 1-2 stays within 1.3x the bound."""
    from microtask_operator.simulator import load_cluster
    from microtask_operator.simulator.jobfile import load_job

    examples = Path(__file__).resolve().parents[2] / "examples" / "clusters"
    text = (examples / "jobs" / "mixed.yaml").read_text()
    lines = [
        line
        for line in text.splitlines()
        if not line.strip().startswith(("microtasksPerShard:", "targetShardSeconds:"))
    ]
    written = tmp_path / "mixed-defaults.yaml"
    written.write_text("\n".join(lines) + "\n")
    spec = load_job(written).spec
    assert spec.target_shard_seconds is not None and spec.target_shard_seconds < 150
    world = load_cluster(examples / "mixed.yaml")

    results = [simulate(spec, world, seed=seed) for seed in (1, 2)]

    for result in results:
        assert result.phase == "Succeeded" and not result.anomalies
        assert_each_microtask_ends_once(result)
    assert max(r.ratio for r in results) <= 1.3


# -- a GPU-heavy cluster: GPUs ten times as fast as CPU slots ---------------------------------


def test_gpu_heavy_cluster_ends_within_a_quarter_of_the_bound() -> None:
    """8 GPUs at 0.5 s a microtask beside 16 CPU slots at 5 s and 8 at 10 s, a node that fails
    everything fast, 5% stragglers at 10x, transient failures, a GPU node lost 500 s in; every
    slot in the window, shards sized as they run (60 s). GPU time is most of the capacity, so
    what it loses counts: start-ups of GPU copies, stragglers holding GPUs while their copies
    run, work parked in the GPU queue in ever smaller shards. Seeds 1-3 end at 1.23, 1.23 and
    1.21x the bound (before those were dealt with: 1.35, 1.37 and 1.19)."""
    from microtask_operator.simulator.jobfile import load_job

    examples = Path(__file__).resolve().parents[2] / "examples" / "clusters"
    spec = replace(
        load_job(examples / "jobs" / "mixed.yaml").spec,
        total=15_000,
        parallelism=8 + 16 + 8 + 4,
        target_shard_seconds=60.0,
    )
    world = cluster(
        [
            gpu_nodes(4, gpus=2),
            cpu_nodes(4),
            cpu_nodes(2, name="cpu-slow", speed=0.5),
            cpu_nodes(1, name="cpu-bad", bad=True, badExitCode=1, badSecondsPerMicrotask=0.2),
        ],
        workload={
            "secondsPerMicrotask": {"gpu": 0.5, "cpu": 5.0},
            "jitter": 0.3,
            "failureRate": 0.003,
            "exitCodes": {1: 1},
            "stragglerRate": 0.05,
            "stragglerSlowdown": 10,
            "podStartupSeconds": 10,
        },
        losses=[{"node": "gpu-3", "at": 500, "deletedAfter": 300}],
    )

    results = [simulate(spec, world, seed=seed) for seed in (1, 2, 3)]

    for result in results:
        assert result.phase == "Succeeded"
        assert_each_microtask_ends_once(result)
    assert max(r.ratio for r in results) <= 1.25
