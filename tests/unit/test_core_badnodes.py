"""Bad nodes judged by evidence: a pod that dies counts against its node at once, a microtask the
runner reported as failed only once it succeeds on another node."""

from __future__ import annotations

from dataclasses import replace

import pytest
from core_driver import Driver
from microtask_operator.core import badnodes
from microtask_operator.core.state import (
    MAX_SUSPECT_RANGES,
    MAX_SUSPECTED_RANGES,
    CoreState,
    NodeRecord,
    PoolDurations,
)
from microtask_operator.core.types import (
    BadNodePolicy,
    ClusterView,
    CoreSpec,
    CreateShard,
    Pool,
    Reason,
    RetryPolicy,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet

ABC = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b", "c"})})


def ix(text: str) -> IndexSet:
    return IndexSet.parse(text)


def suspecting(text: str, failures: int = 0) -> NodeRecord:
    return NodeRecord(failures=failures, last_failure=10.0, shards=failures, suspect=ix(text))


def cluster(count: int) -> ClusterView:
    return ClusterView(ready_nodes={Pool.CPU: frozenset(f"cpu-{i}" for i in range(count))})


# -- a program's own failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "total", "per_shard", "parallelism", "max_attempts", "every"),
    [
        (2, 60, 5, 2, 3, 10),
        (2, 120, 5, 4, 4, 10),
        (2, 120, 5, 2, 5, 7),
        (3, 60, 5, 4, 3, 13),
        (3, 120, 10, 3, 5, 10),
    ],
)
def test_a_program_failing_some_items_excludes_no_node_however_often_retried(
    nodes: int, total: int, per_shard: int, parallelism: int, max_attempts: int, every: int
) -> None:
    spec = CoreSpec(
        total=total,
        microtasks_per_shard=per_shard,
        parallelism=parallelism,
        retry=RetryPolicy(
            max_attempts=max_attempts, backoff_seconds=1, max_failed_microtasks=total
        ),
    )
    d = Driver(spec, cluster=cluster(nodes))
    end = d.run_to_end(lambda i, a: 1 if i % every == 0 else 0)
    assert end.phase == "Succeeded"
    assert len(end.state.failed) == len(range(0, total, every))
    assert Reason.BAD_NODE.value not in end.state.rebalances
    assert all(r.failures == 0 and r.level is None for r in end.state.nodes.values())
    assert all(not r.suspect for r in end.state.nodes.values())  # all judged: the program's
    assert end.state.durations[Pool.CPU].failed_shards == 0


def test_a_node_failing_what_succeeds_elsewhere_is_found() -> None:
    spec = CoreSpec(
        total=400,
        microtasks_per_shard=10,
        parallelism=3,
        retry=RetryPolicy(backoff_seconds=1, max_attempts=3),
        bad_nodes=BadNodePolicy(soft_after_failures=2, hard_after_failures=3),
    )
    d = Driver(spec, cluster=cluster(3))
    decision = d.step()
    for _ in range(30):
        for shard in d.running():
            bad = shard.node == "cpu-0"  # this node fails whatever it runs
            d.finish(shard.shard_id, (lambda i, a: 1) if bad else (lambda i, a: 0))
        decision = d.step(2)
    record = decision.state.nodes["cpu-0"]
    assert record.level == "hard"
    assert decision.state.rebalances[Reason.BAD_NODE.value] >= 1
    assert decision.status["failed"] == 0  # each retry ran elsewhere, and succeeded there
    # Every retry of what failed on cpu-0 was kept away from it, before any exclusion too.
    for create in d.created:
        if create.plan.attempt > 1:
            assert "cpu-0" in create.plan.avoid_nodes_hard
    assert set(decision.state.nodes) == {"cpu-0"}


def test_a_pod_that_dies_counts_against_its_node_at_once() -> None:
    spec = CoreSpec(total=20, microtasks_per_shard=10, parallelism=2)
    d = Driver(spec)
    d.step()
    node = d.shards[0].node
    assert node is not None
    d.set(0, phase=ShardPhase.FAILED, exit_code=137, failure_reason="OOMKilled")
    decision = d.step(1)
    record = decision.state.nodes[node]
    assert (record.failures, record.shards, record.suspect) == (1, 1, IndexSet.EMPTY)
    assert decision.state.durations[Pool.CPU].failed_shards == 1


