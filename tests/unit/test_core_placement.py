"""Placement by expected finish time, adaptive shard sizes, and the rules they serve."""

from __future__ import annotations

import math
from dataclasses import replace

from core_driver import Driver, creates, ok
from hypothesis import given
from hypothesis import strategies as st
from microtask_operator.core import placement, shardsize, speculation
from microtask_operator.core.placement import PoolLoad
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


def load(pool: Pool, capacity: int | None, live: int, per: float | None, waiting: int = 0):  # type: ignore[no-untyped-def]
    return PoolLoad(pool=pool, capacity=capacity, live=live, waiting=waiting, per_microtask=per)


# -- placement.choose -------------------------------------------------------------------------


def test_a_free_gpu_wins() -> None:
    gpu = load(Pool.GPU, 8, 7, 1.0)
    cpu = load(Pool.CPU, 100, 10, 5.0)
    assert placement.choose([gpu, cpu], 50, remaining=10_000) == Pool.GPU


def test_full_gpu_and_plenty_of_work_left_goes_to_a_free_cpu_slot() -> None:
    # Queueing for the GPU would end this shard sooner, but the GPUs are busy until the end
    # anyway: the CPU slot would sit idle.
    gpu = load(Pool.GPU, 8, 8, 1.0)
    cpu = load(Pool.CPU, 100, 10, 5.0)
    assert placement.choose([gpu, cpu], 50, remaining=10_000) == Pool.CPU


def test_at_the_end_a_shard_waits_for_a_gpu_rather_than_finish_last_on_a_cpu() -> None:
    gpu = load(Pool.GPU, 8, 8, 1.0)
    cpu = load(Pool.CPU, 100, 10, 5.0)
    # 100 microtasks left: the cluster clears them in ~3.6 s, a CPU shard takes 250 s.
    assert placement.choose([gpu, cpu], 50, remaining=100) == Pool.GPU
    # ...unless shards already running end later than that CPU shard would.
    assert placement.choose([gpu, cpu], 50, remaining=100, busy_until=300) == Pool.CPU


def test_a_free_slow_slot_takes_a_shard_that_ends_by_the_water_level() -> None:
    gpu = load(Pool.GPU, 6, 6, 1.0)
    cpu = load(Pool.CPU, 75, 0, 6.0)
    # One 4-microtask shard at a time, a queue for the GPUs always looks sooner than a CPU
    # slot (40 s against 54 s, with a 30 s pod start-up)...
    gpu, cpu = (replace(p, startup=30.0) for p in (gpu, cpu))
    assert placement.choose([gpu, cpu], 4, remaining=700, busy_until=20) == Pool.GPU
    # ...but the 700 microtasks left, all of them queued there, end far later than the CPU
    # shard: with every slot taking its share they are done in about 74 s.
    slots = [(20.0, 1.0)] * 6 + [(0.0, 6.0)] * 75
    level = placement.water_level(slots, 700, startup=30.0)
    assert 70 < level < 80
    assert placement.choose([gpu, cpu], 4, remaining=700, busy_until=20, level=level) == Pool.CPU


def test_water_level_shares_the_work_over_the_slots_by_pace() -> None:
    # Free slots only: one start-up, then the work at their summed pace.
    assert placement.water_level([(0.0, 2.0)] * 4, 100, startup=5.0) == 5.0 + 100 / 2
    # A slot that frees after the level takes no share...
    assert placement.water_level([(0.0, 1.0), (500.0, 1.0)], 10, startup=0.0) == 10.0
    # ...one that frees before it does, from the moment it is free (after its start-up).
    assert placement.water_level([(0.0, 1.0), (4.0, 1.0)], 10, startup=0.0) == 7.0
    assert placement.water_level([], 10, startup=0.0) == float("inf")


