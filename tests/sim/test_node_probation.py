"""A bad node let back after its exclusion, in the simulator: judged again at once, and kept
away from microtasks on their last attempt.

The example mixed cluster (a node that fails everything fast among healthy CPU and GPU nodes,
stragglers, 0.3% transient failures) with a 50,000-microtask job that outlasts two exclusions.
Seed 3 failed: a microtask failed twice in its pod on a healthy node, and its third and last
attempt went to the bad node just let back a second time, which failed it for good before the
node was judged again (the default `maxFailedMicrotasks: 0` fails the job). Before that, each
time the node was let back, it failed some 40 shards in the 160 s its failures took to be
confirmed by the microtasks' retries elsewhere.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml
from microtask_operator.simulator import simulate
from microtask_operator.simulator.cluster import parse_cluster
from microtask_operator.simulator.jobfile import load_job

from .scenarios import FailuresOn
from .test_scenarios import assert_each_microtask_ends_once

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def test_a_bad_node_let_back_fails_no_microtask_for_good() -> None:
    data = yaml.safe_load((EXAMPLES / "mixed.yaml").read_text())
    data["nodeLosses"] = [{"node": "gpu-3", "at": 1500, "deletedAfter": 300}]
    world = parse_cluster(data)
    spec = replace(load_job(EXAMPLES / "jobs" / "mixed.yaml").spec, total=50_000)
    failed_there = FailuresOn("cpu-bad")
    result = simulate(spec, world, seed=3, planner=failed_there)

    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    assert len(result.failed) == 0
    assert {"node": "cpu-bad", "level": "hard"} in result.excluded_nodes
    # Excluded three times (at its first failures, then each time it is let back), each time
    # once the first shards it took back have failed: its 4 slots' worth.
    [record] = result.status["nodeFailures"]
    assert record["exclusions"] == 3
    assert len(failed_there.shards) <= 13 + 2 * 5