def test_a_reported_failure_is_a_suspicion_confirmed_by_a_success_elsewhere() -> None:
    spec = CoreSpec(
        total=10, microtasks_per_shard=10, parallelism=1, retry=RetryPolicy(backoff_seconds=1)
    )
    d = Driver(spec)
    d.step()
    first = d.shards[0].node
    assert first is not None
    d.finish(0, lambda i, a: 3 if i in (2, 7) else 0)
    decision = d.step(1)
    record = decision.state.nodes[first]
    assert (record.failures, record.shards, str(record.suspect)) == (0, 0, "2,7")
    assert decision.status["nodeFailures"] == [
        {
            "node": first,
            "failures": 0,
            "shards": 0,
            "lastFailure": "1970-01-01T00:16:41Z",
            "suspect": "2,7",
        }
    ]
    assert decision.state.durations[Pool.CPU].failed_shards == 0
    retry = d.step(2)
    [again] = [c.plan for c in retry.actions if isinstance(c, CreateShard)]
    assert first in again.avoid_nodes_hard
    d.finish(again.shard_id, lambda i, a: 0)
    judged = d.step(1)
    record = judged.state.nodes[first]
    assert (record.failures, record.shards, record.suspect) == (1, 1, IndexSet.EMPTY)
    assert judged.state.durations[Pool.CPU].failed_shards == 1
    assert "suspect" not in judged.status["nodeFailures"][0]


def test_suspicions_round_trip_through_the_status() -> None:
    state = CoreState(
        nodes={"a": suspecting("3,10-19", failures=1), "b": NodeRecord(2, 5.0, shards=3)}
    )
    status = state.to_status()
    assert [e.get("suspect") for e in status["nodeFailures"]] == ["3,10-19", None]
    assert CoreState.from_status(status).nodes == state.nodes


# -- judgement, one table ----------------------------------------------------------------------


def test_a_success_elsewhere_confirms_once_however_many_it_clears() -> None:
    nodes = {"a": suspecting("0-9"), "b": suspecting("20")}
    result, confirmed, programs = badnodes.judge(
        nodes, "c", succeeded=ix("0-4,20"), failed=IndexSet.EMPTY, now=50.0
    )
    assert confirmed == ["a", "b"]
    assert programs == IndexSet.EMPTY
    assert (result["a"].failures, result["a"].shards, str(result["a"].suspect)) == (1, 1, "5-9")
    assert result["a"].last_failure == 50.0
    assert (result["b"].failures, result["b"].suspect) == (1, IndexSet.EMPTY)


def test_a_failure_elsewhere_makes_it_the_programs() -> None:
    nodes = {"a": suspecting("0-9")}
    result, confirmed, programs = badnodes.judge(
        nodes, "b", succeeded=IndexSet.EMPTY, failed=ix("3-4"), now=50.0
    )
    assert confirmed == []
    assert str(programs) == "3-4"
    assert (result["a"].failures, str(result["a"].suspect)) == (0, "0-2,5-9")


def test_on_the_same_node_a_success_clears_and_a_failure_keeps_the_suspicion() -> None:
    nodes = {"a": suspecting("0-9")}
    result, confirmed, programs = badnodes.judge(
        nodes, "a", succeeded=ix("0-1"), failed=ix("2"), now=50.0
    )
    assert (confirmed, programs) == ([], IndexSet.EMPTY)
    assert (result["a"].failures, str(result["a"].suspect)) == (0, "2-9")


def test_a_permanent_failure_acquits_every_node() -> None:
    nodes = {"a": suspecting("0-9"), "b": suspecting("5"), "c": NodeRecord(1, 1.0, shards=1)}
    result = badnodes.acquit(nodes, ix("4-5"))
    assert [str(result[n].suspect) for n in "abc"] == ["0-3,6-9", "", ""]
    assert result["c"] is nodes["c"]


def test_a_program_failing_for_good_leaves_no_suspicion() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(max_attempts=1, max_failed_microtasks=10),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if i == 3 else 0)
    end = d.step(1)
    assert end.phase == "Succeeded"
    assert end.state.nodes == {}


