"""The one order in which every body applies a decision, and the words that cross into the core."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from core_driver import Driver
from microtask_operator.core.conditions import Phase
from microtask_operator.core.decision import (
    APPLY_ORDER,
    Decision,
    Deltas,
    Step,
    apply,
    apply_async,
)
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    CoreSpec,
    CreateShard,
    DeleteShard,
    Event,
    ObservedShard,
    PendingReason,
    Pool,
    ShardPhase,
    ShardPlan,
    SuspendShard,
)
from microtask_operator.local import executor
from microtask_operator.simulator import engine
from microtask_runner.indexset import IndexSet

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "microtask_operator"


def decision(state: CoreState | None = None) -> Decision:
    """A decision with one action of each kind: shard 2 created, 0 deleted, 1 suspended."""
    return Decision(
        creates=(CreateShard(ShardPlan(2, IndexSet.from_range(10, 15), 1, Pool.CPU)),),
        deletes=(DeleteShard(0, "harvested"),),
        suspends=(SuspendShard(1, True),),
        events=(Event("Rebalanced", "straggler: shard 1"),),
        state=state or CoreState(next_shard=3, phase=Phase.RUNNING),
        status={"phase": "Running"},
        deltas=Deltas(),
        phase=Phase.RUNNING,
        done=False,
        next_wakeup=None,
    )


class Recorder:
    """A body that only notes which step it was asked to do, with what."""

    def __init__(self) -> None:
        self.steps: list[tuple[Step, object]] = []

    def create(self, creates: tuple[CreateShard, ...]) -> None:
        self.steps.append((Step.CREATE, creates))

    def record(self, decision: Decision) -> None:
        self.steps.append((Step.RECORD, decision))

    def delete(self, deletes: tuple[DeleteShard, ...]) -> None:
        self.steps.append((Step.DELETE, deletes))

    def suspend(self, suspends: tuple[SuspendShard, ...]) -> None:
        self.steps.append((Step.SUSPEND, suspends))

    def emit(self, events: tuple[Event, ...]) -> None:
        self.steps.append((Step.EMIT, events))


class AsyncRecorder:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def create(self, creates: tuple[CreateShard, ...]) -> None:
        await asyncio.sleep(0)  # a step that yields must still finish before the next starts
        self.steps.append(Step.CREATE)

    async def record(self, decision: Decision) -> None:
        await asyncio.sleep(0)
        self.steps.append(Step.RECORD)

    async def delete(self, deletes: tuple[DeleteShard, ...]) -> None:
        self.steps.append(Step.DELETE)

    async def suspend(self, suspends: tuple[SuspendShard, ...]) -> None:
        self.steps.append(Step.SUSPEND)

    async def emit(self, events: tuple[Event, ...]) -> None:
        self.steps.append(Step.EMIT)


def test_the_order_is_creates_then_the_status_then_deletes_suspends_and_events() -> None:
    assert APPLY_ORDER == (Step.CREATE, Step.RECORD, Step.DELETE, Step.SUSPEND, Step.EMIT)
    assert set(APPLY_ORDER) == set(Step)


def test_apply_hands_each_step_its_share_in_the_order() -> None:
    made = decision()
    body = Recorder()
    apply(made, body)
    assert body.steps == [
        (Step.CREATE, made.creates),
        (Step.RECORD, made),
        (Step.DELETE, made.deletes),
        (Step.SUSPEND, made.suspends),
        (Step.EMIT, made.events),
    ]


def test_apply_async_awaits_each_step_in_the_same_order() -> None:
    body = AsyncRecorder()
    asyncio.run(apply_async(decision(), body))
    assert body.steps == list(APPLY_ORDER)


def test_a_failed_status_write_stops_what_follows_it() -> None:
    class Failing(Recorder):
        def record(self, decision: Decision) -> None:
            raise OSError("the status write failed")

    body = Failing()
    with pytest.raises(OSError):
        apply(decision(), body)
    assert [step for step, _ in body.steps] == [Step.CREATE]


def test_actions_lists_every_action_in_the_apply_order() -> None:
    made = decision()
    assert made.actions == [*made.creates, *made.deletes, *made.suspends, *made.events]


# -- each body follows it ----------------------------------------------------------------------


class FakeWorld:
    """What the simulator's body calls, noted in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.state = CoreState()

    def create(self, plan: ShardPlan) -> None:
        self.calls.append("create")

    def account(self, decision: Decision) -> None:
        assert self.state is decision.state, "the state is kept before the decision is counted"
        self.calls.append("record")

    def delete(self, action: DeleteShard) -> bool:
        self.calls.append("delete")
        return True

    def suspend(self, action: SuspendShard) -> bool:
        self.calls.append("suspend")
        return False


def test_the_simulator_applies_a_decision_in_the_core_order() -> None:
    world = FakeWorld()
    body = engine._Applied(world)  # type: ignore[arg-type]
    apply(decision(), body)
    assert world.calls == ["create", "record", "delete", "suspend"]
    assert body.changed


