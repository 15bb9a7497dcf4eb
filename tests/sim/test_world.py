"""The simulated world: placement as the scheduler does it, and shard executions as sampled."""

from __future__ import annotations

import pytest
from microtask_operator.core.types import Pool, ShardPhase
from microtask_operator.simulator.world import (
    EXIT_OOM_KILLED,
    EXIT_SOME_FAILED,
    Nodes,
    WorkModel,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from .scenarios import cluster, cpu_nodes, gpu_nodes


def test_placement_spreads_over_the_least_loaded_nodes_of_the_pool() -> None:
    nodes = Nodes(cluster([cpu_nodes(3, slots=2), gpu_nodes(1)]))

    placed = [nodes.place(Pool.CPU) for _ in range(6)]

    assert [n.name for n in placed if n] == ["cpu-0", "cpu-1", "cpu-2"] * 2
    assert nodes.place(Pool.CPU) is None  # full: the pod would be Unschedulable
    assert nodes.place(Pool.GPU) is not None


def test_placement_honours_hard_and_prefers_to_avoid_soft() -> None:
    nodes = Nodes(cluster([cpu_nodes(3, slots=2)]))

    first = nodes.place(Pool.CPU, avoid_hard=("cpu-0",), avoid_soft=("cpu-1",))
    second = nodes.place(Pool.CPU, avoid_hard=("cpu-0",), avoid_soft=("cpu-1",))
    third = nodes.place(Pool.CPU, avoid_hard=("cpu-0",), avoid_soft=("cpu-1",))
    fourth = nodes.place(Pool.CPU, avoid_hard=("cpu-0",), avoid_soft=("cpu-1",))
    fifth = nodes.place(Pool.CPU, avoid_hard=("cpu-0",), avoid_soft=("cpu-1",))

    assert [n.name if n else None for n in (first, second, third, fourth, fifth)] == [
        "cpu-2",
        "cpu-2",
        "cpu-1",  # soft is only a preference: used once the others are full
        "cpu-1",
        None,  # hard is a requirement: cpu-0 has room but is never used
    ]


def test_a_lost_node_takes_no_pods_and_frees_nothing() -> None:
    nodes = Nodes(cluster([cpu_nodes(2, slots=1)]))
    taken = nodes.place(Pool.CPU)
    assert taken is not None

    nodes.lose(taken)
    nodes.release(taken)

    assert nodes.free[Pool.CPU] == 1
    assert nodes.ready_names()[Pool.CPU] == frozenset({"cpu-1"})


def test_the_workload_is_the_same_for_the_same_seed() -> None:
    workload = cluster([cpu_nodes(1)], workload={"permanentFailureRate": 0.01}).workload

    a, b, c = (
        WorkModel(1000, workload, 1),
        WorkModel(1000, workload, 1),
        WorkModel(1000, workload, 2),
    )

    assert a.sizes == b.sizes and a.permanent == b.permanent
    assert a.sizes != c.sizes
    assert len(a.permanent) == 10
    assert min(a.sizes) >= 0.8 and max(a.sizes) <= 1.2


def test_an_execution_reports_every_microtask_through_the_wire_format() -> None:
    world = cluster([cpu_nodes(1)], workload={"failureRate": 0.2, "exitCodes": {1: 1, 75: 1}})
    model = WorkModel(1000, world.workload, 3)
    node = Nodes(world).all[0]
    indexes = IndexSet.from_range(100, 300)

    run = model.execute(indexes, node)
    report = Report.decode(run.report.encode())

    assert report.reported() == indexes
    assert 20 < len(report.failed_indexes()) < 60  # 20% of 200, give or take
    assert set(report.failed) == {1, 75}
    assert run.exit_code == EXIT_SOME_FAILED and run.phase is ShardPhase.SUCCEEDED
    assert run.duration == pytest.approx(model.size_of(indexes) * 2.0)


def test_a_crash_leaves_a_partial_report_naming_the_current_microtask() -> None:
    world = cluster([cpu_nodes(1)], workload={"crashRate": 0.05})
    model = WorkModel(1000, world.workload, 4)
    node = Nodes(world).all[0]

    run = model.execute(IndexSet.from_range(0, 1000), node)

    assert run.phase is ShardPhase.FAILED and run.exit_code == EXIT_OOM_KILLED
    assert run.report.current is not None
    assert run.report.reported() == IndexSet.from_range(0, run.report.current)


def test_a_bad_node_fails_everything_fast() -> None:
    world = cluster([cpu_nodes(1, bad=True, badExitCode=3, badSecondsPerMicrotask=0.1)])
    model = WorkModel(100, world.workload, 1)

    run = model.execute(IndexSet.from_range(0, 100), Nodes(world).all[0])

    assert run.report.failed == {3: IndexSet.from_range(0, 100)}
    assert run.duration == pytest.approx(10.0)


def test_a_straggler_runs_slowdown_times_longer() -> None:
    world = cluster([cpu_nodes(1)], workload={"stragglerRate": 1.0, "stragglerSlowdown": 10})
    model = WorkModel(100, world.workload, 1)
    indexes = IndexSet.from_range(0, 100)

    run = model.execute(indexes, Nodes(world).all[0])

    assert run.straggler
    assert run.duration == pytest.approx(model.size_of(indexes) * 2.0 * 10)


def test_a_pod_retries_its_failed_microtasks_after_the_wait() -> None:
    world = cluster([cpu_nodes(1)], workload={"failureRate": 0.05, "exitCodes": {1: 1, 75: 1}})
    node = Nodes(world).all[0]
    indexes = IndexSet.from_range(100, 300)
    plain = WorkModel(1000, world.workload, 3).execute(indexes, node)
    model = WorkModel(1000, world.workload, 3)

    run = model.execute(indexes, node, retry_after=30.0, no_retry=frozenset({75}))
    report = Report.decode(run.report.encode())

    # The same first pass; then the failures of a code the pod retries ran once more.
    first = plain.report
    assert set(first.failed) == {1, 75}
    assert report.retried == {1: first.failed[1]}
    assert first.failed[75] <= report.failed[75]
    assert report.reported() == indexes and report.count == first.count
    assert len(report.failed_indexes()) < len(first.failed_indexes())
    # Each retry waits its time after its failure, at the end of the pass.
    last = first.failed[1].last()
    assert last is not None
    failed_at = model.size_of(indexes & IndexSet.from_range(0, last + 1)) * 2.0
    assert run.duration >= max(plain.duration, failed_at + 30.0) + model.sizes[last] * 2.0 - 1e-9

    # Not when most of the shard failed, nor on a bad node (the operator judges the node).
    bad = cluster([cpu_nodes(1, bad=True)])
    on_bad = WorkModel(100, bad.workload, 1).execute(
        IndexSet.from_range(0, 10), Nodes(bad).all[0], retry_after=0.0
    )
    assert on_bad.report.retried == {}