def test_suspicions_are_bounded_job_wide_the_least_failing_nodes_giving_theirs_up_first() -> None:
    def scattered(start: int, count: int) -> IndexSet:
        return IndexSet.from_indexes(range(start, start + 2 * count, 2))

    # Alone, a node may hold more than its share...
    alone = badnodes.record_shard({}, "a", failed=False, suspects=scattered(0, 200), now=1.0)
    assert alone["a"].suspect == scattered(0, 200)
    assert (alone["a"].failures, alone["a"].shards) == (0, 0)
    # ...and beside others, the one with failures of its own keeps its suspicions: the others
    # give theirs up, down to their share.
    others = {f"n{k}": suspecting(str(scattered(10_000 * (k + 1), 40))) for k in range(10)}
    tainted = {**others, "a": suspecting("", failures=3)}
    budget = MAX_SUSPECTED_RANGES - 10 * 40 + 200
    nodes = badnodes.record_shard(
        tainted, "a", failed=False, suspects=scattered(0, budget), now=1.0
    )
    assert nodes["a"].suspect == scattered(0, budget)
    assert sum(len(r.suspect.ranges) for r in nodes.values()) == MAX_SUSPECTED_RANGES
    assert all(len(nodes[n].suspect.ranges) >= MAX_SUSPECT_RANGES for n in others)
    assert all(nodes[n].suspect <= others[n].suspect for n in others)
    # Past the whole budget, every node keeps its share, the newest suspicions first.
    flood = scattered(0, 2 * MAX_SUSPECTED_RANGES)
    nodes = badnodes.record_shard(tainted, "a", failed=False, suspects=flood, now=1.0)
    assert sum(len(r.suspect.ranges) for r in nodes.values()) <= MAX_SUSPECTED_RANGES
    assert all(len(nodes[n].suspect.ranges) == MAX_SUSPECT_RANGES for n in others)
    assert nodes["a"].suspect.last() == flood.last()


def test_node_records_take_a_bounded_share_of_the_status_whatever_fails() -> None:
    """Every node full of scattered suspicions at ten million microtasks: the node records stay
    within a quarter of the status's 64 KiB."""
    import json

    nodes: dict[str, NodeRecord] = {}
    for k in range(60):  # more nodes than are kept
        flood = IndexSet.from_indexes(range(9_000_000 + k, 9_000_000 + k + 2000 * 7, 7))
        nodes = badnodes.record_shard(
            nodes, f"node-{k:02d}", failed=k % 3 == 0, suspects=flood, now=float(k)
        )
    assert sum(len(r.suspect.ranges) for r in nodes.values()) <= MAX_SUSPECTED_RANGES
    status = CoreState(nodes=nodes).to_status()
    assert len(json.dumps(status["nodeFailures"]).encode()) <= 16 * 1024


# -- where a retry goes --------------------------------------------------------------------------


def test_a_retry_avoids_where_it_failed_and_where_failures_await_judgement() -> None:
    nodes = {"a": suspecting("0-9"), "b": suspecting("50")}
    hard, soft = badnodes.avoid_lists_for_retry(nodes, ix("5"), Pool.CPU, ABC)
    assert (hard, soft) == (("a", "b"), ())
    # Only what is required while a ready node is left: here b would take the last one.
    two = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b"})})
    hard, soft = badnodes.avoid_lists_for_retry(nodes, ix("5"), Pool.CPU, two)
    assert (hard, soft) == (("a",), ("b",))
    one = ClusterView(ready_nodes={Pool.CPU: frozenset({"a"})})
    assert badnodes.avoid_lists_for_retry(nodes, ix("5"), Pool.CPU, one) == ((), ("a",))
    # Nodes that are not ready, or not of the pool, are not named.
    gpu = ClusterView(ready_nodes={Pool.CPU: frozenset({"c"}), Pool.GPU: frozenset({"a"})})
    assert badnodes.avoid_lists_for_retry(nodes, ix("5"), Pool.CPU, gpu) == ((), ())


def test_without_bad_node_tracking_retries_go_anywhere() -> None:
    spec = CoreSpec(
        total=10,
        microtasks_per_shard=10,
        parallelism=1,
        retry=RetryPolicy(backoff_seconds=1),
        bad_nodes=BadNodePolicy(enabled=False),
    )
    d = Driver(spec)
    d.step()
    d.finish(0, lambda i, a: 1 if a == 1 else 0)
    d.step(1)
    retry = d.step(2)
    [again] = [c.plan for c in retry.actions if isinstance(c, CreateShard)]
    assert again.attempt == 2
    assert (again.avoid_nodes_hard, again.avoid_nodes_soft) == ((), ())


# -- attempts spent on a bad node ------------------------------------------------------------------