@given(
    slots=st.lists(st.tuples(st.floats(0, 1000), st.floats(0.01, 100)), min_size=1, max_size=40),
    work=st.floats(0, 100_000),
    startup=st.floats(0, 60),
)
def test_water_level_is_where_the_slots_clear_the_work(
    slots: list[tuple[float, float]], work: float, startup: float
) -> None:
    level = placement.water_level(slots, work, startup)
    cleared = sum(max(0.0, level - free - startup) / pace for free, pace in slots)
    assert math.isclose(cleared, work, rel_tol=1e-6, abs_tol=1e-6)
    assert level >= min(free for free, _ in slots) + startup - 1e-9 * (1 + level)
    assert placement.water_level(slots, work + 1, startup) > level


def test_unmeasured_pools_fill_free_capacity_in_order_of_preference() -> None:
    gpu = load(Pool.GPU, 8, 8, None)
    cpu = load(Pool.CPU, 100, 0, None)
    assert placement.choose([gpu, cpu], 50, remaining=10_000) == Pool.CPU
    gpu_free = load(Pool.GPU, 8, 3, None)
    assert placement.choose([gpu_free, cpu], 50, remaining=10_000) == Pool.GPU


def test_unknown_capacity_is_learned_from_pods_waiting() -> None:
    gpu = load(Pool.GPU, None, 5, 1.0)
    assert gpu.free() == 1  # nothing waits: room, as far as anyone knows
    full = load(Pool.GPU, None, 5, 1.0, waiting=1)
    assert full.free() == 0 and full.slots() == 4
    cpu = load(Pool.CPU, None, 3, 5.0)
    assert placement.choose([full, cpu], 10, remaining=10_000) == Pool.CPU


def test_a_pool_without_ready_slots_is_never_chosen() -> None:
    gpu = load(Pool.GPU, 0, 0, 1.0)
    cpu = load(Pool.CPU, 10, 10, 5.0)
    assert placement.choose([gpu, cpu], 10, remaining=10) == Pool.CPU


def test_worth_moving_compares_the_queue_with_the_other_pool() -> None:
    gpu = load(Pool.GPU, 8, 20, 1.0, waiting=12)
    cpu = load(Pool.CPU, 100, 10, 5.0)
    assert not placement.worth_moving(gpu, cpu, 50, position=0)  # next GPU: ~56 s < 250 s
    assert placement.worth_moving(gpu, cpu, 50, position=60)  # ~430 s behind: CPU is sooner
    unknown = load(Pool.GPU, None, 20, 1.0, waiting=12)
    assert placement.worth_moving(unknown, cpu, 50, position=0)  # the safety net stays


# -- shard sizes ------------------------------------------------------------------------------


def test_shard_size_starts_small_then_targets_seconds_then_shrinks() -> None:
    common = {"total": 20_000, "parallelism": 100, "largest": 10_000}
    first = shardsize.shard_size(
        per_microtask=None, target_seconds=60, unplaced=20_000, rate=0, **common
    )
    assert first == 16  # 20,000 over 8 shards per slot is 25: a probe holds 16 at most
    small = shardsize.shard_size(
        per_microtask=None, target_seconds=60, unplaced=2_000, rate=0, **(common | {"total": 2_000})
    )
    assert small == 3  # 2,000 over 8 shards per slot
    bulk = shardsize.shard_size(
        per_microtask=5.0, target_seconds=60, unplaced=15_000, rate=25, **common
    )
    assert bulk == 12
    gpu = shardsize.shard_size(
        per_microtask=1.0, target_seconds=60, unplaced=15_000, rate=25, **common
    )
    assert gpu == 60  # the same time holds five times the work on a 5x faster pool
    tail = shardsize.shard_size(
        per_microtask=1.0, target_seconds=60, unplaced=250, rate=25, **common
    )
    assert tail == 20  # twice the 10 s the cluster needs for what is left
    assert (
        shardsize.shard_size(per_microtask=1.0, target_seconds=60, unplaced=0, rate=25, **common)
        == 1
    )


