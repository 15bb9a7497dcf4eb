"""Pod start-up, once measured, is kept for the rest of the job; the last wave of shards is
shared by the free slots instead of held to two start-ups each."""

from __future__ import annotations

from dataclasses import replace

from microtask_operator.core import shardsize, window
from microtask_operator.core.observed import remember_startup
from microtask_operator.core.placement import PoolLoad
from microtask_operator.core.state import CoreState, PoolDurations
from microtask_operator.core.types import ObservedShard, Pool, Progress, ShardPhase
from microtask_runner.indexset import IndexSet


def running(shard_id: int, pool: Pool, started: float, progress: Progress) -> ObservedShard:
    return ObservedShard(
        shard_id=shard_id,
        indexes=IndexSet.from_range(0, 20),
        attempt=1,
        pool=pool,
        created_at=started,
        phase=ShardPhase.RUNNING,
        node=f"{pool}-{shard_id}",
        started_at=started,
        progress=progress,
    )


def test_the_start_up_seen_is_kept_per_pool() -> None:
    # GPU pods took 30 s to begin their first microtask, CPU pods 10 s; seen at t=50.
    shards = [
        running(1, Pool.GPU, 0.0, Progress(done=1, seconds=20.0)),
        running(2, Pool.CPU, 0.0, Progress(done=3, seconds=40.0)),
    ]
    harvested = {pool: PoolDurations(shards=1, harvested=1) for pool in Pool}
    durations, startup = remember_startup(harvested, shards, 50.0)
    assert durations[Pool.GPU].startup_seconds == 30.0
    assert durations[Pool.CPU].startup_seconds == 10.0
    assert startup == 30.0  # the median of the live pods' (the upper one of two)
    # A pool with no record yet gets none for it (its first harvest opens one).
    assert remember_startup({}, shards, 50.0) == ({}, 30.0)


def test_without_a_live_sample_the_kept_start_up_is_used() -> None:
    kept = {
        Pool.GPU: PoolDurations(startup_seconds=30.0),
        Pool.CPU: PoolDurations(startup_seconds=10.0),
    }
    # The job's last pods are all new: none has begun a microtask.
    new = [running(7, Pool.CPU, 100.0, Progress(done=0, seconds=0.0))]
    durations, startup = remember_startup(kept, new, 101.0)
    assert durations == kept
    assert startup == 30.0  # the longer: a new shard may go to either pool
    # Nothing kept, nothing seen: unknown.
    assert remember_startup({}, new, 101.0) == ({}, None)


def test_a_pod_on_a_lost_node_neither_shows_nor_erases_it() -> None:
    kept = {Pool.GPU: PoolDurations(startup_seconds=12.0)}
    lost = replace(running(3, Pool.GPU, 0.0, Progress(done=5, seconds=5.0)), node_lost_since=20.0)
    assert remember_startup(kept, [lost], 60.0) == (kept, 12.0)


def test_the_start_up_survives_the_status() -> None:
    state = CoreState(durations={Pool.GPU: PoolDurations(shards=1, startup_seconds=12.34)})
    status = state.to_status()
    assert status["durations"]["gpu"]["startupSeconds"] == 12.3
    back = CoreState.from_status(status)
    assert back.durations[Pool.GPU].startup_seconds == 12.3
    # A status written before it was kept reads back as unknown.
    del status["durations"]["gpu"]["startupSeconds"]
    assert CoreState.from_status(status).durations[Pool.GPU].startup_seconds is None


def _tail_size(**kw: float) -> int:
    """A shard's size near the end: 250 microtasks of 1 s left, the cluster clears 25 a second,
    pods take 30 s to start (two start-ups, 60 microtasks, is the usual floor)."""
    return shardsize.shard_size(
        per_microtask=1.0,
        target_seconds=60,
        unplaced=250,
        rate=25,
        total=20_000,
        parallelism=100,
        largest=10_000,
        startup_seconds=30,
        **kw,
    )


def test_the_last_wave_is_shared_by_the_free_slots() -> None:
    # Nothing known of free slots: the floor of two start-ups holds.
    assert _tail_size() == 60
    # 25 free slots clear the 250 in 10 s, under the floor's 60 s: the floor gives way to the
    # tail's share (twice the 10 s the cluster needs).
    assert _tail_size(free_rate=25) == 20
    # ...on the pool's slowest node seen too (twice as slow there: 10, done in 20 s).
    assert _tail_size(free_rate=25, slowest=2.0) == 10
    # 2 free slots would need 125 s: more than one wave, so the floor holds.
    assert _tail_size(free_rate=2) == 60


def test_free_rate_counts_the_pools_free_slots_and_the_new_shards() -> None:
    # 4 slots, 3 shards there (the new one counted already): 2 slots of 0.5 s a microtask.
    load = PoolLoad(Pool.GPU, capacity=4, live=3, waiting=0, per_microtask=0.5)
    assert window.free_rate(load) == 4.0
    # Capacity or pace unknown: no last wave to share.
    assert window.free_rate(replace(load, capacity=None)) == 0.0
    assert window.free_rate(replace(load, per_microtask=None)) == 0.0
