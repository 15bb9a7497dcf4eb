"""Property tests of the core's invariants over random stories of failures, losses and restarts."""

from __future__ import annotations

import json
from dataclasses import replace

from core_driver import Driver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_operator.core.types import (
    Accelerator,
    CoreSpec,
    RetryPolicy,
    ShardPhase,
    SpeculationPolicy,
)
from microtask_runner.indexset import IndexSet

specs = st.builds(
    lambda total, per, par, attempts, tolerated, nonretry, spec_on, auto: CoreSpec(
        total=total,
        microtasks_per_shard=per,
        parallelism=par,
        accelerator=Accelerator.AUTO if auto else Accelerator.CPU,
        fallback_after_seconds=5,
        retry=RetryPolicy(
            max_attempts=attempts,
            backoff_seconds=1,
            max_backoff_seconds=4,
            non_retryable_exit_codes=frozenset({2}) if nonretry else frozenset(),
            max_failed_microtasks=tolerated,
        ),
        speculation=SpeculationPolicy(enabled=spec_on, slowdown_factor=2, min_samples=1),
    ),
    st.integers(1, 300),
    st.integers(1, 40),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(0, 300),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@st.composite
def stories(draw: st.DrawFn) -> tuple[CoreSpec, int, list[str], bool]:
    spec = draw(specs)
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
        return 0

    return outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stories())
def test_every_microtask_ends_exactly_once_within_the_limits(
    story: tuple[CoreSpec, int, list[str], bool],
) -> None:
    spec, seed, events, restart = story
    outcome = outcome_for(seed)
    d = Driver(spec, restart_every_step=restart)
    decision = d.step()
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
        # Status stays small and JSON-clean at every step.
        assert len(json.dumps(decision.status)) < 20_000
        assert decision.status["succeeded"] >= succeeded_seen
        succeeded_seen = decision.status["succeeded"]
        assert d.max_in_flight <= spec.parallelism
        cap = max(1, int(spec.speculation.max_fraction * spec.parallelism))
        assert d.max_copies <= (cap if spec.speculation.enabled else 0)
    else:
        raise AssertionError("no end")

    universe = IndexSet.from_range(0, spec.total)
    state = decision.state
    assert not (state.succeeded & state.failed)
    if decision.phase == "Succeeded":
        assert state.succeeded | state.failed == universe
        assert len(state.failed) <= spec.retry.max_failed_microtasks
    else:
        assert decision.phase == "Failed"
        assert len(state.failed) > spec.retry.max_failed_microtasks
    # No microtask ran more attempts than allowed (copies repeat an attempt, never add one).
    for create in d.created:
        assert 1 <= create.plan.attempt <= spec.retry.max_attempts
    # Shard ids are never reused.
    ids = [c.plan.shard_id for c in d.created]
    assert len(ids) == len(set(ids))
    assert decision.status["succeeded"] == len(state.succeeded)


@settings(max_examples=40, deadline=None)
@given(specs, st.integers(0, 1000))
def test_restarting_at_every_step_reaches_the_same_outcome(spec: CoreSpec, seed: int) -> None:
    spec = replace(spec, speculation=SpeculationPolicy(enabled=False))
    outcome = outcome_for(seed)
    plain = Driver(spec).run_to_end(outcome)
    restarted = Driver(spec, restart_every_step=True).run_to_end(outcome)
    assert plain.phase == restarted.phase
    assert plain.state.succeeded == restarted.state.succeeded
    assert plain.state.failed == restarted.state.failed
    assert plain.state.attempts == restarted.state.attempts
