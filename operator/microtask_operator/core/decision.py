"""What one `plan()` call decides, and the one order in which every body applies it.

A decision holds the shards to create, the status to record, the shards to delete and to
suspend (or resume), and the events to emit. Every body (operator, local executor, simulator,
the tests' driver) applies them in `APPLY_ORDER`: through `apply` (or `apply_async`) when its
steps are plain calls, or by walking `APPLY_ORDER` itself when a step does more (the operator
builds the Jobs before it creates any and re-plans when one is refused).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from .conditions import Phase
from .resources import ResourceSeconds
from .state import CoreState
from .types import Action, CreateShard, DeleteShard, Event, Pool, Reason, SuspendShard


class Step(StrEnum):
    """One kind of work a body does with a decision."""

    CREATE = "create"  # make the new shards (Jobs, processes, pods)
    RECORD = "record"  # write the status (and keep the state for the next decision)
    DELETE = "delete"  # remove shards that are done with
    SUSPEND = "suspend"  # suspend or resume shards
    EMIT = "emit"  # tell what happened (Kubernetes Events)


# Creates first: a shard created just before a crash is observed afterwards and recognised (its
# id is past the recorded next_shard), never duplicated. Then the status: a harvest is recorded
# (shard id retired, outcomes merged) before its Job goes away. Deletes and suspends only touch
# what the status no longer needs; events last, once what they tell was done.
APPLY_ORDER: tuple[Step, ...] = (
    Step.CREATE,
    Step.RECORD,
    Step.DELETE,
    Step.SUSPEND,
    Step.EMIT,
)


@dataclass
class Deltas:
    """What happened in one plan() call, for metrics and summaries."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    attempts: int = 0
    rebalances: dict[Reason, int] = field(default_factory=dict)
    shard_durations: list[tuple[Pool, float]] = field(default_factory=list)
    wasted_seconds: float = 0.0
    speculative_copies: int = 0
    succeeded_after_retry: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts by kind (its words)
    resources: ResourceSeconds = field(default_factory=ResourceSeconds)  # pod time spent


@dataclass
class Decision:
    creates: tuple[CreateShard, ...]
    deletes: tuple[DeleteShard, ...]
    suspends: tuple[SuspendShard, ...]
    events: tuple[Event, ...]
    state: CoreState
    status: dict[str, Any]
    deltas: Deltas
    phase: Phase
    done: bool
    next_wakeup: float | None
    in_flight: dict[Pool, int] = field(default_factory=dict)  # shards in flight per pool

    @property
    def actions(self) -> list[Action]:
        """Every action, in the order they are applied (the status write goes after creates)."""
        return [*self.creates, *self.deletes, *self.suspends, *self.events]


R_co = TypeVar("R_co", covariant=True)


class Body(Protocol[R_co]):
    """A body's five steps; `R_co` is what each returns (None, or an awaitable of None)."""

    def create(self, creates: tuple[CreateShard, ...]) -> R_co: ...
    def record(self, decision: Decision) -> R_co: ...
    def delete(self, deletes: tuple[DeleteShard, ...]) -> R_co: ...
    def suspend(self, suspends: tuple[SuspendShard, ...]) -> R_co: ...
    def emit(self, events: tuple[Event, ...]) -> R_co: ...


R = TypeVar("R")


def run_step(step: Step, decision: Decision, body: Body[R]) -> R:
    """The body's call for one step, with that step's share of the decision."""
    match step:
        case Step.CREATE:
            return body.create(decision.creates)
        case Step.RECORD:
            return body.record(decision)
        case Step.DELETE:
            return body.delete(decision.deletes)
        case Step.SUSPEND:
            return body.suspend(decision.suspends)
        case Step.EMIT:
            return body.emit(decision.events)


def apply(decision: Decision, body: Body[None]) -> None:
    """Carry the decision out, step by step in `APPLY_ORDER` (a step that raises stops it)."""
    for step in APPLY_ORDER:
        run_step(step, decision, body)


async def apply_async(decision: Decision, body: Body[Awaitable[None]]) -> None:
    """`apply` for a body whose steps are coroutines, each awaited before the next."""
    for step in APPLY_ORDER:
        await run_step(step, decision, body)
