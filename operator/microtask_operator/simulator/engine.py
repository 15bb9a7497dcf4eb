"""The discrete-event simulator that drives the real core, as the operator and local executor do.

A heap of timed events (a shard pod ends, a node goes NotReady, a node is deleted, the core asked
to be woken) moves a simulated clock; nothing reads the wall clock, and every random draw comes
from streams seeded by `seed`, so a run is a pure function of its inputs.

After each batch of simultaneous events the core's `plan()` is called with what a body would
observe (every shard pod that still exists with its runner's progress, the Ready nodes per
pool), and its actions are applied
in the core's order (`core.decision.apply`), as every body applies them: a CreateShard becomes
a pod that the simulated scheduler places (or leaves Pending/Unschedulable), a DeleteShard kills
the pod. `plan()` is then called again at
the same instant until it has nothing more to do, since a real body would be called back by the
changes its own actions cause.

The simulator also checks the core from the outside: a microtask counted twice, a shard id
reused, a job declared finished with work outstanding... are recorded as anomalies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from ..core import retries
from ..core.decision import Decision, apply
from ..core.state import CoreState
from ..core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteReason,
    DeleteShard,
    Event,
    ObservedShard,
    PendingReason,
    Pool,
    Progress,
    ShardPhase,
    ShardPlan,
    SuspendShard,
)
from .bounds import lower_bound
from .cluster import ClusterSpec
from .events import FIRST_OWN_KIND, NODE_DELETED, NODE_LOST, POD_END, EventLoop, Stop
from .policies import apply_policies
from .result import Policies, SimulationError, SimulationResult
from .world import Execution, Nodes, SimNode, WorkModel

# 2026-01-01T00:00:00Z: a realistic epoch, so the core's times and status look like a cluster's.
START_TIME = 1_767_225_600.0
# plan() calls at one instant before the core is declared unable to settle.
MAX_ROUNDS_PER_INSTANT = 25
# A wakeup the core asks for in the past is served this much later (a body's timer would be late).
LATE_WAKEUP_SECONDS = 0.001
MAX_ANOMALIES = 20

_POD_END, _NODE_LOST, _NODE_DELETED = POD_END, NODE_LOST, NODE_DELETED
_WAKEUP = FIRST_OWN_KIND


Planner = Callable[[CoreSpec, CoreState, Sequence[ObservedShard], ClusterView, float], Decision]


def default_planner() -> Planner:
    from ..core.planner import plan

    return plan


@dataclass(eq=False)
class _Pod:
    """A shard pod in the simulated cluster (it exists until the core deletes its shard)."""

    plan: ShardPlan
    created_at: float
    phase: ShardPhase = ShardPhase.PENDING
    node: SimNode | None = None
    started_at: float | None = None
    finished_at: float | None = None
    execution: Execution | None = None
    report: Report | None = None
    node_lost_since: float | None = None
    suspended: bool = False
    token: int = 0  # bumped whenever a scheduled end event no longer applies
    observed: ObservedShard | None = None  # cached until the pod changes

    def changed(self) -> None:
        self.observed = None


class CoreSimulation(EventLoop):
    """One run of one job on one cluster, driving `planner` (the real core by default)."""

    def __init__(
        self,
        spec: CoreSpec,
        cluster: ClusterSpec,
        *,
        seed: int = 0,
        policies: Policies | None = None,
        planner: Planner | None = None,
        start_time: float = START_TIME,
    ) -> None:
        self.policies = policies or Policies()
        self.spec = apply_policies(spec, self.policies)
        # The bound is the job's as written: every policy row is measured against the same one.
        self.written_spec = spec
        self.cluster = cluster
        self.seed = seed
        self.planner = planner or default_planner()
        super().__init__(start_time)
        self.nodes = Nodes(cluster)
        self.work = WorkModel(spec.total, cluster.workload, seed)
        self.state = CoreState.initial()
        self.pods: dict[int, _Pod] = {}  # by shard id, in creation order
        self.pending: dict[Pool, dict[int, _Pod]] = {pool: {} for pool in Pool}
        self.on_node: dict[str, set[int]] = {node.name: set() for node in self.nodes.all}
        self.created_ids: set[int] = set()
        self.view = self.cluster_view()
        self.wakeups: set[float] = set()
        self.anomalies: list[str] = []
        # Measurements.
        self.attempt_ranges: dict[int, list[tuple[int, int]]] = {}
        self.executions = 0
        self.speculative_copies = 0
        self.rebalanced: dict[str, int] = {}
        self.counted_succeeded = 0
        self.counted_failed = 0
        self.wasted = 0.0
        self.busy: dict[str, float] = {pool.value: 0.0 for pool in Pool}
        self.completed_by_pool: dict[str, int] = {pool.value: 0 for pool in Pool}
        self.reported_succeeded: list[tuple[int, int]] = []
        self.excluded: dict[str, str] = {}  # node -> strongest exclusion level seen
        self.levels: dict[str, str] = {}  # node -> its exclusion level in the latest state
        self.exclusion_changes = 0  # times a node's level became soft or hard (seen in state)
        self.plan_calls = 0

    # -- events ---------------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        self.push_node_losses(self.cluster, self.nodes)
        deadline = self.start + self.cluster.max_simulated_seconds
        decision = self.settle()
        message = ""
        while not decision.done:
            self.ask_wakeup(decision.next_wakeup)
            stop = self.advance(deadline)
            if stop is Stop.NOTHING_LEFT:
                message = (
                    f"stuck at t={self.now - self.start:.1f}s: nothing left to happen but the job "
                    f"is {decision.phase} ({self.outstanding()} microtasks outstanding)"
                )
                break
            if stop is Stop.DEADLINE:
                message = (
                    f"gave up after {self.cluster.max_simulated_seconds:.0f} simulated seconds "
                    f"(limits.maxSimulatedSeconds) with {self.outstanding()} microtasks outstanding"
                )
                break
            self.schedule()
            decision = self.settle()
        return self.result(decision, message)

    def handle(self, kind: int, ref: int, token: int) -> None:
        if kind == _POD_END:
            pod = self.pods.get(ref)
            if pod is not None and pod.token == token:
                self.end_pod(pod)
        elif kind == _NODE_LOST:
            self.lose_node(self.nodes.all[ref])
        elif kind == _NODE_DELETED:
            self.delete_node(self.nodes.all[ref])
        else:  # _WAKEUP: nothing to change, the plan() call that follows is the point
            self.wakeups.discard(self.now)

    def ask_wakeup(self, at: float | None) -> None:
        if at is None:
            return
        if at <= self.now:
            self.anomaly(
                f"t={self.now - self.start:.3f}s: plan() settled but asked to be woken at "
                f"t={at - self.start:.3f}s, not in the future"
            )
            at = self.now + LATE_WAKEUP_SECONDS
        if at not in self.wakeups:
            self.wakeups.add(at)
            self.push(at, _WAKEUP)

    # -- the core -------------------------------------------------------------------------------

    def observed(self) -> list[ObservedShard]:
        result = []
        for pod in self.pods.values():
            if pod.observed is None:
                pod.observed = self.observe(pod)
            observed = pod.observed
            if pod.phase is ShardPhase.RUNNING and pod.execution is not None:
                observed = replace(observed, progress=self.progress(pod))
            result.append(observed)
        return result

    def progress(self, pod: _Pod) -> Progress:
        """A running pod's progress, as the runner's progress shows it (none past a lost node)."""
        assert pod.execution is not None and pod.node is not None and pod.started_at is not None
        until = self.now if pod.node_lost_since is None else pod.node_lost_since
        elapsed = until - pod.started_at
        done = self.work.progress(pod.plan.indexes, pod.node, pod.execution, elapsed)
        return Progress(done, max(0.0, elapsed - self.cluster.workload.pod_startup_seconds))

    def observe(self, pod: _Pod) -> ObservedShard:
        plan = pod.plan
        pending = pod.phase is ShardPhase.PENDING
        execution = pod.execution if pod.finished_at is not None else None
        failure_reason = execution.failure_reason if execution else None
        if pod.phase is ShardPhase.LOST:
            failure_reason = "NodeLost"
        return ObservedShard(
            shard_id=plan.shard_id,
            indexes=plan.indexes,
            attempt=plan.attempt,
            pool=plan.pool,
            created_at=pod.created_at,
            phase=pod.phase,
            copy_of=plan.copy_of,
            node=pod.node.name if pod.node else None,
            started_at=pod.started_at,
            finished_at=pod.finished_at,
            pending_reason=(
                (PendingReason.SUSPENDED if pod.suspended else PendingReason.UNSCHEDULABLE)
                if pending
                else None
            ),
            pending_since=pod.created_at if pending else None,
            node_lost_since=pod.node_lost_since,
            report=pod.report,
            exit_code=execution.exit_code if execution else None,
            failure_reason=failure_reason,
            suspended=pod.suspended,
            avoid_nodes_hard=plan.avoid_nodes_hard,
        )

    def settle(self) -> Decision:
        """plan() until the core has nothing more to do at this instant."""
        for _ in range(MAX_ROUNDS_PER_INSTANT):
            self.plan_calls += 1
            decision = self.planner(self.spec, self.state, self.observed(), self.view, self.now)
            body = _Applied(self)
            apply(decision, body)
            if not body.changed:
                return decision
            self.schedule()
        raise SimulationError(
            f"t={self.now - self.start:.3f}s: the core kept acting after "
            f"{MAX_ROUNDS_PER_INSTANT} plan() calls at the same instant with no new observation"
        )

    def account(self, decision: Decision) -> None:
        deltas = decision.deltas
        self.counted_succeeded += deltas.succeeded
        self.counted_failed += deltas.failed
        self.speculative_copies += deltas.speculative_copies
        for reason, count in deltas.rebalances.items():
            if count:
                key = str(reason)
                self.rebalanced[key] = self.rebalanced.get(key, 0) + count
        levels = {n: r.level for n, r in decision.state.nodes.items() if r.level is not None}
        for name, level in levels.items():
            if self.levels.get(name) != level:
                self.exclusion_changes += 1
            if self.excluded.get(name) != "hard":
                self.excluded[name] = level
        self.levels = levels

    def create(self, plan: ShardPlan) -> None:
        if plan.shard_id in self.created_ids:
            self.anomaly(f"t={self.now - self.start:.3f}s: shard {plan.shard_id} created twice")
            if plan.shard_id in self.pods:
                return
        self.created_ids.add(plan.shard_id)
        pod = _Pod(plan=plan, created_at=self.now)
        self.pods[plan.shard_id] = pod
        self.pending[plan.pool][plan.shard_id] = pod
        self.attempt_ranges.setdefault(plan.attempt, []).extend(plan.indexes.ranges)

    def delete(self, action: DeleteShard) -> bool:
        pod = self.pods.pop(action.shard_id, None)
        if pod is None:
            self.anomaly(
                f"t={self.now - self.start:.3f}s: delete of shard {action.shard_id} "
                f"({action.reason}) that does not exist"
            )
            return False
        if pod.phase is ShardPhase.PENDING:
            self.pending[pod.plan.pool].pop(action.shard_id, None)
        elif pod.phase is ShardPhase.RUNNING:
            # Killed while running: everything it did is thrown away.
            self.wasted += self.stop_pod(pod)
        elif (
            action.reason == DeleteReason.SPECULATION_LOSER
            and pod.phase is not ShardPhase.LOST
            and pod.execution is not None
        ):
            # Finished, but its twin finished first: its results are not used. (Other deletes
            # of finished shards come after their harvest, or of Jobs kept for debugging.)
            self.wasted += pod.execution.useful_seconds
        return True

    def suspend(self, action: SuspendShard) -> bool:
        pod = self.pods.get(action.shard_id)
        if pod is None or pod.suspended == action.suspend:
            return False
        if pod.phase is ShardPhase.RUNNING and action.suspend:
            # Suspending a Job deletes its pod; the Job starts a new one when resumed.
            self.wasted += self.stop_pod(pod)
            pod.phase = ShardPhase.PENDING
            pod.node = None
            pod.started_at = None
            pod.node_lost_since = None
            pod.execution = None
            self.pending[pod.plan.pool][pod.plan.shard_id] = pod
        pod.suspended = action.suspend
        pod.changed()
        return True

    # -- the simulated cluster --------------------------------------------------------------------

    def schedule(self) -> None:
        """Place pending pods (oldest first) on free slots, as the scheduler would."""
        for pool, queue in self.pending.items():
            if not queue or self.nodes.free[pool] <= 0:
                continue
            placed = []
            for shard_id, pod in queue.items():
                if self.nodes.free[pool] <= 0:
                    break
                if pod.suspended:
                    continue
                node = self.nodes.place(pool, pod.plan.avoid_nodes_hard, pod.plan.avoid_nodes_soft)
                if node is not None:
                    self.start_pod(pod, node)
                    placed.append(shard_id)
            for shard_id in placed:
                del queue[shard_id]

    def start_pod(self, pod: _Pod, node: SimNode) -> None:
        # Runs are counted when they start: a copy that waited for a slot and was deleted
        # unplaced ran nothing.
        self.executions += len(pod.plan.indexes)
        policy = self.spec.retry
        execution = self.work.execute(
            pod.plan.indexes,
            node,
            retries.in_pod_delay(policy, pod.plan.attempt),
            retries.no_retry_codes(policy),
        )
        pod.node = node
        pod.phase = ShardPhase.RUNNING
        pod.started_at = self.now
        pod.execution = execution
        pod.token += 1
        pod.changed()
        self.on_node[node.name].add(pod.plan.shard_id)
        self.push(self.now + execution.duration, _POD_END, pod.plan.shard_id, pod.token)

    def end_pod(self, pod: _Pod) -> None:
        execution = pod.execution
        assert execution is not None and pod.node is not None and pod.started_at is not None
        self.busy[pod.node.pool.value] += self.now - pod.started_at
        self.nodes.release(pod.node)
        self.on_node[pod.node.name].discard(pod.plan.shard_id)
        pod.phase = execution.phase
        pod.finished_at = self.now
        # Through the wire format, as the operator reads a termination message.
        pod.report = Report.decode(execution.report.encode())
        # The pod's own retries: its microtasks' next attempt, run where they were.
        twice = pod.report.retried_indexes()
        self.executions += len(twice)
        self.attempt_ranges.setdefault(pod.plan.attempt + 1, []).extend(twice.ranges)
        pod.changed()
        self.reported_succeeded.extend(pod.report.succeeded.ranges)
        self.completed_by_pool[pod.node.pool.value] += len(pod.report.succeeded)

    def stop_pod(self, pod: _Pod) -> float:
        """Kill a running pod; returns the run time it had accumulated (work now lost)."""
        pod.token += 1
        node = pod.node
        assert node is not None and pod.started_at is not None
        # A pod on a lost node stopped making progress when the node went away.
        stopped = pod.node_lost_since if pod.node_lost_since is not None else self.now
        ran = max(0.0, stopped - pod.started_at)
        self.busy[node.pool.value] += ran
        if not node.deleted:
            self.nodes.release(node)
        self.on_node[node.name].discard(pod.plan.shard_id)
        return ran

    def cluster_view(self) -> ClusterView:
        return ClusterView(ready_nodes=self.nodes.ready_names(), slots=self.nodes.ready_slots())

    def lose_node(self, node: SimNode) -> None:
        self.nodes.lose(node)
        self.view = self.cluster_view()
        for shard_id in self.on_node[node.name]:
            pod = self.pods[shard_id]
            pod.node_lost_since = self.now
            pod.token += 1  # a dead node finishes nothing
            pod.changed()

    def delete_node(self, node: SimNode) -> None:
        self.nodes.lose(node)
        node.deleted = True
        self.view = self.cluster_view()
        for shard_id in sorted(self.on_node[node.name]):
            pod = self.pods[shard_id]
            assert pod.started_at is not None
            # The pod object goes with its node: the body observes the shard as lost.
            lost_at = pod.node_lost_since if pod.node_lost_since is not None else self.now
            self.busy[node.pool.value] += max(0.0, lost_at - pod.started_at)
            self.wasted += max(0.0, lost_at - pod.started_at)
            node.used -= 1
            pod.phase = ShardPhase.LOST
            pod.finished_at = self.now
            pod.node_lost_since = lost_at
            pod.token += 1
            pod.changed()
        self.on_node[node.name].clear()

    # -- results --------------------------------------------------------------------------------

    def anomaly(self, text: str) -> None:
        if len(self.anomalies) < MAX_ANOMALIES:
            self.anomalies.append(text)

    def outstanding(self) -> int:
        return self.spec.total - len(self.state.succeeded) - len(self.state.failed)

    def result(self, decision: Decision, message: str) -> SimulationResult:
        state = self.state
        everything = IndexSet.from_range(0, self.spec.total)
        if state.succeeded & state.failed:
            both = state.succeeded & state.failed
            self.anomaly(f"microtasks both succeeded and failed: {both.format_bounded(200)}")
        if decision.done and decision.phase == "Succeeded":
            # (A Failed job stops early on purpose: unfinished microtasks are expected then.)
            missing = everything - state.succeeded - state.failed
            if missing:
                self.anomaly(
                    f"job {decision.phase} with microtasks never finished: "
                    f"{missing.format_bounded(200)}"
                )
        if decision.done:
            running = [p.plan.shard_id for p in self.pods.values() if p.phase is ShardPhase.RUNNING]
            if running:
                self.anomaly(f"job {decision.phase} with shards still running: {running[:10]}")
        if self.counted_succeeded != len(state.succeeded):
            self.anomaly(
                f"succeeded deltas add up to {self.counted_succeeded}, "
                f"but {len(state.succeeded)} microtasks succeeded"
            )
        if self.counted_failed != len(state.failed):
            self.anomaly(
                f"failed deltas add up to {self.counted_failed}, "
                f"but {len(state.failed)} microtasks failed"
            )
        unreported = state.succeeded - IndexSet.from_ranges(self.reported_succeeded)
        if unreported:
            self.anomaly(
                f"counted as succeeded without a report saying so: {unreported.format_bounded(200)}"
            )
        attempts = sum(len(IndexSet.from_ranges(r)) for r in self.attempt_ranges.values())
        status = dict(decision.status)
        bound = lower_bound(
            self.written_spec, self.cluster, self.work.total_size(), self.work.max_size()
        )
        notes = [message] if message else []
        notes.extend(f"anomaly: {text}" for text in self.anomalies)
        return SimulationResult(
            mode="core",
            cluster=self.cluster.name,
            seed=self.seed,
            total=self.spec.total,
            policies=self.policies,
            phase=decision.phase,
            finished=decision.done,
            makespan=self.now - self.start,
            lower_bound=bound,
            succeeded=state.succeeded,
            failed=state.failed,
            attempts=attempts,
            executions=self.executions,
            speculative_copies=self.speculative_copies,
            rebalanced=dict(sorted(self.rebalanced.items())),
            wasted_seconds=self.wasted,
            busy_seconds=self.busy,
            completed_by_pool=self.completed_by_pool,
            excluded_nodes=[
                {"node": name, "level": level} for name, level in sorted(self.excluded.items())
            ],
            shards=len(self.created_ids),
            plan_calls=self.plan_calls,
            counted_succeeded=self.counted_succeeded,
            counted_failed=self.counted_failed,
            exclusion_changes=self.exclusion_changes,
            anomalies=list(self.anomalies),
            message="; ".join(notes),
            status=status,
        )


class _Applied:
    """The simulated world as the body a decision is applied to, in the core's order."""

    def __init__(self, sim: CoreSimulation) -> None:
        self.sim = sim
        self.changed = False  # the simulated world changed: plan() is called again

    def create(self, creates: tuple[CreateShard, ...]) -> None:
        for action in creates:
            self.sim.create(action.plan)
            self.changed = True

    def record(self, decision: Decision) -> None:
        self.sim.state = decision.state
        self.sim.account(decision)

    def delete(self, deletes: tuple[DeleteShard, ...]) -> None:
        for action in deletes:
            self.changed = self.sim.delete(action) or self.changed

    def suspend(self, suspends: tuple[SuspendShard, ...]) -> None:
        for action in suspends:
            self.changed = self.sim.suspend(action) or self.changed

    def emit(self, events: tuple[Event, ...]) -> None:
        pass  # nobody reads a simulation's events


def simulate(
    spec: CoreSpec,
    cluster: ClusterSpec,
    *,
    seed: int = 0,
    policies: Policies | None = None,
    planner: Planner | None = None,
) -> SimulationResult:
    """Run `spec` on `cluster` with the core's policies (minus those `policies` turns off)."""
    return CoreSimulation(spec, cluster, seed=seed, policies=policies, planner=planner).run()
