"""The work left at a job's end shared over every slot by the water level (core/window.py), in
the simulator: the example mixed cluster with a 30 s pod start-up, where the work of the lost
GPU node comes back when little else is left. One shard at a time, the GPU queue always looked
sooner than a free CPU slot, so the work waited for the GPUs while the CPU slots sat idle."""

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


def test_the_last_work_goes_to_free_slow_slots_that_end_by_the_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = load_job(EXAMPLES / "jobs" / "mixed.yaml").spec
    data = yaml.safe_load((EXAMPLES / "mixed.yaml").read_text())
    data["workload"]["podStartupSeconds"] = 30
    world = parse_cluster(data)
    shared = simulate(spec, world, seed=1)
    assert shared.phase == "Succeeded"
    assert_each_microtask_ends_once(shared)

    monkeypatch.setattr(window, "water_level", lambda draft, loads: None)
    queued = simulate(spec, world, seed=1)
    assert_each_microtask_ends_once(queued)
    assert shared.makespan < queued.makespan