class FakeExecutor:
    """What the local executor's body calls, noted in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stop_requested = False

    def start(self, shard: ShardPlan, now: float) -> None:
        self.calls.append("create")

    def on_decision(self, decision: Decision) -> None:
        self.calls.append("record")

    def stop(self, shard_id: int) -> None:
        self.calls.append("delete")


def test_the_local_executor_applies_a_decision_in_the_core_order() -> None:
    fake = FakeExecutor()
    apply(decision(), executor._Applied(fake, 0.0))  # type: ignore[arg-type]
    assert fake.calls == ["create", "record", "delete"]
    # Asked to stop: nothing new starts, the rest goes on.
    fake.calls.clear()
    fake.stop_requested = True
    apply(decision(), executor._Applied(fake, 0.0))  # type: ignore[arg-type]
    assert fake.calls == ["record", "delete"]


def test_the_test_driver_applies_a_decision_in_the_core_order() -> None:
    d = Driver(CoreSpec(total=20, microtasks_per_shard=5, parallelism=2))
    for shard_id in (0, 1):
        d.shards[shard_id] = ObservedShard(
            shard_id, IndexSet.from_range(5 * shard_id, 5 * shard_id + 5), 1, Pool.CPU, 0.0,
            ShardPhase.RUNNING,
        )  # fmt: skip
    before = d.state
    # The status write is lost: the create before it happened, nothing after it did.
    d.apply(decision(), write_lost=True)
    assert [c.plan.shard_id for c in d.created] == [2]
    assert d.deleted == [] and not d.shards[1].suspended and d.events == []
    assert d.state is before
    d.shards.pop(2)
    d.created.clear()
    made = decision()
    d.apply(made)
    assert [c.plan.shard_id for c in d.created] == [2]
    assert d.state is made.state and [a.shard_id for a in d.deleted] == [0]
    assert d.shards[1].suspended and d.events == list(made.events)


def test_every_body_goes_through_the_shared_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator and the test driver apply real decisions with `apply`, step by step."""
    from microtask_operator.core import decision as decision_module
    from microtask_operator.simulator.cluster import parse_cluster
    from microtask_operator.simulator.engine import simulate

    seen: dict[str, list[Step]] = {}
    run_step = decision_module.run_step

    def spy(step: Step, made: Decision, body: Any) -> Any:
        seen.setdefault(type(body).__name__, []).append(step)
        return run_step(step, made, body)

    monkeypatch.setattr(decision_module, "run_step", spy)
    cluster = parse_cluster(
        {
            "kind": "SimulatedCluster",
            "name": "tiny",
            "workload": {"secondsPerMicrotask": {"gpu": 1.0, "cpu": 1.0}},
            "nodes": [{"name": "cpu", "count": 1, "pool": "cpu", "slots": 2}],
        }
    )
    simulate(CoreSpec(total=10, microtasks_per_shard=5, parallelism=2), cluster, seed=1)
    Driver(CoreSpec(total=10, microtasks_per_shard=5, parallelism=2)).run_to_end(lambda _i, _a: 0)
    assert set(seen) == {"_Applied", "Driver"}
    for steps in seen.values():
        assert len(steps) >= 2 * len(APPLY_ORDER)
        assert steps == list(APPLY_ORDER) * (len(steps) // len(APPLY_ORDER))


# -- phases and pending reasons ------------------------------------------------------------------


def test_a_decision_has_a_phase_and_its_status_the_plain_word() -> None:
    spec = CoreSpec(total=10, microtasks_per_shard=5, parallelism=2)
    made = plan(spec, CoreState(), [], Driver(spec).cluster, 0.0)
    assert made.phase is Phase.PENDING
    assert type(made.status["phase"]) is str and made.status["phase"] == "Pending"
    assert CoreState.from_status(made.status).phase is Phase.PENDING


def _pending_reason_literals(source: str) -> list[str]:
    """String literals given to, or compared with, a shard's pending reason in `source`."""

    def words(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Set | ast.Tuple | ast.List):
            return [w for element in node.elts for w in words(element)]
        if isinstance(node, ast.IfExp):
            return words(node.body) + words(node.orelse)
        if isinstance(node, ast.BoolOp):
            return [w for value in node.values for w in words(value)]
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in {"frozenset", "str"}:
            return [w for arg in node.args for w in words(arg)]  # frozenset({...}), str(x or "w")
        return []

    def about_reason(node: ast.AST) -> bool:
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
        return name in {"pending_reason", "QUEUED_REASONS"}

    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        given: list[ast.expr] = []
        if isinstance(node, ast.keyword) and node.arg == "pending_reason":
            given = [node.value]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(about_reason(target) for target in targets) and node.value is not None:
                given = [node.value]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            given = sides if any(about_reason(side) for side in sides) else []
        for value in given:
            found.extend(words(value))
    return found


def test_every_pending_reason_the_operator_uses_is_in_the_enum() -> None:
    known = {reason.value for reason in PendingReason}
    unknown = [
        (path.name, word)
        for path in sorted(OPERATOR.rglob("*.py"))
        for word in _pending_reason_literals(path.read_text())
        if word not in known
    ]
    assert unknown == []


def test_the_pending_reason_check_sees_literals() -> None:
    # The check above would pass vacuously if it missed the places it looks at.
    source = (
        'ObservedShard(pending_reason="Unschedulabel" if full else None)\n'
        'if s.pending_reason == "Queud": pass\n'
        'pending_reason = str(reason or "Pendng")\n'
        'QUEUED_REASONS = frozenset({"Suspendd", PendingReason.QUEUED})\n'
    )
    assert sorted(_pending_reason_literals(source)) == [
        "Pendng",
        "Queud",
        "Suspendd",
        "Unschedulabel",
    ]
