"""Table tests of the rebalancing policies: GPU→CPU fallback, lost nodes, stragglers, bad nodes."""

from __future__ import annotations

from dataclasses import replace

from core_driver import Driver, creates, ok
from microtask_operator.core.badnodes import avoid_lists, update_levels
from microtask_operator.core.state import NodeRecord, PoolDurations
from microtask_operator.core.types import (
    Accelerator,
    BadNodePolicy,
    ClusterView,
    CoreSpec,
    DeleteShard,
    Pool,
    Reason,
    RetryPolicy,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet


def auto_spec(**kw: object) -> CoreSpec:
    base: dict[str, object] = {
        "total": 40,
        "microtasks_per_shard": 10,
        "parallelism": 2,
        "accelerator": Accelerator.AUTO,
        "fallback_after_seconds": 120,
        "fallback_cooldown_seconds": 300,
    }
    base.update(kw)
    return CoreSpec(**base)  # type: ignore[arg-type]


def _speculating(total: int, parallelism: int, slowdown: float, samples: int) -> Driver:
    """A started job of `total` microtasks in shards of 10, with speculation on."""
    policy = SpeculationPolicy(enabled=True, slowdown_factor=slowdown, min_samples=samples)
    spec = CoreSpec(
        total=total, microtasks_per_shard=10, parallelism=parallelism, speculation=policy
    )
    d = Driver(spec)
    d.step()
    return d


def _four_slots_one_straggler() -> Driver:
    """60 microtasks on 4 slots, speculation after 3 samples at 3x: started."""
    return _speculating(60, 4, slowdown=3, samples=3)


def _straggler_and_its_copy() -> tuple[Driver, int]:
    """Two shards of 10; shard 0 ends at once, shard 1 straggles and gets a copy: its id."""
    d = _speculating(20, 3, slowdown=2, samples=1)
    d.finish(0, ok)
    d.step(10)
    d.step(40)
    [copy_id] = [i for i, s in d.shards.items() if s.copy_of == 1]
    return d, copy_id


def test_auto_starts_on_gpu_and_falls_back_to_cpu_when_unschedulable_too_long() -> None:
    d = Driver(auto_spec())
    first = d.step()
    assert {c.plan.pool for c in creates(first.actions)} == {Pool.GPU}
    for shard_id in (0, 1):
        d.set(
            shard_id,
            phase=ShardPhase.PENDING,
            pending_reason="Unschedulable",
            pending_since=d.now,
            started_at=None,
            node=None,
        )
    early = d.step(60)
    assert creates(early.actions) == []
    assert early.next_wakeup == d.now + 60
    moved = d.step(60)
    plans = [c.plan for c in creates(moved.actions)]
    assert [p.pool for p in plans] == [Pool.CPU, Pool.CPU]
    assert sorted(str(p.indexes) for p in plans) == ["0-9", "10-19"]
    assert all(p.attempt == 1 for p in plans)  # not counted as an attempt
    assert {a.shard_id for a in moved.actions if isinstance(a, DeleteShard)} == {0, 1}
    assert moved.state.rebalances == {"unschedulable_fallback": 2}
    assert moved.state.attempts == 20  # the moves spent nothing
    # While the cool-down lasts new work goes straight to CPU...
    d.finish_all(ok)
    nxt = d.step(1)
    assert {c.plan.pool for c in creates(nxt.actions)} == {Pool.CPU}


def test_fallback_never_moves_cpu_work_and_never_ping_pongs() -> None:
    d = Driver(auto_spec(fallback_cooldown_seconds=10))
    d.step()
    for shard_id in (0, 1):
        d.set(
            shard_id,
            phase=ShardPhase.PENDING,
            pending_reason="Unschedulable",
            pending_since=d.now,
            started_at=None,
        )
    d.step(121)
    cpu_ids = [i for i, s in d.shards.items() if s.pool == Pool.CPU]
    for shard_id in cpu_ids:
        d.set(
            shard_id,
            phase=ShardPhase.PENDING,
            pending_reason="Unschedulable",
            pending_since=d.now,
            started_at=None,
        )
    later = d.step(10_000)
    assert creates(later.actions) == []
    assert later.state.rebalances == {"unschedulable_fallback": 2}


def test_queued_or_gpu_only_shards_never_fall_back() -> None:
    d = Driver(auto_spec())
    d.step()
    d.set(0, phase=ShardPhase.PENDING, pending_reason="Queued", suspended=True, pending_since=d.now)
    d.set(1, phase=ShardPhase.PENDING, pending_reason="Unschedulable", pending_since=d.now)
    decision = d.step(500)
    moved = [c.plan for c in creates(decision.actions)]
    assert [str(p.indexes) for p in moved] == ["10-19"]
    gpu_only = Driver(auto_spec(accelerator=Accelerator.GPU))
    gpu_only.step()
    gpu_only.set(
        0, phase=ShardPhase.PENDING, pending_reason="Unschedulable", pending_since=gpu_only.now
    )
    assert creates(gpu_only.step(500).actions) == []


def test_lost_node_relaunches_without_spending_an_attempt_after_the_grace() -> None:
    spec = CoreSpec(total=20, microtasks_per_shard=10, parallelism=2, node_lost_grace_seconds=30)
    d = Driver(spec)
    d.step()
    d.set(0, node_lost_since=d.now)
    waiting = d.step(10)
    assert creates(waiting.actions) == []
    assert waiting.next_wakeup == d.now + 20
    decision = d.step(20)
    [again] = creates(decision.actions)
    assert str(again.plan.indexes) == "0-9"
    assert again.plan.attempt == 1
    assert decision.state.rebalances == {"node_lost": 1}
    assert decision.state.retry == ()
    assert DeleteShard(0, "node_lost") in decision.actions


def test_evicted_retry_shard_keeps_its_attempt_count() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if i == 4 else 0)
    d.step(1)
    d.step(2)
    [retry_id] = [i for i in d.shards if i != 0]
    assert d.shards[retry_id].attempt == 2
    d.set(retry_id, phase=ShardPhase.LOST, failure_reason="Evicted")
    decision = d.step(1)
    [again] = creates(decision.actions)
    assert (str(again.plan.indexes), again.plan.attempt) == ("4", 2)


