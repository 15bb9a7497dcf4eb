"""The job's end planned by the water level (core/window.py), in the simulator.

The level is when the work not running yet would be done with every slot taking its share,
the busy ones once free, each paying one pod start-up. Near the end a new shard ends by it on
the slowest node it may land on, and a free slower slot takes work that it ends by then. The
cluster: the example mixed one made GPU-heavy (24 GPUs at 0.5 s a microtask, 48 CPU slots at
4 s, 16 at 8 s, a bad node, a GPU node lost 5 minutes in), where the job lasts about two shard
targets: without the level, its second half ran shards that spent up to a third of their time
starting up, each slot one wave after another.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from microtask_operator.core import window
from microtask_operator.simulator import simulate
from microtask_operator.simulator.cluster import parse_cluster
from microtask_operator.simulator.jobfile import load_job

from .test_scenarios import assert_each_microtask_ends_once

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def gpu_heavy() -> dict[str, object]:
    data = yaml.safe_load((EXAMPLES / "mixed.yaml").read_text())
    data["workload"]["secondsPerMicrotask"] = {"gpu": 0.5, "cpu": 4.0}
    gpu, cpu, slow, _bad = data["nodes"]
    gpu.update(count=6, gpus=4)
    cpu["count"] = 12
    slow["count"] = 4
    data["nodeLosses"] = [{"node": "gpu-2", "at": 300, "deletedAfter": 300}]
    return data


def test_the_last_waves_end_together_by_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a few seeds (one alone goes either way with the stragglers' luck): fewer shards,
    so fewer pod start-ups, for the same work, and an end no later."""
    spec = load_job(EXAMPLES / "jobs" / "mixed.yaml").spec
    world = parse_cluster(gpu_heavy())
    assert spec.parallelism >= sum(node.slots for node in world.nodes)
    seeds = range(1, 7)
    leveled = [simulate(spec, world, seed=seed) for seed in seeds]
    for result in leveled:
        assert result.phase == "Succeeded"
        assert_each_microtask_ends_once(result)

    monkeypatch.setattr(window, "water_level", lambda draft, loads: None)
    shared = [simulate(spec, world, seed=seed) for seed in seeds]
    for result in shared:
        assert_each_microtask_ends_once(result)
    assert sum(r.shards for r in leveled) < 0.97 * sum(r.shards for r in shared)
    assert sum(r.makespan for r in leveled) <= 1.01 * sum(r.makespan for r in shared)