def test_fixed_size_keeps_todays_shards() -> None:
    d = Driver(CoreSpec(total=100, microtasks_per_shard=7, parallelism=3))
    decision = d.step()
    assert [len(c.plan.indexes) for c in creates(decision.actions)] == [7, 7, 7]


def test_auto_size_starts_small_and_grows_to_the_target() -> None:
    spec = CoreSpec(
        total=10_000, microtasks_per_shard=10_000, parallelism=2, target_shard_seconds=50
    )
    d = Driver(spec)
    first = creates(d.step().actions)
    # 10,000 / (2 x 8) is 625: nothing is measured yet, so a probe of 16 at most.
    assert [len(c.plan.indexes) for c in first] == [16, 16]
    d.finish_all(ok, seconds=0.1)  # 0.1 s per microtask
    later = creates(d.step(1).actions)
    assert [len(c.plan.indexes) for c in later] == [500, 500]  # 50 s of work each


# -- the core with placement ------------------------------------------------------------------


def auto_spec(**changes: object) -> CoreSpec:
    values: dict[str, object] = {
        "total": 400,
        "microtasks_per_shard": 10,
        "parallelism": 6,
        "accelerator": Accelerator.AUTO,
        "fallback_after_seconds": 60,
    }
    values.update(changes)
    return CoreSpec(**values)  # type: ignore[arg-type]


def sized_cluster(gpu_slots: int, cpu_slots: int) -> ClusterView:
    return ClusterView(
        ready_nodes={Pool.GPU: frozenset({"gpu-0"}), Pool.CPU: frozenset({"cpu-0"})},
        slots={"gpu-0": gpu_slots, "cpu-0": cpu_slots},
    )


def test_auto_fills_the_gpus_then_free_cpu_slots_without_waiting() -> None:
    d = Driver(auto_spec(), cluster=sized_cluster(2, 4))
    pools = [c.plan.pool for c in creates(d.step().actions)]
    # Before: all six shards went to the GPU pool, four of them to wait fallbackAfterSeconds.
    assert pools == [Pool.GPU, Pool.GPU, Pool.CPU, Pool.CPU, Pool.CPU, Pool.CPU]


def test_auto_without_known_capacity_still_prefers_the_gpu() -> None:
    d = Driver(auto_spec())
    pools = {c.plan.pool for c in creates(d.step().actions)}
    assert pools == {Pool.GPU}


def test_hard_excluded_nodes_do_not_count_as_capacity() -> None:
    view = ClusterView(
        ready_nodes={Pool.CPU: frozenset({"a", "b"})}, slots={"a": 4, "b": 4, "x": 9}
    )
    assert view.capacity(Pool.CPU) == 8
    assert view.capacity(Pool.CPU, frozenset({"a"})) == 4
    assert (
        ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "c"})}, slots={"a": 1}).capacity(
            Pool.CPU
        )
        is None
    )


def shard(shard_id: int, pool: Pool, started: float, size: int, **changes: object) -> ObservedShard:
    values: dict[str, object] = {
        "shard_id": shard_id,
        "indexes": IndexSet.from_range(shard_id * size, (shard_id + 1) * size),
        "attempt": 1,
        "pool": pool,
        "created_at": started,
        "phase": ShardPhase.RUNNING,
        "node": f"{pool.value}-0",
        "started_at": started,
    }
    values.update(changes)
    return ObservedShard(**values)  # type: ignore[arg-type]


def test_outrun_copies_a_slow_pools_last_shards_to_a_free_fast_slot() -> None:
    durations = {
        Pool.CPU: PoolDurations(shards=10, microtasks=100, seconds=500.0),
        Pool.GPU: PoolDurations(shards=10, microtasks=100, seconds=100.0),
    }
    live = [shard(1, Pool.CPU, 0.0, 10), shard(2, Pool.CPU, 40.0, 10)]
    # At t=45: shard 1 has 5 s left, shard 2 has 45 s; a GPU copy takes 10 s.
    found = speculation.outrun(live, durations, 45.0, lambda s: 10.0)
    assert [s.shard_id for s in found] == [2]
    assert speculation.outrun(live, durations, 45.0, lambda s: None) == []


