"""The core's decision step at 10 million microtasks: does it stay O(window + what changed)?

    .venv/bin/python -m bench.bench_core [--quick] [--steps N]

The state is built directly (no simulation up to it): 10^7 microtasks, the first 80% done, with
1% permanent failures and 1% waiting retries scattered over the whole range (so the index sets
hold ~100,000-200,000 ranges each), a window of 100 live shards of 1,000 microtasks, and 3 of
them finishing at every step (1% of their microtasks failing, to be retried 30 s later). Each
step is one `plan()` call, status included; the figure is the median (and the 99th percentile)
over many steps, against the same steady state with no holes at all. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Iterator

from microtask_operator.core.conditions import Phase
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState, RetryBatch
from microtask_operator.core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteShard,
    ObservedShard,
    Pool,
    RetryPolicy,
    ShardPhase,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from bench.figures import Figure

TOTAL = 10_000_000
DONE = 8_000_000  # the frontier: fresh work starts here (room for ~600 steps)
SHARD = 1_000
WINDOW = 100
FINISHING = 3  # shards finishing at each step
NODES = tuple(f"cpu-{n}" for n in range(20))
CLUSTER = ClusterView(ready_nodes={Pool.CPU: frozenset(NODES)})


def _scattered(rng: random.Random, fraction: float, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < int(TOTAL * fraction):
        index = rng.randrange(TOTAL)
        if index not in taken:
            taken.add(index)
            out.append(index)
    return out


def _start(holes: bool) -> tuple[CoreSpec, CoreState, dict[int, ObservedShard]]:
    """The steady state: 80% done, a full window of shards just launched."""
    spec = CoreSpec(
        total=TOTAL,
        microtasks_per_shard=SHARD,
        parallelism=WINDOW,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=30.0, max_failed_fraction=0.05),
    )
    rng = random.Random(7)
    failed = retry = IndexSet.EMPTY
    batches: tuple[RetryBatch, ...] = ()
    if holes:
        taken: set[int] = set()
        failed = IndexSet.from_indexes(_scattered(rng, 0.01, taken))
        retry_list = _scattered(rng, 0.01, taken)
        retry = IndexSet.from_indexes(retry_list)
        # Waiting for a long backoff: they stay queued, fresh work goes on.
        batches = tuple(
            RetryBatch(1, 1e9 + n, IndexSet.from_indexes(retry_list[n::8])) for n in range(8)
        )
    succeeded = IndexSet.from_range(0, DONE) - failed - retry
    live: dict[int, ObservedShard] = {}
    fresh = IndexSet.from_range(DONE, TOTAL) - failed - retry
    for shard_id in range(WINDOW):
        chunk, fresh = fresh.take(SHARD)
        live[shard_id] = ObservedShard(
            shard_id=shard_id,
            indexes=chunk,
            attempt=1,
            pool=Pool.CPU,
            created_at=0.0,
            phase=ShardPhase.RUNNING,
            node=NODES[shard_id % len(NODES)],
            started_at=0.0,
        )
    state = CoreState(
        succeeded=succeeded,
        failed=failed,
        retry=batches,
        next_shard=WINDOW,
        attempts=DONE,
        start_time=0.0,
        phase=Phase.RUNNING,
    )
    return spec, state, live


def _finished(shard: ObservedShard, now: float, holes: bool) -> ObservedShard:
    bad = [i for i in shard.indexes if i % 97 == 5] if holes else []
    failed = IndexSet.from_indexes(bad)
    report = Report(
        succeeded=shard.indexes - failed,
        failed={1: failed} if bad else {},
        errors={1: "exit 1"} if bad else {},
        seconds_total=float(len(shard.indexes)),
        seconds_max=1.0,
        count=len(shard.indexes),
    )
    return ObservedShard(
        shard_id=shard.shard_id,
        indexes=shard.indexes,
        attempt=shard.attempt,
        pool=shard.pool,
        created_at=shard.created_at,
        phase=ShardPhase.SUCCEEDED,
        node=shard.node,
        started_at=shard.started_at,
        finished_at=now,
        report=report,
        exit_code=0,
    )


def measure(holes: bool, steps: int) -> list[float]:
    """Milliseconds per plan() call over `steps` steady-state steps.

    The first call is left out: it derives from scratch what later ones are handed by the
    state (as after a restart of the operator).
    """
    spec, state, live = _start(holes)
    now = 10.0
    times: list[float] = []
    for step in range(steps + 1):
        now += 1.0
        oldest = sorted(live)[:FINISHING]
        for shard_id in oldest:
            live[shard_id] = _finished(live[shard_id], now, holes)
        observed = list(live.values())
        began = time.perf_counter()
        decision = plan(spec, state, observed, CLUSTER, now)
        if step:
            times.append((time.perf_counter() - began) * 1000.0)
        state = decision.state
        if decision.done:
            break  # (never within ~600 steps: the figures are of a job in full flight)
        for action in decision.actions:
            if isinstance(action, DeleteShard):
                live.pop(action.shard_id, None)
            elif isinstance(action, CreateShard):
                shard = action.plan.as_pending(now)
                live[shard.shard_id] = ObservedShard(
                    shard_id=shard.shard_id,
                    indexes=shard.indexes,
                    attempt=shard.attempt,
                    pool=shard.pool,
                    created_at=now,
                    phase=ShardPhase.RUNNING,
                    node=NODES[(shard.shard_id + step) % len(NODES)],
                    started_at=now,
                )
    return times


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def figures(quick: bool, steps: int | None = None) -> Iterator[Figure]:
    count = steps if steps is not None else (50 if quick else 500)
    plain = measure(False, count)
    scattered = measure(True, count)
    base = statistics.median(plain)
    yield Figure(
        "core.plan_step_1e7_scattered",
        round(statistics.median(scattered), 3),
        "ms",
        round(base, 3),
        "no holes",
    )
    yield Figure(
        "core.plan_step_1e7_scattered_p99",
        round(_p99(scattered), 3),
        "ms",
        round(_p99(plain), 3),
        "no holes",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~50 steps instead of ~500")
    parser.add_argument("--steps", type=int, default=None, help="measure this many steps")
    args = parser.parse_args()
    for figure in figures(args.quick, args.steps):
        print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
