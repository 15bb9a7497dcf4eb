"""The end of a job on a mixed cluster: no work parked behind a busy pool, stragglers that give
way to their copies, and start-up counted before a pod is judged late."""

from __future__ import annotations

from dataclasses import replace

from core_driver import Driver, creates, ok
from microtask_operator.core import speculation
from microtask_operator.core.planner import startup_seconds
from microtask_operator.core.state import PoolDurations
from microtask_operator.core.types import (
    Accelerator,
    ClusterView,
    CoreSpec,
    ObservedShard,
    Pool,
    Progress,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet

# 1 s per microtask on the CPU pool, from plenty of shards.
CPU_BASELINE = {Pool.CPU: PoolDurations(shards=10, microtasks=100, seconds=100.0)}


def running(
    shard_id: int, started: float, progress: Progress | None = None, **changes: object
) -> ObservedShard:
    shard = ObservedShard(
        shard_id=shard_id,
        indexes=IndexSet.from_range(0, 20),
        attempt=1,
        pool=Pool.CPU,
        created_at=started,
        phase=ShardPhase.RUNNING,
        node=f"cpu-{shard_id}",
        started_at=started,
        progress=progress,
    )
    return replace(shard, **changes)  # type: ignore[arg-type]


# -- placement: fresh work waits unplaced for the pool it belongs to -------------------------


def test_fresh_work_is_not_queued_behind_a_busy_pool() -> None:
    spec = CoreSpec(
        total=120,
        microtasks_per_shard=10,
        parallelism=6,
        accelerator=Accelerator.AUTO,
        fallback_after_seconds=60,
    )
    cluster = ClusterView(
        ready_nodes={Pool.GPU: frozenset({"gpu-0"}), Pool.CPU: frozenset({"cpu-0"})},
        slots={"gpu-0": 2, "cpu-0": 4},
    )
    d = Driver(spec, cluster=cluster)
    first = creates(d.step().actions)
    assert [c.plan.pool for c in first] == [Pool.GPU] * 2 + [Pool.CPU] * 4
    for c in first:
        # GPUs take 0.1 s a microtask, CPU slots 5 s: fifty times as long.
        d.finish(c.plan.shard_id, ok, 0.1 if c.plan.pool is Pool.GPU else 5.0)
    # 60 microtasks left: on the GPUs, even one after another, they end long before a single
    # CPU shard would. The two free GPUs take a shard each; the rest is not parked in the GPU
    # queue (sized for what was left then) but waits for the next GPU to free up.
    then = creates(d.step(1).actions)
    assert [c.plan.pool for c in then] == [Pool.GPU, Pool.GPU]


# -- start-up: seen from a pod's first microtask, counted before a pod is judged -------------


def test_a_pod_on_its_first_microtask_shows_its_start_up() -> None:
    # Placed at 0, its first microtask began 5 s ago at t=40: 35 s of start-up.
    assert startup_seconds([running(1, 0.0, Progress(done=0, seconds=5.0))], 40.0) == 35.0
    # Still starting: nothing to tell.
    assert startup_seconds([running(1, 0.0, Progress(done=0, seconds=0.0))], 40.0) is None


def test_a_pod_still_in_its_start_up_is_not_late() -> None:
    policy = SpeculationPolicy(enabled=True, slowdown_factor=1.5)

    def judged(startup: float | None, progress: Progress | None) -> tuple[list[int], list[float]]:
        found, wakeups = speculation.stragglers(
            [running(1, 0.0, progress)], CPU_BASELINE, policy, 35.0, startup=startup
        )
        return [s.shard_id for s in found], wakeups

    # 20 microtasks of 1 s at 1.5x: late after 30 s of work, 40 s with a 10 s start-up.
    assert judged(0.0, None) == ([1], [])
    assert judged(10.0, None) == ([], [40.0])
    # Start-up unknown (no pod has shown it) and the pod shows it has not begun: not judged.
    assert judged(None, Progress(done=0, seconds=0.0)) == ([], [])
    # Begun, its pace is what it is judged by, start-up or not.
    assert judged(None, Progress(done=1, seconds=30.0)) == ([1], [])


def test_outrun_counts_a_copys_start_up_in_its_expected_run() -> None:
    durations = {Pool.GPU: PoolDurations(shards=10, microtasks=100, seconds=100.0)}
    copy = replace(running(2, 100.0), pool=Pool.GPU, copy_of=1, indexes=IndexSet.from_range(0, 5))
    # 8 s into a copy of 5 microtasks: with a 10 s start-up it has 7 s to go, not "8 s late".
    assert speculation.outrun([copy], durations, 108.0, lambda s: 5.0, copies_per_shard=2) == [copy]
    assert (
        speculation.outrun([copy], durations, 108.0, lambda s: 5.0, copies_per_shard=2, startup=10)
        == []
    )


# -- a straggler gives way to its copy -------------------------------------------------------


def test_a_straggler_gives_way_to_a_copy_that_runs_at_the_usual_pace() -> None:
    # One microtask in 50 s: 19 more at that pace. Its copy did 5 in 5 s: 15 s to go.
    straggler = running(1, 0.0, Progress(done=1, seconds=50.0))
    copy = running(2, 60.0, Progress(done=5, seconds=5.0), copy_of=1)
    assert speculation.outpaced([straggler, copy], IndexSet.EMPTY) == [straggler]
    # A copy still starting shows nothing yet: both run on.
    starting = replace(copy, progress=Progress(done=0, seconds=0.0))
    assert speculation.outpaced([straggler, starting], IndexSet.EMPTY) == []
    # A copy slow too (30 s a microtask): not ending it twice as soon, both run on.
    slow = replace(copy, progress=Progress(done=1, seconds=30.0))
    assert speculation.outpaced([straggler, slow], IndexSet.EMPTY) == []


def test_a_straggler_gives_way_only_to_a_copy_holding_all_its_unfinished_work() -> None:
    straggler = running(1, 0.0, Progress(done=1, seconds=50.0))
    partial = running(
        2, 60.0, Progress(done=5, seconds=5.0), copy_of=1, indexes=IndexSet.from_range(5, 20)
    )
    assert speculation.outpaced([straggler, partial], IndexSet.EMPTY) == []
    # ...what the copy lacks being done already (kept from an earlier member, say).
    assert speculation.outpaced([straggler, partial], IndexSet.from_range(0, 5)) == [straggler]


def test_a_member_on_a_lost_node_is_left_to_the_lost_node_recovery() -> None:
    lost = running(1, 0.0, Progress(done=1, seconds=50.0), node_lost_since=55.0)
    copy = running(2, 60.0, Progress(done=5, seconds=5.0), copy_of=1)
    assert speculation.outpaced([lost, copy], IndexSet.EMPTY) == []