def test_outrun_judges_a_group_by_its_most_promising_member() -> None:
    durations = {Pool.GPU: PoolDurations(shards=10, microtasks=100, seconds=100.0)}
    straggler = shard(1, Pool.GPU, 0.0, 10)
    copy = shard(2, Pool.GPU, 95.0, 10, copy_of=1, indexes=straggler.indexes)
    # The copy ends in 5 s: no third member, however late the original is.
    assert speculation.outrun([straggler, copy], durations, 100.0, lambda s: 10.0) == []
    # Alone, the original 10x late has as long again to go: a copy is worth it.
    found = speculation.outrun([straggler], durations, 100.0, lambda s: 10.0, copies_per_shard=2)
    assert [s.shard_id for s in found] == [1]


def test_outrun_counts_a_copy_on_its_way_as_the_groups_most_promising_member() -> None:
    durations = {
        Pool.CPU: PoolDurations(shards=10, microtasks=100, seconds=500.0),
        Pool.GPU: PoolDurations(shards=10, microtasks=100, seconds=100.0),
    }
    slow = shard(1, Pool.CPU, 40.0, 10)
    # Its GPU copy is made (for a free GPU) but its pod has not started yet: it will end in
    # about 10 s, and a second copy would only race it (three copies of one shard were made at
    # a job's end, one per decision, while the first waited to start).
    waiting = shard(
        2, Pool.GPU, 45.0, 10, copy_of=1, indexes=slow.indexes, phase=ShardPhase.PENDING
    )
    waiting = replace(waiting, node=None, started_at=None)
    found = speculation.outrun([slow], durations, 45.0, lambda s: 10.0, copies_per_shard=3)
    assert [s.shard_id for s in found] == [1]
    assert speculation.outrun([slow, waiting], durations, 45.0, lambda s: 10.0, 3) == []


def test_a_straggler_report_stays_out_of_the_baseline() -> None:
    from core_driver import report_for

    baseline = PoolDurations(shards=5, microtasks=50, seconds=50.0)
    slow = report_for(IndexSet.from_range(0, 10), 1, ok, 3.0, {})
    normal = report_for(IndexSet.from_range(0, 10), 1, ok, 1.2, {})
    assert speculation.outlier(baseline, slow)
    assert not speculation.outlier(baseline, normal)
    assert not speculation.outlier(PoolDurations(shards=2, microtasks=20, seconds=20.0), slow)


def test_with_known_capacity_no_shard_is_parked_in_a_queue() -> None:
    # 2 GPU + 4 CPU slots under a window of 10: six shards run, none waits for a slot (work
    # left unplaced goes where a slot frees up, sized for that pool).
    d = Driver(auto_spec(parallelism=10), cluster=sized_cluster(2, 4))
    assert len(creates(d.step().actions)) == 6
    d.finish(0, ok)
    pools = [c.plan.pool for c in creates(d.step(1).actions)]
    assert pools == [Pool.GPU]


def test_no_copy_behind_shards_that_wait_for_capacity() -> None:
    spec = auto_spec(
        accelerator=Accelerator.CPU,
        total=40,
        parallelism=4,
        speculation=SpeculationPolicy(enabled=True, slowdown_factor=2, min_samples=1),
    )
    # (Capacity unknown: the core launches past it and learns it from the pods that wait.)
    d = Driver(spec, cluster=ClusterView(ready_nodes={Pool.CPU: frozenset({"cpu-0"})}))
    d.step()
    d.finish(0, ok)
    d.step(1)  # a measurement: 1 s per shard
    # Two shards run (one of them for ages), two wait for a slot.
    live = sorted(s.shard_id for s in d.running())
    d.set(live[0], started_at=d.now - 100)
    for waiting in live[2:]:
        d.set(waiting, phase=ShardPhase.PENDING, pending_reason="Unschedulable", started_at=None)
    decision = d.step(1)
    assert [c for c in creates(decision.actions) if c.plan.copy_of is not None] == []


