"""At a job's end, the work on a NotReady node is given back before the grace runs out when the
idle slots would finish it before then."""

from __future__ import annotations

from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState, PoolDurations
from microtask_operator.core.types import (
    Accelerator,
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteShard,
    ObservedShard,
    Pool,
    Progress,
    Reason,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet

# Node a went NotReady at t=110 (grace 30 s: until 140); node b's 4 slots are idle.
CLUSTER = ClusterView(ready_nodes={Pool.CPU: frozenset({"b"})}, slots={"a": 4, "b": 4})
# 1 s a microtask, pods take 5 s to start.
MEASURED = {
    Pool.CPU: PoolDurations(
        shards=10, microtasks=100, seconds=100.0, harvested=10, startup_seconds=5.0
    )
}


def decide(total: int, on_lost_node: int) -> tuple[list[int], list[int], float | None, int]:
    """Shard 3 holds microtasks 30.. on node a; all before them succeeded. Decided at t=112:
    the deleted shard ids, the sizes of the shards created, the next wakeup, the node-lost
    rebalances."""
    spec = CoreSpec(
        total=total, microtasks_per_shard=200, parallelism=8, accelerator=Accelerator.CPU
    )
    state = CoreState(
        succeeded=IndexSet.from_range(0, 30),
        next_shard=4,
        durations=MEASURED,
        in_flight={1: IndexSet.from_range(30, 30 + on_lost_node)},
        start_time=0.0,
    )
    stranded = ObservedShard(
        shard_id=3,
        indexes=IndexSet.from_range(30, 30 + on_lost_node),
        attempt=1,
        pool=Pool.CPU,
        created_at=100.0,
        phase=ShardPhase.RUNNING,
        node="a",
        started_at=100.0,
        node_lost_since=110.0,
        progress=Progress(done=4, seconds=5.0),
    )
    decision = plan(spec, state, [stranded], CLUSTER, 112.0)
    deleted = [a.shard_id for a in decision.deletes if isinstance(a, DeleteShard)]
    sizes = [len(a.plan.indexes) for a in decision.creates if isinstance(a, CreateShard)]
    moved = decision.state.rebalances.get(Reason.NODE_LOST.value, 0)
    return deleted, sizes, decision.next_wakeup, moved


def test_the_stranded_work_is_relaunched_when_idle_slots_end_it_within_the_grace() -> None:
    # 10 microtasks on 4 idle slots: 5 s of start-up and 2.5 s of work, over by t=120 < 140.
    deleted, sizes, _, moved = decide(total=40, on_lost_node=10)
    assert (deleted, sizes, moved) == ([3], [10], 1)


def test_the_grace_is_waited_out_when_the_work_would_not_end_within_it() -> None:
    # 200 microtasks on 4 slots: 55 s, past the grace; the node may well come back first.
    deleted, sizes, wakeup, moved = decide(total=230, on_lost_node=200)
    assert (deleted, sizes, wakeup, moved) == ([], [], 140.0, 0)


def test_the_grace_is_waited_out_while_other_work_keeps_the_slots_busy() -> None:
    # Fresh work left (microtasks 40-99): the idle slots take that, the grace runs its course.
    deleted, sizes, _, moved = decide(total=100, on_lost_node=10)
    assert (deleted, moved) == ([], 0)
    assert sizes  # the fresh work
