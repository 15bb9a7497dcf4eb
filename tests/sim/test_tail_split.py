"""Shards that hold up a job's end, split over the idle slots (core/splitting.py), in the
simulator: the example mixed job at a seed where a shard left alone would hold the end (seed 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from microtask_operator.core import splitting
from microtask_operator.simulator import load_cluster, simulate
from microtask_operator.simulator.jobfile import load_job

from .test_scenarios import assert_each_microtask_ends_once

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def test_the_split_ends_the_job_sooner_and_counts_each_microtask_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = load_job(EXAMPLES / "jobs" / "mixed.yaml").spec
    world = load_cluster(EXAMPLES / "mixed.yaml")
    splits: list[int] = []
    split = splitting.split

    def counted(*args: Any) -> None:
        splits.append(len(args[2]))  # the microtasks relaunched
        split(*args)

    monkeypatch.setattr(splitting, "split", counted)
    result = simulate(spec, world, seed=5)
    assert splits, "no shard was split at the end of this run"
    assert result.phase == "Succeeded"
    assert_each_microtask_ends_once(result)
    # Each microtask's attempts stay within maxAttempts: relaunches spend none.
    assert result.attempts <= spec.total * spec.retry.max_attempts

    monkeypatch.setattr(splitting, "split_tail", lambda draft: None)
    whole = simulate(spec, world, seed=5)
    assert_each_microtask_ends_once(whole)
    assert result.makespan < whole.makespan