def test_straggler_gets_one_copy_on_another_node_and_the_first_finisher_wins() -> None:
    d = _four_slots_one_straggler()
    # Shards 0-2 finish in 10 s (1 s per microtask); shard 3 hangs.
    for shard_id in (0, 1, 2):
        d.finish(shard_id, ok, seconds=1.0)
    d.step(10)
    # 10 s in, shard 3 is on time. Then the others end: the tail, with idle slots beside it.
    for s in d.running():
        if s.shard_id != 3:
            d.finish(s.shard_id, ok, seconds=1.0)
    early = d.step(4)
    assert [c for c in creates(early.actions) if c.plan.copy_of is not None] == []
    # At the tail a shard 1.5x past its expected time (10 s) gets a backup copy.
    late = d.step(2)
    [copy] = [c.plan for c in creates(late.actions) if c.plan.copy_of is not None]
    # The copy finishes first; the original is deleted and nothing is counted twice.
    d.finish(copy.shard_id, ok)
    end = d.step(5)
    assert end.phase == "Succeeded"
    assert end.status["succeeded"] == 60
    assert DeleteShard(3, "speculation_loser") in end.actions
    assert end.state.wasted_seconds > 0


def test_both_copies_finishing_together_count_once() -> None:
    d, copy_id = _straggler_and_its_copy()
    d.finish(1, ok)
    d.finish(copy_id, ok)
    end = d.step(1)
    assert end.status["succeeded"] == 20
    assert end.deltas.succeeded == 10


def test_bad_node_goes_soft_then_hard_and_expires() -> None:
    policy = BadNodePolicy(soft_after_failures=2, hard_after_failures=5, exclude_seconds=100)
    cluster = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b", "c", "d"})})
    # Every shard of "a" failed since its first failure; the other nodes failed none of 36.
    pools = {Pool.CPU: PoolDurations(harvested=40, failed_shards=4)}
    nodes = {"a": NodeRecord(failures=4, last_failure=10.0, shards=4)}
    nodes2, changed = update_levels(nodes, policy, cluster, 10.0, pools)
    assert nodes2["a"].level == "soft" and changed == [("a", "soft")]
    assert avoid_lists(nodes2, Pool.CPU, cluster) == ((), ("a",))
    again, changed = update_levels(nodes2, policy, cluster, 11.0, pools)
    assert again == nodes2 and changed == []  # stable: no repeated events
    pools = {Pool.CPU: PoolDurations(harvested=41, failed_shards=5)}
    nodes3, _ = update_levels(
        {"a": NodeRecord(5, 20.0, "soft", nodes2["a"].until, shards=5)},
        policy,
        cluster,
        20.0,
        pools,
    )
    assert nodes3["a"].level == "hard"
    assert avoid_lists(nodes3, Pool.CPU, cluster) == (("a",), ())
    expired, _ = update_levels(nodes3, policy, cluster, 20.0 + 101, pools)
    # Expired: on probation, avoided by nothing, one failure short of soft exclusion...
    assert expired["a"].level is None and expired["a"].failures == 1
    assert avoid_lists(expired, Pool.CPU, cluster) == ((), ())
    # ...and forgotten once it stays clean for excludeSeconds.
    forgotten, _ = update_levels(expired, policy, cluster, 20.0 + 101 + 100, pools)
    assert forgotten == {}


def test_a_run_of_failures_on_a_node_of_a_flaky_pool_is_no_evidence() -> None:
    # The pool fails 10% of its shards. A node whose record opened at a failure and then failed
    # 2 of its next 3 shards is not singled out (it was, before: 3 of 4 looked damning)...
    policy = BadNodePolicy(soft_after_failures=2, hard_after_failures=4)
    cluster = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b", "c", "d"})})
    pools = {Pool.CPU: PoolDurations(harvested=200, failed_shards=23)}
    nodes = {"a": NodeRecord(failures=3, last_failure=1.0, shards=4)}
    result, changed = update_levels(nodes, policy, cluster, 2.0, pools)
    assert changed == [] and result["a"].level is None
    # ...while one that failed all of its 6 is.
    nodes = {"a": NodeRecord(failures=6, last_failure=1.0, shards=6)}
    result, changed = update_levels(nodes, policy, cluster, 2.0, pools)
    assert result["a"].level == "hard"