# -- a waiting shard with no node left to run on ---------------------------------------------


def test_a_pending_shard_kept_off_every_node_left_is_relaunched_at_its_attempt() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    pinned = ("cpu-0", "cpu-1", "cpu-2")  # as a retry kept off the nodes where it failed
    d.set(0, phase=ShardPhase.PENDING, node=None, started_at=None, avoid_nodes_hard=pinned)
    d.step(1.0)
    assert 0 in d.shards, "cpu-3 may still take it: it waits"
    attempts = d.state.attempts
    d.cluster = ClusterView(ready_nodes={Pool.CPU: frozenset(pinned)})  # cpu-3 is gone
    decision = d.step(1.0)
    assert [a.reason for a in d.deleted] == ["unpinned"]
    (moved,) = creates(decision.actions)
    assert moved.plan.indexes == IndexSet.from_range(0, 10)
    assert moved.plan.attempt == 1
    assert not set(moved.plan.avoid_nodes_hard) >= set(pinned)
    assert d.state.attempts == attempts, "a relaunch of work that never ran spends nothing"
    assert d.state.rebalances == {"node_lost": 1}
    d.run_to_end(ok)
    assert len(d.state.succeeded) == 10


def test_a_pending_shard_with_a_node_left_keeps_waiting() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    d.set(0, phase=ShardPhase.PENDING, node=None, started_at=None, avoid_nodes_hard=("cpu-0",))
    d.cluster = ClusterView(ready_nodes={Pool.CPU: frozenset({"cpu-0", "cpu-1"})})
    decision = d.step(1.0)
    assert creates(decision.actions) == [] and d.deleted == []


def test_a_shard_and_its_copies_all_kept_off_every_node_left_go_back_out_as_one() -> None:
    d = Driver(CoreSpec(total=10, microtasks_per_shard=10, parallelism=1))
    d.step()
    pinned = ("cpu-0", "cpu-1", "cpu-2")
    d.set(0, phase=ShardPhase.PENDING, node=None, started_at=None, avoid_nodes_hard=pinned)
    copy = ObservedShard(
        shard_id=1,
        indexes=IndexSet.from_range(0, 10),
        attempt=1,
        pool=Pool.CPU,
        created_at=d.now,
        phase=ShardPhase.PENDING,
        copy_of=0,
        avoid_nodes_hard=("cpu-3", *pinned),
    )
    d.shards[1] = copy
    d.cluster = ClusterView(ready_nodes={Pool.CPU: frozenset(pinned)})
    decision = d.step(1.0)
    assert sorted((a.shard_id, a.reason) for a in d.deleted) == [(0, "unpinned"), (1, "unpinned")]
    (moved,) = creates(decision.actions)
    assert (moved.plan.indexes, moved.plan.copy_of) == (IndexSet.from_range(0, 10), None)
    d.run_to_end(ok)
    assert len(d.state.succeeded) == 10


# -- straggler detection from progress -------------------------------------------------------


def _running(progress: Progress | None, *, started: float = 0.0) -> ObservedShard:
    return ObservedShard(
        shard_id=7,
        indexes=IndexSet.from_range(0, 20),
        attempt=1,
        pool=Pool.CPU,
        created_at=started,
        phase=ShardPhase.RUNNING,
        node="cpu-0",
        started_at=started,
        progress=progress,
    )


