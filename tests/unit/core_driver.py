"""A minimal body for core tests: keeps shards as the core asks, finishes them on command.

It plays the part the operator, the local executor and the simulator play for real, with no clock
and no processes, so table and property tests can walk the core through any story.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from microtask_operator.core import retries
from microtask_operator.core.decision import apply
from microtask_operator.core.planner import Decision, plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteReason,
    DeleteShard,
    Event,
    ObservedShard,
    Pool,
    RetryPolicy,
    ShardPhase,
    SuspendShard,
)
from microtask_runner.contract import retries_in_pod
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

# outcome(index, attempt) -> exit code (0 = success)
Outcome = Callable[[int, int], int]
# Deletes that cancel a shard, whatever it was doing (the job ended).
CANCELS = frozenset(
    {
        DeleteReason.FINISHED,
        DeleteReason.TOO_MANY_FAILURES,
        DeleteReason.DEADLINE,
        DeleteReason.REFUSED,
    }
)


class WriteLost(Exception):
    """The status write failed: the steps after it do not happen."""


CLUSTER = ClusterView(
    ready_nodes={
        Pool.CPU: frozenset({"cpu-0", "cpu-1", "cpu-2", "cpu-3"}),
        Pool.GPU: frozenset({"gpu-0", "gpu-1"}),
    }
)


def report_for(
    indexes: IndexSet,
    attempt: int,
    outcome: Outcome,
    seconds: float = 1.0,
    errors: Mapping[int, str] | None = None,
    in_pod: RetryPolicy | None = None,
) -> Report:
    """What a runner reports; with `in_pod`, its own retries as the runner makes them."""
    codes = {i: outcome(i, attempt) for i in indexes}
    retried: dict[int, list[int]] = {}
    failures = sum(1 for code in codes.values() if code)
    if (
        in_pod is not None
        and retries.in_pod_delay(in_pod, attempt) is not None
        and retries_in_pod(len(codes) - failures, failures)
    ):
        skip = retries.no_retry_codes(in_pod)
        for i, code in list(codes.items()):
            if code and code not in skip:
                assert attempt + 1 <= in_pod.max_attempts
                retried.setdefault(code, []).append(i)
                codes[i] = outcome(i, attempt + 1)
    ok = [i for i, code in codes.items() if code == 0]
    failed: dict[int, list[int]] = {}
    for i, code in codes.items():
        if code:
            failed.setdefault(code, []).append(i)
    return Report(
        succeeded=IndexSet.from_indexes(ok),
        failed={c: IndexSet.from_indexes(v) for c, v in failed.items()},
        errors={c: (errors or {}).get(c, f"exit {c}") for c in {*failed, *retried}},
        seconds_total=seconds * len(indexes),
        seconds_max=seconds,
        count=len(indexes),
        retried={c: IndexSet.from_indexes(v) for c, v in sorted(retried.items())},
    )


@dataclass
class Driver:
    spec: CoreSpec
    cluster: ClusterView = CLUSTER
    state: CoreState = field(default_factory=CoreState.initial)
    shards: dict[int, ObservedShard] = field(default_factory=dict)
    now: float = 1000.0
    created: list[CreateShard] = field(default_factory=list)
    deleted: list[DeleteShard] = field(default_factory=list)
    max_in_flight: int = 0  # window slots: a shard and its copies take one
    max_copies: int = 0
    last: Decision | None = None
    restart_every_step: bool = False
    errors: dict[int, str] = field(default_factory=dict)  # exit code -> error text in reports
    # Given a step's number, whether its status write fails: its creates happened (they come
    # first), its deletes and suspends did not (they come after), and the old state stays.
    write_lost: Callable[[int], bool] | None = None
    steps: int = 0
    # Runs of microtasks as the pods did them (speculative copies aside): the truth that
    # `status.attempts` must tell, with the launches of running shards cancelled at the end.
    executions: int = 0
    cancelled_running: int = 0
    events: list[Event] = field(default_factory=list)  # every event emitted, in order
    losing: bool = False  # the status write of the decision being applied fails
    # Pods retry their failed microtasks themselves, as the runner does when the spec says so.
    pods_retry: bool = False

    def step(self, dt: float = 0.0) -> Decision:
        self.now += dt
        self.steps += 1
        state = self.state
        if self.restart_every_step:
            # A restarted body only has what the status holds.
            state = CoreState.from_status(state.to_status())
        decision = plan(self.spec, state, list(self.shards.values()), self.cluster, self.now)
        lost = self.write_lost is not None and not decision.done and self.write_lost(self.steps)
        self.apply(decision, write_lost=lost)
        return decision

    def apply(self, decision: Decision, *, write_lost: bool = False) -> None:
        """Carry the decision out in the core's order (`write_lost`: its status write fails)."""
        self.losing = write_lost
        try:
            apply(decision, self)
        except WriteLost:
            pass  # what comes after the status write did not happen
        finally:
            self.losing = False
        live = [s for s in self.shards.values() if s.shard_id not in self.state.retired]
        groups = {s.copy_of if s.copy_of is not None else s.shard_id for s in live}
        self.max_in_flight = max(self.max_in_flight, len(groups))
        self.max_copies = max(self.max_copies, len(live) - len(groups))

    # -- the body's steps (core.decision.Body) ---------------------------------------------

    def create(self, creates: tuple[CreateShard, ...]) -> None:
        for action in creates:
            p = action.plan
            assert p.shard_id not in self.shards, f"duplicate shard {p.shard_id}"
            self.created.append(action)
            node = self.pick_node(p.pool, p.avoid_nodes_hard)
            self.shards[p.shard_id] = replace(
                p.as_pending(self.now), phase=ShardPhase.RUNNING, node=node, started_at=self.now
            )

    def record(self, decision: Decision) -> None:
        if self.losing:
            raise WriteLost
        self.state = decision.state
        self.last = decision

    def delete(self, deletes: tuple[DeleteShard, ...]) -> None:
        for action in deletes:
            self.deleted.append(action)
            gone = self.shards.pop(action.shard_id, None)
            if (
                gone is not None
                and gone.phase == ShardPhase.RUNNING
                and gone.copy_of is None
                and action.reason in CANCELS
            ):
                self.cancelled_running += len(gone.indexes)

    def suspend(self, suspends: tuple[SuspendShard, ...]) -> None:
        for action in suspends:
            shard = self.shards[action.shard_id]
            self.shards[action.shard_id] = replace(shard, suspended=action.suspend)

    def emit(self, events: tuple[Event, ...]) -> None:
        self.events.extend(events)

    def pick_node(self, pool: Pool, avoid: Iterable[str]) -> str:
        nodes = sorted(self.cluster.ready_nodes.get(pool, frozenset()) - set(avoid))
        return nodes[len(self.created) % len(nodes)] if nodes else "nowhere"

    def running(self) -> list[ObservedShard]:
        """Live shards that have not ended: running, or pending a node."""
        return [
            s
            for s in self.shards.values()
            if s.phase in (ShardPhase.RUNNING, ShardPhase.PENDING)
            and s.shard_id not in self.state.retired
        ]

    def finish(self, shard_id: int, outcome: Outcome, seconds: float = 1.0) -> None:
        s = self.shards[shard_id]
        policy = self.spec.retry if self.pods_retry else None
        report = report_for(s.indexes, s.attempt, outcome, seconds, self.errors, policy)
        if s.copy_of is None:
            self.executions += len(s.indexes) + len(report.retried_indexes())
        self.shards[shard_id] = replace(
            s, phase=ShardPhase.SUCCEEDED, finished_at=self.now, report=report, exit_code=0
        )

    def interrupt(self, shard_id: int, done: int, **changes: object) -> None:
        """The running shard's pod ends after `done` microtasks, during the next one.

        Its report says the first `done` succeeded and names the next as current; `changes` say
        how it ended (phase LOST or FAILED, a failure reason, an exit code).
        """
        s = self.shards[shard_id]
        ran, rest = s.indexes.take(done)
        current = rest.first()
        if s.copy_of is None:
            self.executions += len(ran) + (1 if current is not None else 0)
        report = Report(succeeded=ran, current=current, count=len(ran), seconds_total=len(ran))
        self.set(shard_id, report=report, finished_at=self.now, **changes)

    def set(self, shard_id: int, **changes: object) -> None:
        self.shards[shard_id] = replace(self.shards[shard_id], **changes)  # type: ignore[arg-type]

    def finish_all(self, outcome: Outcome, seconds: float = 1.0) -> None:
        """Every live shard ends now; pending ones are scheduled first (capacity came back)."""
        for shard in self.running():
            if shard.started_at is None:
                self.set(shard.shard_id, started_at=self.now, node=self.pick_node(shard.pool, ()))
            self.finish(shard.shard_id, outcome, seconds)

    def run_to_end(self, outcome: Outcome, max_steps: int = 10_000, dt: float = 1.0) -> Decision:
        decision = self.step()
        for _ in range(max_steps):
            if decision.done:
                return decision
            self.finish_all(outcome)
            wait = dt
            if not self.running() and decision.next_wakeup is not None:
                wait = max(dt, decision.next_wakeup - self.now)
            decision = self.step(wait)
        raise AssertionError("the job did not finish")


def ok(_index: int, _attempt: int) -> int:
    return 0


# Small fixtures the core's table tests share.
TWO_CPU_ONE_GPU = ClusterView(
    ready_nodes={Pool.CPU: frozenset({"a", "b"}), Pool.GPU: frozenset({"g"})}
)
TEN = IndexSet.from_range(0, 10)


def creates(actions: Iterable[object]) -> list[CreateShard]:
    """The CreateShard actions among `actions`."""
    return [a for a in actions if isinstance(a, CreateShard)]
