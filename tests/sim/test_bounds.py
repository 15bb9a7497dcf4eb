"""The lower bound: total work over capacity on a common unit after one start-up, or the longest
microtask after one start-up; bad nodes add no capacity."""

from __future__ import annotations

import random

import pytest
from microtask_operator.core.types import Accelerator
from microtask_operator.simulator import simulate
from microtask_operator.simulator.bounds import lower_bound
from microtask_operator.simulator.world import WorkModel

from .scenarios import cluster, cpu_nodes, gpu_nodes, job


def test_one_pool_is_total_work_over_slots() -> None:
    # 4 slots, 2 s per microtask of size 1: 1000 microtasks take 500 s at best.
    spec = job(1000, 10, 100)

    assert lower_bound(spec, cluster([cpu_nodes(1, slots=4)]), 1000.0, 1.0) == pytest.approx(500)


def test_two_pools_add_their_rates_in_size_units_per_second() -> None:
    # GPU slot: 1 / 0.5 = 2 sizes/s; CPU slot: 1 / 2 = 0.5 sizes/s. Two of each: 5 sizes/s.
    mixed = cluster([gpu_nodes(2), cpu_nodes(1, slots=2)])

    auto = lower_bound(job(1000, 10, 100, Accelerator.AUTO), mixed, 1000.0, 1.0)
    gpu_only = lower_bound(job(1000, 10, 100, Accelerator.GPU), mixed, 1000.0, 1.0)
    cpu_only = lower_bound(job(1000, 10, 100, Accelerator.CPU), mixed, 1000.0, 1.0)

    assert auto == pytest.approx(1000 / 5)
    assert gpu_only == pytest.approx(1000 / 4)
    assert cpu_only == pytest.approx(1000 / 1)


def test_parallelism_keeps_only_the_fastest_slots() -> None:
    mixed = cluster([gpu_nodes(2), cpu_nodes(1, slots=2)])

    # Two shards in flight at most: the two GPU slots, 4 sizes/s.
    assert lower_bound(job(1000, 10, 2, Accelerator.AUTO), mixed, 1000.0, 1.0) == pytest.approx(250)


def test_node_speed_scales_its_rate() -> None:
    fast = cluster([cpu_nodes(1, slots=1, speed=4.0)])

    assert lower_bound(job(100, 10, 10), fast, 100.0, 1.0) == pytest.approx(50)


def test_a_lost_node_takes_its_capacity_from_then_on() -> None:
    # 2 slots of 0.5 sizes/s until t=100 (100 sizes done), then 1 slot for the other 100: 300 s.
    lossy = cluster([cpu_nodes(2, slots=1)], losses=[{"node": "cpu-1", "at": 100}])

    assert lower_bound(job(200, 10, 10), lossy, 200.0, 1.0) == pytest.approx(300)


def test_the_longest_microtask_bounds_tiny_jobs() -> None:
    big = cluster([cpu_nodes(10, slots=10)])

    # 3 microtasks on 100 slots: the largest (size 1.2, 2 s per size) takes 2.4 s.
    assert lower_bound(job(3, 1, 100), big, 3.0, 1.2) == pytest.approx(2.4)


def test_no_usable_node_means_no_finite_bound() -> None:
    cpu_only = cluster([cpu_nodes(1)])

    assert lower_bound(job(10, 1, 1, Accelerator.GPU), cpu_only, 10.0, 1.0) == 0.0
    lost = cluster([cpu_nodes(1)], losses=[{"node": "cpu", "at": 1}])
    assert lower_bound(job(10, 1, 1), lost, 10.0, 1.0) == float("inf")


def test_no_slot_clears_work_before_one_pod_start_up() -> None:
    # 4 slots, 2 s per size: 500 s of work, after a 10 s start-up.
    slow_start = cluster([cpu_nodes(1, slots=4)], workload={"podStartupSeconds": 10})

    assert lower_bound(job(1000, 10, 100), slow_start, 1000.0, 1.0) == pytest.approx(510)


def test_a_node_lost_during_the_first_start_up_adds_nothing() -> None:
    # cpu-1 goes at t=5, before any pod could have cleared work: cpu-0 alone, 1 slot, 2 s/size.
    lossy = cluster(
        [cpu_nodes(2, slots=1)],
        workload={"podStartupSeconds": 10},
        losses=[{"node": "cpu-1", "at": 5}],
    )

    assert lower_bound(job(100, 10, 10), lossy, 100.0, 1.0) == pytest.approx(210)


def test_a_node_that_fails_everything_adds_no_capacity() -> None:
    with_bad = cluster(
        [cpu_nodes(1, slots=4), {"name": "bad", "pool": "cpu", "slots": 4, "bad": True}]
    )

    assert lower_bound(job(1000, 10, 100), with_bad, 1000.0, 1.0) == pytest.approx(500)
    only_bad = cluster([{"name": "bad", "pool": "cpu", "slots": 4, "bad": True}])
    assert lower_bound(job(10, 1, 1), only_bad, 10.0, 1.0) == 0.0


def test_the_longest_microtask_waits_for_its_start_up_too() -> None:
    big = cluster([cpu_nodes(10, slots=10)], workload={"podStartupSeconds": 3})

    assert lower_bound(job(3, 1, 100), big, 3.0, 1.2) == pytest.approx(3 + 2.4)


@pytest.mark.parametrize("seed", range(6))
def test_no_simulated_schedule_beats_the_bound(seed: int) -> None:
    # Random small clusters with start-up, bad nodes, losses and stragglers: every run the
    # simulator finishes takes at least the bound (it is a bound for any schedule, the core's too).
    rng = random.Random(seed)
    nodes = [
        cpu_nodes(rng.randint(1, 3), slots=rng.randint(1, 3), speed=rng.choice([0.5, 1.0])),
        gpu_nodes(rng.randint(1, 2), gpus=rng.randint(1, 2)),
        {"name": "bad", "pool": "cpu", "slots": 2, "bad": True, "badSecondsPerMicrotask": 0.1},
    ]
    workload = {
        "podStartupSeconds": rng.choice([0, 5, 20]),
        "stragglerRate": 0.1,
        "failureRate": 0.01,
        "jitter": 0.3,
    }
    losses = [{"node": "gpu-0", "at": rng.uniform(0, 200)}] if rng.random() < 0.5 else None
    world = cluster(nodes, workload=workload, losses=losses)
    spec = job(rng.randint(50, 400), rng.randint(1, 20), 20, Accelerator.AUTO, speculation=True)

    result = simulate(spec, world, seed=seed)
    work = WorkModel(spec.total, world.workload, seed)

    assert result.phase == "Succeeded"
    bound = lower_bound(spec, world, work.total_size(), work.max_size())
    assert result.lower_bound == pytest.approx(bound)
    assert result.makespan >= bound