def test_progress_shows_a_straggler_long_before_its_shard_would_end() -> None:
    # 1 s per microtask, 20 microtasks: without progress a 3x straggler shows at t=60.
    durations = {Pool.CPU: PoolDurations(shards=5, microtasks=50, seconds=50.0)}
    policy = SpeculationPolicy(enabled=True, slowdown_factor=3)

    def judged(progress: Progress | None, now: float) -> tuple[list[int], list[float]]:
        found, wakeups = speculation.stragglers([_running(progress)], durations, policy, now)
        return [s.shard_id for s in found], wakeups

    # Blind: nothing at t=20, a wakeup at 60.
    assert judged(None, 20) == ([], [60.0])
    # 2 done in 10 s since the first began: usual pace; it would be 3x slow at 9 s for 3 done.
    assert judged(Progress(done=2, seconds=8.0), 20) == ([], [30.0])  # 21, on the grid
    # 1 done in 10 s: even if the second ended now, 5 s per microtask is over 3x the usual.
    assert judged(Progress(done=1, seconds=10.0), 20) == ([7], [])
    # Nothing done in 3 s of its first microtask: 3x the usual already.
    assert judged(Progress(done=0, seconds=3.0), 20) == ([7], [])
    # Its last microtask under way: the whole-shard rule is the one left (t=60).
    assert judged(Progress(done=20, seconds=19.0), 20) == ([], [60.0])


def test_a_copy_queues_for_the_faster_pool_behind_copies_where_capacity_is_known() -> None:
    from microtask_operator.core.copies import pool_for_copy
    from microtask_operator.core.draft import Draft
    from microtask_operator.core.state import CoreState

    gpu_shard = shard(1, Pool.GPU, 0.0, 10)
    cpu_free = PoolLoad(Pool.CPU, capacity=4, live=3, waiting=0, per_microtask=5.0)
    # Both GPU slots busy and a copy waits there: a copy of a 10 s GPU shard still ends there
    # in 20 s (its turn after that copy's), against 50 s on the free CPU slot.
    gpu_busy = PoolLoad(Pool.GPU, capacity=2, live=3, waiting=1, per_microtask=1.0)
    draft = Draft(auto_spec(), CoreState(), [], sized_cluster(2, 4), 0.0)
    assert pool_for_copy(draft, {Pool.GPU: gpu_busy, Pool.CPU: cpu_free}, gpu_shard) == Pool.GPU
    # Capacity unknown: what waits may be real work, and a copy never queues behind it.
    unknown = PoolLoad(Pool.GPU, capacity=None, live=3, waiting=1, per_microtask=1.0)
    assert pool_for_copy(draft, {Pool.GPU: unknown, Pool.CPU: cpu_free}, gpu_shard) == Pool.CPU


# -- pod start-up and slow nodes in shard sizes ---------------------------------------------


def _size(**kw: float) -> int:
    """A shard's size for 20,000 microtasks of 1 s on 100 slots, aiming at 60 s shards."""
    common = {"total": 20_000, "parallelism": 100, "largest": 10_000}
    return shardsize.shard_size(per_microtask=1.0, target_seconds=60, **common, **kw)


def test_a_long_pod_start_up_makes_shards_longer() -> None:
    plain = _size(unplaced=15_000, rate=25)
    slow_start = _size(unplaced=15_000, rate=25, startup_seconds=30)
    assert plain == 60
    # 30 s of start-up before 60 s of work would cost a third of every slot.
    assert slow_start == shardsize.STARTUP_MULTIPLE * 30
    # Toward the end the tail rule still shrinks it, but never under two start-ups' time (its
    # share, twice the 10 s the cluster needs, would be start-up for the most part).
    tail = _size(unplaced=250, rate=25, startup_seconds=30)
    assert tail == shardsize.TAIL_STARTUP_MULTIPLE * 30
    short_start = _size(unplaced=250, rate=25, startup_seconds=5)
    assert short_start == 20


def test_near_the_end_a_shard_is_short_on_the_slowest_node_too() -> None:
    # 20 s is the tail's share; a node three times slower than the pool's pace would take 60 s.
    tail = _size(unplaced=250, rate=25, slowest=3.0)
    assert tail == 6
    # With a 30 s start-up, never under two start-ups of work at the pool's usual pace (on the
    # slow node such a shard runs longer, but one microtask behind 30 s of start-up would not).
    floor = _size(unplaced=250, rate=25, slowest=3.0, startup_seconds=30)
    assert floor == 60
    # Far from the end, the slow node changes nothing: the target holds.
    bulk = _size(unplaced=15_000, rate=25, slowest=3.0)
    assert bulk == 60


