"""The local executor shows the core how far each running shard has got (its runner's report), so
speculation can tell a straggler by its pace before its expected end; without speculation it reads
no report for the core. Real processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.core.types import ObservedShard, ShardPhase, SpeculationPolicy
from microtask_operator.local import executor as executor_module
from test_local_fork import make_executor, make_job


def _observing(monkeypatch: pytest.MonkeyPatch) -> list[ObservedShard]:
    """Every running shard the executor shows the core, from here on."""
    seen: list[ObservedShard] = []
    real = executor_module.plan

    def plan(spec: Any, state: Any, observed: list[ObservedShard], *rest: Any) -> Any:
        seen.extend(shard for shard in observed if shard.phase == ShardPhase.RUNNING)
        return real(spec, state, observed, *rest)

    monkeypatch.setattr(executor_module, "plan", plan)
    return seen


def _job(tmp_path: Path, *, speculation: bool) -> Any:
    # Two shards of ten microtasks of 0.1 s, one at a time: each runs for a second.
    job = make_job(tmp_path, total=20, per_shard=10, workers=1, command="sleep 0.1")
    return replace(job, spec=replace(job.spec, speculation=SpeculationPolicy(enabled=speculation)))


def test_a_running_shard_shows_the_microtasks_it_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _observing(monkeypatch)
    result = make_executor(tmp_path, _job(tmp_path, speculation=True), workers=1).run()

    assert result.decision.status["phase"] == "Succeeded"
    midway = [s for s in seen if s.progress is not None and 0 < s.progress.done < 10]
    assert midway, [s.progress for s in seen]
    for shard in midway:
        assert shard.progress is not None and shard.progress.seconds > 0
    # Progress never goes back within a shard, and never past its size.
    for shard_id in {s.shard_id for s in seen}:
        done = [s.progress.done for s in seen if s.shard_id == shard_id and s.progress]
        assert done == sorted(done) and all(n <= 10 for n in done)


def test_without_speculation_no_progress_is_read_for_the_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _observing(monkeypatch)
    result = make_executor(tmp_path, _job(tmp_path, speculation=False), workers=1).run()

    assert result.decision.status["phase"] == "Succeeded"
    assert seen and all(s.progress is None for s in seen)
