"""The simulated world shared by both drivers: nodes with slots, a scheduler, and shard executions.

Speed matters here (100,000 microtasks in seconds), so per-microtask work is avoided wherever a
shard-level computation gives the same answer:

* microtask sizes are drawn once per job and kept with their prefix sums, so a shard's run time
  is a sum over its index ranges, not over its microtasks;
* failures and crashes are placed by geometric skipping, so a shard costs O(failures), not
  O(microtasks), to sample;
* one event per shard (its end), never one per microtask.

Randomness comes from separate `random.Random` streams derived from the seed, one per purpose, so
the workload itself (which microtask is big, which always fails) is identical whatever policy runs
it: comparisons between policies are not blurred by a different draw of the work.
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from microtask_runner.contract import retries_in_pod
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from ..core.types import Pool, ShardPhase
from .cluster import ClusterSpec, NodeSpec, Workload

# The runner's contract: 0 = all succeeded, 10 = some microtasks failed; a crash is an OOM kill.
EXIT_SOME_FAILED = 10
EXIT_OOM_KILLED = 137
TRANSIENT_ERROR = "simulated transient failure"
PERMANENT_ERROR = "simulated permanent failure"
BAD_NODE_ERROR = "simulated bad node"


class SimNode:
    """A node at run time: its capacity in shard pods, and whether it is still there."""

    __slots__ = (
        "bad",
        "crash_rate",
        "deleted",
        "failure_rate",
        "name",
        "order",
        "pool",
        "ready",
        "slots",
        "spec",
        "speed",
        "straggler_rate",
        "straggler_slowdown",
        "used",
    )

    def __init__(self, spec: NodeSpec, workload: Workload, order: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.pool = spec.pool
        self.slots = spec.slots
        self.speed = spec.speed
        self.order = order  # ties in placement are broken by file order, for determinism
        self.bad = spec.bad
        self.failure_rate = _pick(spec.failure_rate, workload.failure_rate)
        self.crash_rate = _pick(spec.crash_rate, workload.crash_rate)
        self.straggler_rate = _pick(spec.straggler_rate, workload.straggler_rate)
        self.straggler_slowdown = _pick(spec.straggler_slowdown, workload.straggler_slowdown)
        self.used = 0
        self.ready = True
        self.deleted = False


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


class Nodes:
    """Placement of shard pods on nodes, as kube-scheduler would do it for our Jobs.

    Filters: the pod's pool, a Ready node, a free slot, not in the hard anti-affinity list.
    Scores: not in the soft anti-affinity list first, then the least loaded node (topology spread
    by hostname and LeastAllocated agree here because every pod is the job's own).
    """

    def __init__(self, cluster: ClusterSpec) -> None:
        self.all = [SimNode(spec, cluster.workload, i) for i, spec in enumerate(cluster.nodes)]
        self.by_name = {node.name: node for node in self.all}
        self.by_pool: dict[Pool, list[SimNode]] = {pool: [] for pool in Pool}
        for node in self.all:
            self.by_pool[node.pool].append(node)
        self.free: dict[Pool, int] = dict.fromkeys(Pool, 0)
        for node in self.all:
            self.free[node.pool] += node.slots

    def place(
        self, pool: Pool, avoid_hard: Sequence[str] = (), avoid_soft: Sequence[str] = ()
    ) -> SimNode | None:
        """Take a slot for a pod of `pool`; None when it is unschedulable right now."""
        if self.free[pool] <= 0:
            return None
        best: SimNode | None = None
        best_key: tuple[bool, float, int, int] | None = None
        for node in self.by_pool[pool]:
            if not node.ready or node.used >= node.slots:
                continue
            if avoid_hard and node.name in avoid_hard:
                continue
            key = (node.name in avoid_soft, node.used / node.slots, node.used, node.order)
            if best_key is None or key < best_key:
                best, best_key = node, key
        if best is not None:
            best.used += 1
            self.free[pool] -= 1
        return best

    def release(self, node: SimNode) -> None:
        node.used -= 1
        if node.ready:
            self.free[node.pool] += 1

    def lose(self, node: SimNode) -> None:
        """NotReady: no new pods; its running pods make no more progress."""
        if node.ready:
            node.ready = False
            self.free[node.pool] -= node.slots - node.used

    def ready_slots(self) -> dict[str, int]:
        return {node.name: node.slots for node in self.all if node.ready}

    def ready_names(self) -> dict[Pool, frozenset[str]]:
        return {
            pool: frozenset(node.name for node in nodes if node.ready)
            for pool, nodes in self.by_pool.items()
        }


@dataclass(frozen=True)
class Execution:
    """What one shard pod does from placement to its end, sampled when it is placed."""

    duration: float  # placement -> pod end, including startup
    phase: ShardPhase  # SUCCEEDED (exit 0 or 10) or FAILED (crashed)
    exit_code: int
    report: Report
    failure_reason: str | None
    straggler: bool
    useful_seconds: float  # run time of microtasks that finished (succeeded or failed)
    seconds_per_size: float  # this run's pace: seconds for a microtask of size 1


class WorkModel:
    """The job's microtasks (their sizes, which always fail) and how executions are sampled."""

    def __init__(self, total: int, workload: Workload, seed: int) -> None:
        self.total = total
        self.workload = workload
        size_rng = random.Random(f"{seed}:sizes")
        jitter = workload.jitter
        # A microtask's size is pool-independent; its duration is size * seconds[pool] / speed.
        self.sizes = array(
            "d", (1.0 + jitter * (2.0 * size_rng.random() - 1.0) for _ in range(total))
        )
        prefix = array("d", [0.0]) * (total + 1)
        running = 0.0
        for i, size in enumerate(self.sizes):
            running += size
            prefix[i + 1] = running
        self.prefix = prefix
        poison_rng = random.Random(f"{seed}:permanent")
        count = round(workload.permanent_failure_rate * total)
        self.permanent = IndexSet.from_indexes(sorted(poison_rng.sample(range(total), count)))
        self.failure_rng = random.Random(f"{seed}:failures")
        self.crash_rng = random.Random(f"{seed}:crashes")
        self.straggler_rng = random.Random(f"{seed}:stragglers")
        # The pods' own retries draw apart: first runs fail alike whether pods retry or not.
        self.retry_rng = random.Random(f"{seed}:retries")
        self._codes = list(workload.exit_codes)
        self._weights = list(workload.exit_codes.values())

    def total_size(self) -> float:
        return self.prefix[self.total]

    def max_size(self) -> float:
        return max(self.sizes) if self.total else 0.0

    def size_of(self, indexes: IndexSet) -> float:
        prefix = self.prefix
        return sum(prefix[b] - prefix[a] for a, b in indexes.ranges)

    def max_size_of(self, indexes: IndexSet) -> float:
        sizes = self.sizes
        return max((max(sizes[a:b]) for a, b in indexes.ranges), default=0.0)

    def progress(
        self, indexes: IndexSet, node: SimNode, execution: Execution, elapsed: float
    ) -> int:
        """Microtasks a run of `indexes` on `node` has finished `elapsed` seconds after placement.

        (What the runner's progress shows: microtasks end one after another at the run's pace.)
        """
        run = elapsed - self.workload.pod_startup_seconds
        count = execution.report.count
        if run <= 0:
            return 0
        if node.bad:
            per = node.spec.bad_seconds_per_microtask
            return count if per <= 0 else min(count, int(run / per))
        pace = execution.seconds_per_size
        if pace <= 0:
            return count
        room = run / pace  # the size of the work done so far
        prefix = self.prefix
        done = 0
        for a, b in indexes.ranges:
            whole = prefix[b] - prefix[a]
            if whole <= room:
                room -= whole
                done += b - a
                continue
            done += bisect_right(prefix, prefix[a] + room, a, b + 1) - 1 - a
            break
        return min(count, done)

    def seconds_per_size(self, node: SimNode) -> float:
        return self.workload.seconds_per_microtask[node.pool] / node.speed

    def execute(
        self,
        indexes: IndexSet,
        node: SimNode,
        retry_after: float | None = None,
        no_retry: frozenset[int] = frozenset(),
    ) -> Execution:
        """Sample one run of `indexes` on `node`: how long it takes and what it reports.

        `retry_after`: the pod retries its failed microtasks itself, as the runner does (see
        `microtask_runner.execute.Retry`), that long after each failed.
        """
        startup = self.workload.pod_startup_seconds
        count = len(indexes)
        if node.bad:
            # A bad node fails every microtask quickly: the shard "succeeds" as a pod (exit 10)
            # with a report full of failures, which is what bad-node tracking has to notice.
            seconds = count * node.spec.bad_seconds_per_microtask
            code = node.spec.bad_exit_code
            report = Report(
                succeeded=IndexSet.EMPTY,
                failed={code: indexes} if count else {},
                errors={code: BAD_NODE_ERROR} if count else {},
                seconds_total=seconds,
                seconds_max=node.spec.bad_seconds_per_microtask if count else 0.0,
                count=count,
            )
            exit_code = EXIT_SOME_FAILED if count else 0
            return Execution(
                startup + seconds,
                ShardPhase.SUCCEEDED,
                exit_code,
                report,
                None,
                False,
                seconds,
                0.0,
            )

        straggler = node.straggler_rate > 0 and self.straggler_rng.random() < node.straggler_rate
        per_size = self.seconds_per_size(node) * (node.straggler_slowdown if straggler else 1.0)

        completed = indexes
        current: int | None = None
        if node.crash_rate > 0:
            position = _geometric(self.crash_rng, node.crash_rate)
            if position < count:
                completed, rest = indexes.take(position)
                current = rest.first()

        failed: dict[int, set[int]] = {}
        done = len(completed)
        if node.failure_rate > 0 and done:
            positions = _failure_positions(self.failure_rng, node.failure_rate, done)
            if positions:
                codes = self.failure_rng.choices(self._codes, self._weights, k=len(positions))
                for index, code in zip(_indexes_at(completed, positions), codes, strict=True):
                    failed.setdefault(code, set()).add(index)
        failed_sets = {code: IndexSet.from_indexes(sorted(ix)) for code, ix in failed.items()}
        errors = dict.fromkeys(failed_sets, TRANSIENT_ERROR)
        poisoned = completed & self.permanent if self.permanent else IndexSet.EMPTY
        if poisoned:
            code = self.workload.permanent_exit_code
            # Both draws may hit one microtask: it failed once, with the permanent code.
            for other in list(failed_sets):
                failed_sets[other] = failed_sets[other] - poisoned
                if not failed_sets[other]:
                    del failed_sets[other], errors[other]
            failed_sets[code] = failed_sets.get(code, IndexSet.EMPTY) | poisoned
            errors[code] = PERMANENT_ERROR
        failed_all = IndexSet.EMPTY
        for ix in failed_sets.values():
            failed_all = failed_all | ix
        succeeded = completed - failed_all

        useful = self.size_of(completed) * per_size
        run = useful
        retried: dict[int, IndexSet] = {}
        if (
            retry_after is not None
            and current is None
            and retries_in_pod(len(succeeded), len(failed_all))
        ):
            again = _Retries(self, node, completed, per_size, failed_sets, errors)
            run = again.run(useful, retry_after, no_retry)
            useful = run - again.waited
            succeeded = succeeded | again.succeeded
            failed_all = failed_all - again.succeeded
            retried = again.retried
        if current is not None:
            # The crash happens part-way through the current microtask.
            run += self.sizes[current] * per_size * self.crash_rng.random()
        report = Report(
            succeeded=succeeded,
            failed=dict(sorted(failed_sets.items())),
            errors=dict(sorted(errors.items())),
            current=current,
            seconds_total=useful,
            seconds_max=self.max_size_of(completed) * per_size,
            count=done,
            retried=retried,
        )
        if current is not None:
            return Execution(
                startup + run,
                ShardPhase.FAILED,
                EXIT_OOM_KILLED,
                report,
                "OOMKilled",
                straggler,
                useful,
                per_size,
            )
        exit_code = EXIT_SOME_FAILED if failed_all else 0
        return Execution(
            startup + run,
            ShardPhase.SUCCEEDED,
            exit_code,
            report,
            None,
            straggler,
            useful,
            per_size,
        )


class _Retries:
    """A pod's own retries of its failed microtasks at the end of its run, as the runner's."""

    def __init__(
        self,
        work: WorkModel,
        node: SimNode,
        completed: IndexSet,
        per_size: float,
        failed: dict[int, IndexSet],
        errors: dict[int, str],
    ) -> None:
        self.work = work
        self.node = node
        self.completed = completed
        self.per_size = per_size
        self.failed = failed  # updated in place: what fails again, with its new code
        self.errors = errors
        self.succeeded = IndexSet.EMPTY
        self.retried: dict[int, IndexSet] = {}
        self.waited = 0.0

    def run(self, end: float, after: float, skip: frozenset[int]) -> float:
        """The run's new end (from `end`, its first pass's), each retry `after` its failure."""
        work = self.work
        todo = sorted(
            (index, code)
            for code, indexes in self.failed.items()
            if code not in skip
            for index in indexes
        )
        for index, first in todo:
            ended = work.size_of(self.completed & IndexSet.from_range(0, index + 1)) * self.per_size
            start = max(end, ended + after)
            self.waited += start - end
            end = start + work.sizes[index] * self.per_size
            one = IndexSet.from_range(index, index + 1)
            self.retried[first] = self.retried.get(first, IndexSet.EMPTY) | one
            self._take(first, one)
            if index in work.permanent:
                code, error = work.workload.permanent_exit_code, PERMANENT_ERROR
            elif work.retry_rng.random() < self.node.failure_rate:
                code = work.retry_rng.choices(work._codes, work._weights)[0]
                error = TRANSIENT_ERROR
            else:
                self.succeeded = self.succeeded | one
                continue
            self.failed[code] = self.failed.get(code, IndexSet.EMPTY) | one
            self.errors.setdefault(code, error)
        self.retried = dict(sorted(self.retried.items()))
        return end

    def _take(self, code: int, one: IndexSet) -> None:
        rest = self.failed[code] - one
        if rest:
            self.failed[code] = rest
        else:
            del self.failed[code]


def _geometric(rng: random.Random, p: float) -> int:
    """Number of successes before the first hit, each trial hitting with probability p."""
    if p >= 1.0:
        return 0
    u = rng.random()
    # 1 - u is in (0, 1], so the log is defined; the result is floored to a whole count.
    return int(math.log(1.0 - u) / math.log(1.0 - p))


def _failure_positions(rng: random.Random, p: float, n: int) -> list[int]:
    """Positions in [0, n) that fail independently with probability p, in O(failures)."""
    positions: list[int] = []
    position = _geometric(rng, p)
    while position < n:
        positions.append(position)
        position += 1 + _geometric(rng, p)
    return positions


def _indexes_at(indexes: IndexSet, positions: Iterable[int]) -> list[int]:
    """The microtask index at each (sorted) position within `indexes`."""
    starts: list[int] = []
    offsets: list[int] = []
    offset = 0
    for a, b in indexes.ranges:
        starts.append(a)
        offsets.append(offset)
        offset += b - a
    result = []
    for position in positions:
        k = bisect_right(offsets, position) - 1
        result.append(starts[k] + position - offsets[k])
    return result