def test_near_the_end_a_shard_ends_by_the_water_level() -> None:
    # The level, when known, takes the place of the tail's share: 60 s from now, on a node
    # twice as slow as the pool's pace, after a 10 s start-up: 25 microtasks.
    assert _size(unplaced=250, rate=25, slowest=2.0, startup_seconds=10, level=60.0) == 25
    # Far from the end the target holds, and near it the floor of two start-ups still does.
    assert _size(unplaced=15_000, rate=25, startup_seconds=1, level=600.0) == 60
    assert _size(unplaced=250, rate=25, startup_seconds=10, level=12.0) == 20


def test_a_shard_is_sized_for_the_slowest_node_with_a_free_slot() -> None:
    from microtask_operator.core.draft import Draft
    from microtask_operator.core.state import CoreState
    from microtask_operator.core.window import free_node_pace

    view = ClusterView(
        ready_nodes={Pool.CPU: frozenset({"fast", "slow"})}, slots={"fast": 3, "slow": 3}
    )

    def running(shard_id: int, node: str, pace: float) -> ObservedShard:
        progress = Progress(done=4, seconds=4 * pace)
        return shard(shard_id, Pool.CPU, 0.0, 10, node=node, progress=progress)

    fast = [running(1, "fast", 5.0), running(2, "fast", 5.0)]
    slow = [running(3, "slow", 10.0), running(4, "slow", 10.0), running(5, "slow", 10.0)]
    spec = auto_spec(accelerator=Accelerator.CPU)
    # Only the fast node has a free slot: the new shard lands there, sized for its pace.
    draft = Draft(spec, CoreState(), fast + slow, view, 100.0)
    assert free_node_pace(draft, Pool.CPU) == 5.0
    # A slot free on the slow node too: it may land there.
    draft = Draft(spec, CoreState(), fast + slow[:2], view, 100.0)
    assert free_node_pace(draft, Pool.CPU) == 10.0
    # A shard waiting for a node takes a free slot first: which one is not known.
    waiting = replace(fast[0], shard_id=9, node=None, phase=ShardPhase.PENDING, progress=None)
    draft = Draft(spec, CoreState(), [*fast, *slow, waiting], view, 100.0)
    assert free_node_pace(draft, Pool.CPU) == 10.0


def _pod(
    shard_id: int, node: str, progress: Progress | None = None, **changes: object
) -> ObservedShard:
    shard = ObservedShard(
        shard_id=shard_id,
        indexes=IndexSet.from_range(shard_id * 20, shard_id * 20 + 20),
        attempt=1,
        pool=Pool.CPU,
        created_at=0.0,
        phase=ShardPhase.RUNNING,
        node=node,
        started_at=0.0,
        progress=progress,
    )
    from dataclasses import replace

    return replace(shard, **changes)  # type: ignore[arg-type]


def test_start_up_is_measured_from_progress_and_reports() -> None:
    from core_driver import report_for
    from microtask_operator.core.planner import startup_seconds

    # Running 40 s, its first microtask began 28 s ago: 12 s of start-up.
    running = _pod(1, "a", Progress(done=3, seconds=28.0))
    # Ran 70 s, 20 microtasks of 3 s: 10 s of start-up.
    report = report_for(IndexSet.from_range(40, 60), 1, ok, 3.0, {})
    finished = _pod(2, "b", phase=ShardPhase.SUCCEEDED, finished_at=70.0, report=report)
    # Nothing done yet (still starting, or on its first microtask): says nothing.
    starting = _pod(3, "c", Progress(done=0, seconds=0.0))
    # On a lost node: its progress stopped when the node went.
    stopped = _pod(4, "d", Progress(done=1, seconds=2.0), node_lost_since=5.0)
    assert startup_seconds([running, starting, stopped], 40.0) == 12.0
    assert startup_seconds([running, finished], 40.0) == 12.0  # the upper median of two
    assert startup_seconds([finished], 40.0) == 10.0
    assert startup_seconds([starting, stopped], 40.0) is None