def test_failures_spread_over_every_node_exclude_nobody() -> None:
    policy = BadNodePolicy(soft_after_failures=2, hard_after_failures=3)
    cluster = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b"})})
    pools = {Pool.CPU: PoolDurations(harvested=20, failed_shards=18)}
    nodes = {
        "a": NodeRecord(failures=9, last_failure=1.0, shards=10),
        "b": NodeRecord(failures=9, last_failure=1.0, shards=10),
    }
    result, changed = update_levels(nodes, policy, cluster, 2.0, pools)
    assert changed == []
    assert all(r.level is None for r in result.values())


def test_exclusion_never_takes_the_whole_pool() -> None:
    policy = BadNodePolicy(soft_after_failures=1, hard_after_failures=1, max_excluded_fraction=1.0)
    cluster = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b"})})
    nodes = {"a": NodeRecord(5, 1.0, shards=5), "b": NodeRecord(3, 1.0, shards=3)}
    result, _ = update_levels(nodes, policy, cluster, 1.0)
    hard, soft = avoid_lists(result, Pool.CPU, cluster)
    assert hard == ("a",)  # the worse one; one node is always left
    assert soft == ("b",)


def test_a_node_failing_everything_is_avoided_by_new_shards() -> None:
    spec = CoreSpec(
        total=400,
        microtasks_per_shard=10,
        parallelism=4,
        retry=RetryPolicy(backoff_seconds=1, max_attempts=5),
        bad_nodes=BadNodePolicy(soft_after_failures=1, hard_after_failures=2),
    )
    d = Driver(spec)
    d.step()
    for _ in range(12):
        for shard in d.running():
            bad = shard.node == "cpu-0"
            d.finish(shard.shard_id, (lambda i, a: 1) if bad else ok)
        d.step(2)
    assert d.state.nodes["cpu-0"].level == "hard"
    later = [c.plan for c in d.created[-4:]]
    assert all("cpu-0" in p.avoid_nodes_hard for p in later)
    assert d.state.rebalances.get(Reason.BAD_NODE.value, 0) >= 1
    excluded = d.last.status["excludedNodes"] if d.last else []
    assert excluded and excluded[0]["node"] == "cpu-0"


def test_a_copy_holds_only_what_its_group_has_not_finished() -> None:
    d, copy_id = _straggler_and_its_copy()
    # The copy ends with one failure on a node with failures of its own while the original
    # still runs: its 9 successes are kept, the original decides the rest...
    node = d.shards[copy_id].node
    assert node is not None
    d.state = replace(d.state, nodes={node: NodeRecord(failures=1, last_failure=d.now, shards=1)})
    d.finish(copy_id, lambda i, a: 1 if i == 10 else 0)
    d.step(1)
    assert len(d.state.succeeded) == 19
    # ...and the next copy of the straggler runs only the microtask left, not all ten.
    d.step(60)
    later = [s for i, s in d.shards.items() if s.copy_of == 1 and i != copy_id]
    assert later and all(s.indexes == IndexSet.from_range(10, 11) for s in later)


def test_a_copy_prefers_another_node_but_may_share_its_originals() -> None:
    """Stragglers are pods: the node of a straggling shard is only preferred away for its copy
    (required, a copy of a shard on the only node with free GPUs would wait forever)."""
    d = _four_slots_one_straggler()
    for shard_id in (0, 1, 2):
        d.finish(shard_id, ok, seconds=1.0)
    d.step(10)
    for s in d.running():
        if s.shard_id != 3:
            d.finish(s.shard_id, ok, seconds=1.0)
    d.step(4)
    late = d.step(2)
    [copy] = [c.plan for c in creates(late.actions) if c.plan.copy_of is not None]
    node = d.shards[3].node
    assert node is not None
    assert node in copy.avoid_nodes_soft
    assert node not in copy.avoid_nodes_hard


def test_a_few_transient_failures_in_long_shards_suspect_no_node() -> None:
    """One failure in a hundred, retried and then fine elsewhere, on every node alike: no node
    is suspected, and the shards' paces still make the pool's baseline."""
    spec = CoreSpec(
        total=1200,
        microtasks_per_shard=100,
        parallelism=3,
        retry=RetryPolicy(backoff_seconds=1, max_attempts=3),
    )
    d = Driver(spec, cluster=ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b", "c"})}))
    end = d.run_to_end(lambda i, a: 1 if i % 100 == 7 and a == 1 else 0)
    assert end.phase == "Succeeded"
    assert end.state.nodes == {}
    durations = end.state.durations[Pool.CPU]
    assert durations.shards == durations.harvested  # every shard measured