@pytest.mark.parametrize(("failures_there", "failed_for_good"), [(4, False), (1, True)])
def test_a_last_attempt_after_one_spent_on_a_known_bad_node_is_not_the_last(
    failures_there: int, failed_for_good: bool
) -> None:
    """Microtask 0 failed its first attempt on `a` (on probation after an exclusion, failures of
    its own), then twice by bad luck elsewhere. The attempt `a` took is given back, so the job
    does not fail for it; on a node with a single failure of its own, it is not."""
    from core_driver import report_for
    from microtask_operator.core.planner import plan
    from microtask_operator.core.types import ObservedShard

    spec = CoreSpec(
        total=4, microtasks_per_shard=4, parallelism=1, retry=RetryPolicy(max_attempts=3)
    )
    record = NodeRecord(failures=failures_there, last_failure=990.0, shards=10, suspect=ix("0"))
    state = CoreState(succeeded=ix("1-3"), next_shard=8, nodes={"a": record})
    last = ObservedShard(
        shard_id=7,
        indexes=ix("0"),
        attempt=3,
        pool=Pool.CPU,
        created_at=900.0,
        phase=ShardPhase.SUCCEEDED,
        node="b",
        started_at=900.0,
        finished_at=950.0,
        report=report_for(ix("0"), 3, lambda i, a: 1),
        exit_code=10,
    )
    decision = plan(spec, state, [last], ABC, 1000.0)
    if failed_for_good:
        assert decision.phase == "Failed"
        assert decision.state.failed == ix("0")
    else:
        assert decision.phase == "Running"
        assert decision.state.failed == IndexSet.EMPTY
        # Retried at the attempt it just had (never past maxAttempts).
        assert [(b.attempts, b.indexes) for b in decision.state.retry] == [(2, ix("0"))]


def test_an_attempt_spent_on_a_bad_node_is_given_back_however_much_else_fails_there() -> None:
    """Microtask 0 failed on `a` before `a` was excluded, then once elsewhere. While its third
    attempt runs on `b`, twenty more shards fail on `a` (their pods were there already): a
    bounded suspicion of each would push out microtask 0's. Its third attempt fails too: the
    one spent on `a` is given back all the same, and the job goes on."""
    from core_driver import report_for
    from microtask_operator.core.planner import plan
    from microtask_operator.core.types import ObservedShard

    spec = CoreSpec(
        total=50, microtasks_per_shard=1, parallelism=30, retry=RetryPolicy(max_attempts=3)
    )
    on_a = IndexSet.from_indexes(range(10, 50, 2))
    record = NodeRecord(
        failures=5, last_failure=990.0, level="hard", until=2000.0, shards=5, suspect=ix("0")
    )
    state = CoreState(
        succeeded=IndexSet.from_range(1, 50) - on_a,
        next_shard=30,
        nodes={"a": record},
        in_flight={1: on_a, 3: ix("0")},
    )

    def shard(shard_id: int, index: int, attempt: int, node: str, *, ended: bool) -> ObservedShard:
        indexes = IndexSet.from_range(index, index + 1)
        return ObservedShard(
            shard_id=shard_id,
            indexes=indexes,
            attempt=attempt,
            pool=Pool.CPU,
            created_at=900.0,
            phase=ShardPhase.SUCCEEDED if ended else ShardPhase.RUNNING,
            node=node,
            started_at=900.0,
            finished_at=950.0 if ended else None,
            report=report_for(indexes, attempt, lambda i, a: 1) if ended else None,
            exit_code=10 if ended else None,
        )

    failing_on_a = [shard(1 + k, i, 1, "a", ended=True) for k, i in enumerate(on_a)]
    first = plan(spec, state, [*failing_on_a, shard(29, 0, 3, "b", ended=False)], ABC, 1000.0)
    assert first.state.nodes["a"].suspect == ix("0")
    assert first.state.nodes["a"].failures > record.failures  # each failed shard counts at once
    # Those attempts on `a`, known bad, cost nothing.
    assert [(b.attempts, b.indexes) for b in first.state.retry] == [(0, on_a)]

    second = plan(spec, first.state, [shard(29, 0, 3, "b", ended=True)], ABC, 1001.0)
    assert second.phase == "Running"
    assert second.state.failed == IndexSet.EMPTY
    assert (2, ix("0")) in [(b.attempts, b.indexes) for b in second.state.retry]
    assert second.state.nodes["a"].suspect == IndexSet.EMPTY  # given back once, not again


def test_a_failure_elsewhere_leaves_the_suspicion_on_a_node_known_to_fail_work() -> None:
    nodes = {"a": suspecting("3", failures=4), "b": suspecting("3")}
    result, confirmed, programs = badnodes.judge(
        nodes, "c", succeeded=IndexSet.EMPTY, failed=ix("3"), now=20.0, known_bad_after=4
    )
    assert result["a"].suspect == ix("3")  # known to fail work: still suspected
    assert result["b"].suspect == IndexSet.EMPTY  # one failure of its own: the program's
    assert (confirmed, programs) == ([], ix("3"))
    # Without the threshold, as before: both are cleared.
    result, _, _ = badnodes.judge(nodes, "c", succeeded=IndexSet.EMPTY, failed=ix("3"), now=20.0)
    assert result["a"].suspect == IndexSet.EMPTY