# -- slow nodes are not stragglers -------------------------------------------------------------


def test_a_shard_as_slow_as_its_neighbours_is_no_straggler() -> None:
    # The pool's shards take 1 s per microtask; node "slow" runs everything at 4 s.
    durations = {Pool.CPU: PoolDurations(shards=5, microtasks=50, seconds=50.0)}
    policy = SpeculationPolicy(enabled=True, slowdown_factor=3)
    on_slow = [_pod(i, "slow", Progress(done=3, seconds=12.0)) for i in (1, 2, 3)]
    straggler = _pod(4, "slow", Progress(done=1, seconds=40.0))  # 10x its node's pace
    on_fast = [_pod(5, "fast", Progress(done=3, seconds=12.0))]  # alone: judged by the pool
    live = [*on_slow, straggler, *on_fast]
    blind, _ = speculation.stragglers(live, durations, policy, 20.0)
    assert sorted(s.shard_id for s in blind) == [1, 2, 3, 4, 5]
    found, _ = speculation.stragglers(
        live, durations, policy, 20.0, paces=speculation.NodePaces(live)
    )
    assert sorted(s.shard_id for s in found) == [4, 5]


def test_a_slow_nodes_report_counts_in_the_baseline_a_stragglers_does_not() -> None:
    from core_driver import report_for

    baseline = PoolDurations(shards=5, microtasks=50, seconds=50.0)
    slow_node = report_for(IndexSet.from_range(0, 10), 1, ok, 3.0, {})
    # Its neighbours run at 3 s per microtask too: that is the node, not the pod.
    assert speculation.outlier(baseline, slow_node)
    assert not speculation.outlier(baseline, slow_node, node_pace=3.0)
    straggler = report_for(IndexSet.from_range(0, 10), 1, ok, 30.0, {})
    assert speculation.outlier(baseline, straggler, node_pace=3.0)


def test_the_slowest_node_is_judged_by_the_median_of_its_shards() -> None:
    live = [
        _pod(1, "a", Progress(done=2, seconds=2.0)),
        _pod(2, "a", Progress(done=1, seconds=10.0)),  # a straggler on a normal node
        _pod(3, "b", Progress(done=2, seconds=6.0)),
        _pod(4, "b", Progress(done=2, seconds=6.0)),
        _pod(5, "c", Progress(done=1, seconds=50.0)),  # alone on its node: says nothing
    ]
    paces = speculation.NodePaces(live)
    assert paces.slowest(Pool.CPU) == 3.0
    assert paces.slowest(Pool.GPU) is None
    assert paces.of(live[1]) == 1.0  # its neighbour's pace
    assert paces.of(live[4]) is None


def test_a_straggler_beside_a_straggler_is_still_caught() -> None:
    # Two pods on one node both run 15x the pool's pace: the node's pace is trusted only up to
    # SLOW_NODE_MOST times the pool's, so neither hides the other.
    durations = {Pool.CPU: PoolDurations(shards=5, microtasks=50, seconds=50.0)}
    policy = SpeculationPolicy(enabled=True, slowdown_factor=3)
    live = [_pod(i, "n", Progress(done=2, seconds=30.0)) for i in (1, 2)]
    found, _ = speculation.stragglers(
        live, durations, policy, 30.0, paces=speculation.NodePaces(live)
    )
    assert sorted(s.shard_id for s in found) == [1, 2]
    assert speculation.usual_pace(1.0, 10.0) == speculation.SLOW_NODE_MOST
    assert speculation.usual_pace(1.0, 2.0) == 2.0
    assert speculation.usual_pace(1.0, 0.5) == 1.0
    assert speculation.usual_pace(1.0, None) == 1.0
