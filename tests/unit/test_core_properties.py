"""Property tests of the core's invariants over random stories of failures, losses and restarts."""

from __future__ import annotations

import json
from dataclasses import replace

from core_driver import Driver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_operator.core import failures, retries
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    RetryPolicy,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet


@st.composite
def universes(draw: st.DrawFn, total: int) -> IndexSet | None:
    """None (0..total-1), or `total` indexes in runs of `block` separated by `gap`."""
    if not draw(st.booleans()):
        return None
    offset = draw(st.integers(0, 1000))
    block = draw(st.integers(1, 20))
    gap = draw(st.integers(0, 50))
    return IndexSet.from_indexes(offset + i + (i // block) * gap for i in range(total))


@st.composite
def specs(draw: st.DrawFn) -> CoreSpec:
    total = draw(st.integers(1, 300))
    return CoreSpec(
        total=total,
        microtasks_per_shard=draw(st.integers(1, 40)),
        parallelism=draw(st.integers(1, 8)),
        accelerator=Accelerator.AUTO if draw(st.booleans()) else Accelerator.CPU,
        fallback_after_seconds=5,
        retry=RetryPolicy(
            max_attempts=draw(st.integers(1, 4)),
            backoff_seconds=1,
            max_backoff_seconds=4,
            non_retryable_exit_codes=frozenset({2}) if draw(st.booleans()) else frozenset(),
            max_failed_microtasks=draw(st.integers(0, 300)),
            max_failed_fraction=draw(st.none() | st.floats(0, 1)),
            retry_command_not_found=draw(st.booleans()),
            in_pod=draw(st.booleans()),
        ),
        speculation=SpeculationPolicy(
            enabled=draw(st.booleans()), slowdown_factor=2, min_samples=1
        ),
        universe=draw(universes(total)),
        cpu_per_pod=draw(st.sampled_from([0.25, 1.0, 3.0])),
        gpus_per_pod=draw(st.integers(1, 4)),
    )


@st.composite
def stories(draw: st.DrawFn) -> tuple[CoreSpec, int, list[str], bool]:
    spec = draw(specs())
    seed = draw(st.integers(0, 2**32 - 1))
    events = draw(
        st.lists(st.sampled_from(["finish", "lose", "crash", "unschedulable", "idle"]), max_size=60)
    )
    restart = draw(st.booleans())
    return spec, seed, events, restart


def outcome_for(seed: int):  # type: ignore[no-untyped-def]
    def outcome(index: int, attempt: int) -> int:
        h = (index * 2654435761 + attempt * 40503 + seed) % 97
        if h < 10:
            return 1
        if h < 12:
            return 2
        if h < 13:
            return 127
        return 0

    return outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stories())
def test_every_microtask_ends_exactly_once_within_the_limits(
    story: tuple[CoreSpec, int, list[str], bool],
) -> None:
    spec, seed, events, restart = story
    outcome = outcome_for(seed)
    d = Driver(spec, restart_every_step=restart, pods_retry=True)
    decision = d.step()
    spent = decision.deltas.resources
    succeeded_seen = 0
    script = iter(events)
    for _ in range(2000):
        if decision.done:
            break
        event = next(script, "finish")
        running = d.running()
        if running:
            target = running[(seed + len(d.created)) % len(running)]
            if event == "finish":
                d.finish_all(outcome)
            elif event == "lose":
                d.set(target.shard_id, phase=ShardPhase.LOST, failure_reason="NodeLost")
            elif event == "crash":
                d.set(target.shard_id, phase=ShardPhase.FAILED, exit_code=137)
            elif event == "unschedulable":
                d.set(
                    target.shard_id,
                    phase=ShardPhase.PENDING,
                    pending_reason="Unschedulable",
                    pending_since=d.now,
                    started_at=None,
                )
        wait = 1.0
        if not d.running() and decision.next_wakeup is not None:
            wait = max(1.0, decision.next_wakeup - d.now)
        decision = d.step(wait)
        deltas = decision.deltas
        spent = spent + deltas.resources
        # Every failed attempt is counted once, by kind: retried or failed for good.
        assert sum(deltas.failures.values()) == deltas.failed + deltas.retried
        # Status stays small and JSON-clean at every step.
        assert len(json.dumps(decision.status)) < 20_000
        assert decision.status["succeeded"] >= succeeded_seen
        succeeded_seen = decision.status["succeeded"]
        assert d.max_in_flight <= spec.parallelism
        cap = max(1, int(spec.speculation.max_fraction * spec.parallelism))
        # At the tail, idle window slots may hold copies too (never more shards than slots).
        cap = max(cap, spec.parallelism - 1)
        assert d.max_copies <= (cap if spec.speculation.enabled else 0)
    else:
        raise AssertionError("no end")

    universe = spec.indexes()
    allowed = retries.allowed_failures(spec.retry, spec.total)
    state = decision.state
    assert not (state.succeeded & state.failed)
    if decision.phase == "Succeeded":
        assert state.succeeded | state.failed == universe
        assert len(state.failed) <= allowed
        assert state.not_run == 0
    else:
        assert decision.phase == "Failed"
        assert len(state.failed) > allowed
        assert state.not_run is not None
        assert 0 <= state.not_run <= spec.total - len(state.succeeded) - len(state.failed)
    # No microtask ran more attempts than allowed (copies repeat an attempt, never add one), and
    # none outside the universe ran at all.
    for create in d.created:
        assert 1 <= create.plan.attempt <= spec.retry.max_attempts
        assert create.plan.indexes <= universe
    # Counters: the summary is bounded and ordered, resources add up from the deltas.
    summary = state.failure_summary
    assert len(summary) <= failures.MAX_KINDS
    assert [e.attempts for e in summary] == sorted((e.attempts for e in summary), reverse=True)
    assert all(e.attempts >= e.microtasks >= 0 for e in summary)
    assert state.succeeded_after_retry <= len(state.succeeded)
    used = state.resources
    assert used.wasted_cpu <= used.cpu + 1e-6 and used.wasted_gpu <= used.gpu + 1e-6
    slack = 0.001 * (len(d.created) + 2) if restart else 1e-6
    for mine, theirs in ((spent.cpu, used.cpu), (spent.wasted_gpu, used.wasted_gpu)):
        assert abs(mine - theirs) <= slack
    # Shard ids are never reused.
    ids = [c.plan.shard_id for c in d.created]
    assert len(ids) == len(set(ids))
    assert decision.status["succeeded"] == len(state.succeeded)


@settings(max_examples=40, deadline=None)
@given(specs(), st.integers(0, 1000))
def test_restarting_at_every_step_reaches_the_same_outcome(spec: CoreSpec, seed: int) -> None:
    spec = replace(spec, speculation=SpeculationPolicy(enabled=False))
    outcome = outcome_for(seed)
    plain = Driver(spec, pods_retry=True).run_to_end(outcome)
    restarted = Driver(spec, restart_every_step=True, pods_retry=True).run_to_end(outcome)
    assert plain.phase == restarted.phase
    assert plain.state.succeeded == restarted.state.succeeded
    assert plain.state.failed == restarted.state.failed
    assert plain.state.attempts == restarted.state.attempts
    assert plain.state.failure_summary == restarted.state.failure_summary
    assert plain.state.succeeded_after_retry == restarted.state.succeeded_after_retry
    assert plain.state.not_run == restarted.state.not_run
    assert plain.status["resources"] == restarted.status["resources"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs(),
    st.integers(0, 2**32 - 1),
    st.lists(st.sampled_from(["finish", "lose", "crash", "unschedulable", "idle"]), max_size=60),
    st.lists(st.booleans(), max_size=40),
    st.booleans(),
)
def test_attempts_count_the_runs_that_happened_whatever_writes_are_lost(
    spec: CoreSpec, seed: int, events: list[str], lost_writes: list[bool], restart: bool
) -> None:
    """Pods lost or killed mid-shard, status writes lost after their creates: `attempts` is
    always the number of runs the pods did (plus the launches of running shards cancelled)."""
    spec = replace(spec, speculation=SpeculationPolicy(enabled=False))
    outcome = outcome_for(seed)
    d = Driver(
        spec,
        restart_every_step=restart,
        write_lost=lambda step: step < len(lost_writes) and lost_writes[step],
        pods_retry=True,
    )
    decision = d.step()
    script = iter(events)
    for n in range(2000):
        if decision.done:
            break
        event = next(script, "finish")
        running = [s for s in d.running() if s.phase == ShardPhase.RUNNING]
        if running:
            target = running[(seed + n) % len(running)]
            done = (seed + n) % (len(target.indexes) + 1)
            if event == "finish":
                d.finish_all(outcome)
            elif event == "lose":
                d.interrupt(target.shard_id, done, phase=ShardPhase.LOST, failure_reason="NodeLost")
            elif event == "crash":
                d.interrupt(
                    target.shard_id,
                    done,
                    phase=ShardPhase.FAILED,
                    exit_code=137,
                    failure_reason="OOMKilled",
                )
            elif event == "unschedulable":
                d.set(
                    target.shard_id,
                    phase=ShardPhase.PENDING,
                    pending_reason="Unschedulable",
                    pending_since=d.now,
                    started_at=None,
                )
        elif event == "finish":
            d.finish_all(outcome)
        wait = 1.0
        if not d.running() and decision.next_wakeup is not None:
            wait = max(1.0, decision.next_wakeup - d.now)
        decision = d.step(wait)
    else:
        raise AssertionError("no end")
    state = decision.state
    assert state.attempts == d.executions + d.cancelled_running
    assert not (state.succeeded & state.failed)
    if decision.phase == "Succeeded":
        assert state.succeeded | state.failed == spec.indexes()
    for create in d.created:
        assert 1 <= create.plan.attempt <= spec.retry.max_attempts