# -- a node let back after an exclusion ------------------------------------------------------------


FOUR = ClusterView(ready_nodes={Pool.CPU: frozenset({"a", "b", "c", "d"})})
# A pool that failed 4 of 400 shards: a node failing all of its own stands out at once.
CLEAN_POOL = {Pool.CPU: PoolDurations(harvested=400, failed_shards=4)}


def test_each_exclusion_of_a_node_lasts_twice_the_one_before_up_to_eight_times() -> None:
    policy = BadNodePolicy(soft_after_failures=2, hard_after_failures=4, exclude_seconds=100)
    record = NodeRecord(failures=4, last_failure=0.0, shards=4)
    now, lengths = 0.0, []
    for _ in range(5):
        nodes, changed = badnodes.update_levels({"a": record}, policy, FOUR, now, CLEAN_POOL)
        assert changed == [("a", "hard")]
        until = nodes["a"].until
        assert until is not None
        lengths.append(until - now)
        now = until
        nodes, changed = badnodes.update_levels(nodes, policy, FOUR, now, CLEAN_POOL)
        assert changed == [] and badnodes.on_probation(nodes["a"])
        record = replace(nodes["a"], failures=4, shards=4)  # it fails again at once
    assert lengths == [100, 200, 400, 800, 800]
    assert record.exclusions == 5


def test_a_soft_exclusion_made_hard_is_the_same_exclusion() -> None:
    policy = BadNodePolicy(soft_after_failures=2, hard_after_failures=4, exclude_seconds=100)
    soft = NodeRecord(3, 50.0, "soft", 150.0, shards=3, exclusions=2)
    nodes, changed = badnodes.update_levels(
        {"a": replace(soft, failures=4, shards=4)}, policy, FOUR, 60.0, CLEAN_POOL
    )
    assert changed == [("a", "hard")]
    assert (nodes["a"].exclusions, nodes["a"].until) == (2, 60.0 + 200)
    assert not badnodes.on_probation(nodes["a"])


def test_exclusions_round_trip_through_the_status() -> None:
    state = CoreState(nodes={"a": NodeRecord(1, 5.0, shards=1, exclusions=3), "b": suspecting("4")})
    status = state.to_status()
    assert [e.get("exclusions") for e in status["nodeFailures"]] == [3, None]
    assert CoreState.from_status(status).nodes == state.nodes


def test_retries_keep_away_from_a_node_on_probation_while_the_pool_has_others() -> None:
    nodes = {"a": NodeRecord(failures=1, last_failure=0.0, shards=1, exclusions=1)}
    assert badnodes.avoid_lists(nodes, Pool.CPU, ABC) == ((), ())  # new work may go there
    assert badnodes.avoid_lists_for_retry(nodes, ix("5"), Pool.CPU, ABC) == (("a",), ())
    everyone = dict.fromkeys(("a", "b", "c"), nodes["a"])
    assert badnodes.avoid_lists_for_retry(everyone, ix("5"), Pool.CPU, ABC) == ((), ("a", "b", "c"))


def test_a_node_on_probation_that_fails_a_shard_again_is_excluded_at_once() -> None:
    """Its failures are not left to await judgement (microtasks succeeding elsewhere, a retry's
    run later): meanwhile a node that fails fast would fail shard after shard."""
    spec = CoreSpec(
        total=30, microtasks_per_shard=10, parallelism=3, retry=RetryPolicy(in_pod=False)
    )
    probation = NodeRecord(failures=1, last_failure=900.0, shards=1, exclusions=1)
    state = CoreState(
        nodes={"a": probation}, durations={Pool.CPU: PoolDurations(harvested=4000, failed_shards=1)}
    )
    d = Driver(spec, cluster=ABC, state=state)
    d.step()
    [there] = [s.shard_id for s in d.running() if s.node == "a"]
    d.finish(there, lambda i, a: 1)
    judged = d.step(1)
    record = judged.state.nodes["a"]
    assert (record.failures, record.level, record.exclusions) == (2, "soft", 2)
    assert record.until == d.now + 1200
    assert any("avoided (soft) for 1200s, exclusion 2" in e.message for e in judged.events)
    # Its microtasks are still suspected there: the attempts they spent may be given back.
    assert record.suspect == d.shards[there].indexes
