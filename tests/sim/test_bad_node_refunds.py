"""A node that fails everything, fast, takes more shards than one node's share of suspicions:
the attempts its victims spent there are given back all the same, and the job succeeds."""

from __future__ import annotations

from dataclasses import replace

from microtask_operator.core.state import MAX_SUSPECT_RANGES
from microtask_operator.simulator import simulate

from .scenarios import FailuresOn, cluster, cpu_nodes, job

# Transient failures are frequent (2%): a microtask that lost an attempt on the bad node and
# fails twice more elsewhere fails the job unless that attempt is given back. The job outlasts
# an exclusion (600 s), so the node is on probation, taking fresh work again, for a while.
FLAKY_WITH_BAD_NODE = cluster(
    [
        cpu_nodes(7, slots=4),
        {"name": "bad", "pool": "cpu", "slots": 8, "bad": True, "badSecondsPerMicrotask": 0.2},
    ],
    workload={"failureRate": 0.02},
)


def test_every_attempt_lost_on_a_bad_node_is_given_back() -> None:
    spec = job(20_000, 50, 32, max_attempts=3)
    # Every retry in a retry shard, where it may land on the bad node: what is refunded. (At a
    # 2% failure rate, a pod's own retries also fail now and then, a third attempt more often:
    # seed 7 then ends with one microtask failed three times on healthy nodes.)
    spec = replace(spec, retry=replace(spec.retry, in_pod=False))
    failed_there = FailuresOn("bad")  # shards that failed work on the bad node

    # (Seed 7 failed the job when suspicions were bounded per node: the bad node's newest
    # pushed out older ones, and the attempts they stood for were never given back.)
    result = simulate(spec, FLAKY_WITH_BAD_NODE, seed=7, planner=failed_there)

    assert result.phase == "Succeeded"
    assert len(result.failed) == 0 and len(result.succeeded) == spec.total
    assert result.anomalies == []
    assert {"node": "bad", "level": "hard"} in result.excluded_nodes
    # The node failed more than twice as many shards as a node keeps suspicions of...
    assert len(failed_there.shards) > 2 * MAX_SUSPECT_RANGES
    # ...and no microtask was launched past maxAttempts.
    assert result.attempts <= spec.total * spec.retry.max_attempts
