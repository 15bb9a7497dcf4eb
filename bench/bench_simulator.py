"""Simulator figures: how fast it simulates, and what each rebalancing policy buys.

    .venv/bin/python bench/bench_simulator.py [--seed N] [--seeds K] [--quick]

Prints (never asserts; timings depend on the machine):

1. simulated microtasks per wall-clock second for 100,000 microtasks on 100 nodes, with the wall
   time split between the core's plan() and the simulator itself;
2. for the realistic cluster (examples/clusters/realistic.yaml: 8 GPU + 32 CPU nodes, stragglers,
   one node loss) and 50,000 microtasks: makespan / lower bound with all policies on, each policy
   off, and as a plain Indexed Job (--static);
3. with --seeds K, the same ratios for K seeds and their median: makespans are dominated by the
   last stragglers, so one run can be far from typical;
4. with --figures: makespan / lower bound of examples/clusters/jobs/mixed.yaml on
   examples/clusters/mixed.yaml (GPU, CPU and slow CPU nodes, a bad node, stragglers, a GPU
   node lost) with every policy on and shards sized to MIXED_TARGET_SECONDS, against the plain
   Indexed Job, for seeds 1-5 and their median; the worst of those seeds for the same job with
   the shard-size settings left out (the defaults; --quick: seed 1); then the healthy nodes
   excluded (there should be none) in a 1,000,000-microtask job whose only trouble is transient
   failures spread evenly over 58 nodes (--quick: 20,000 microtasks).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from microtask_operator.core.planner import Decision, plan
from microtask_operator.core.state import CoreState
from microtask_operator.core.types import (
    Accelerator,
    ClusterView,
    CoreSpec,
    ObservedShard,
    RetryPolicy,
    SpeculationPolicy,
)
from microtask_operator.simulator import (
    Policies,
    SimulationResult,
    load_cluster,
    simulate,
    simulate_static,
)
from microtask_operator.simulator.cluster import parse_cluster

from bench.figures import Figure

ROOT = Path(__file__).resolve().parents[1]

HUNDRED_NODES = {
    "kind": "SimulatedCluster",
    "name": "hundred",
    "description": "20 GPU nodes (2 GPUs each) + 80 CPU nodes (4 slots each)",
    "workload": {
        "secondsPerMicrotask": {"gpu": 1.0, "cpu": 4.0},
        "jitter": 0.2,
        "failureRate": 0.001,
        "stragglerRate": 0.02,
        "podStartupSeconds": 3,
    },
    "nodes": [
        {"name": "gpu", "count": 20, "pool": "gpu", "gpus": 2},
        {"name": "cpu", "count": 80, "pool": "cpu", "slots": 4},
    ],
}


class TimedPlanner:
    """The real plan(), with the wall time it takes added up (bench only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __call__(
        self,
        spec: CoreSpec,
        state: CoreState,
        observed: Sequence[ObservedShard],
        cluster: ClusterView,
        now: float,
    ) -> Decision:
        start = time.perf_counter()
        try:
            return plan(spec, state, observed, cluster, now)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def timed(run: Callable[[], SimulationResult]) -> tuple[SimulationResult, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def throughput(seed: int, total: int) -> None:
    cluster = parse_cluster(HUNDRED_NODES)
    slots = sum(node.slots for node in cluster.nodes)
    spec = CoreSpec(
        total=total,
        microtasks_per_shard=100,
        parallelism=slots,
        accelerator=Accelerator.AUTO,
        speculation=SpeculationPolicy(enabled=True),
    )
    print(
        f"## Simulation speed: {total:,} microtasks on {len(cluster.nodes)} nodes ({slots} slots)"
    )
    print()
    print("| run | wall s | microtasks / wall s | plan() calls | in plan() | makespan / bound |")
    print("|---|---:|---:|---:|---:|---:|")
    planner = TimedPlanner()
    result, wall = timed(lambda: simulate(spec, cluster, seed=seed, planner=planner))
    share = planner.seconds / wall if wall else 0.0
    print(
        f"| core, parallelism {spec.parallelism} | {wall:.1f} | {total / wall:,.0f} | "
        f"{planner.calls:,} | {share:.0%} | {result.ratio:.2f} |"
    )
    narrow = CoreSpec(**{**spec.__dict__, "parallelism": 100})
    planner = TimedPlanner()
    result, wall = timed(lambda: simulate(narrow, cluster, seed=seed, planner=planner))
    share = planner.seconds / wall if wall else 0.0
    print(
        f"| core, parallelism 100 | {wall:.1f} | {total / wall:,.0f} | {planner.calls:,} | "
        f"{share:.0%} | {result.ratio:.2f} |"
    )
    result, wall = timed(lambda: simulate_static(spec, cluster, seed=seed))
    print(f"| static (no core) | {wall:.2f} | {total / wall:,.0f} | - | - | {result.ratio:.2f} |")
    print()


def realistic_job(total: int) -> CoreSpec:
    return CoreSpec(
        total=total,
        microtasks_per_shard=50,
        parallelism=160,  # every slot of the cluster: 32 GPUs + 128 CPU slots
        accelerator=Accelerator.AUTO,
        fallback_after_seconds=120,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=10),
        speculation=SpeculationPolicy(enabled=True, slowdown_factor=3),
    )


def policy_runs(spec: CoreSpec, seed: int) -> list[tuple[str, Callable[[], SimulationResult]]]:
    cluster = load_cluster(ROOT / "examples" / "clusters" / "realistic.yaml")
    return [
        ("all on", lambda: simulate(spec, cluster, seed=seed)),
        ("no fallback", lambda: simulate(spec, cluster, seed=seed, policies=Policies(False))),
        (
            "no speculation",
            lambda: simulate(spec, cluster, seed=seed, policies=Policies(speculation=False)),
        ),
        (
            "no exclusion",
            lambda: simulate(spec, cluster, seed=seed, policies=Policies(exclusion=False)),
        ),
        ("static Indexed Job", lambda: simulate_static(spec, cluster, seed=seed)),
    ]


def policy_table(seed: int, total: int) -> None:
    spec = realistic_job(total)
    print(
        f"## Policies on the realistic cluster: {total:,} microtasks, 50 per shard, "
        f"parallelism 160, accelerator auto, seed {seed}"
    )
    print()
    print(
        "| policies | makespan s | lower bound s | makespan / bound | failed | attempts | "
        "copies | rebalanced | wasted slot-s | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for label, run in policy_runs(spec, seed):
        result, wall = timed(run)
        rebalanced = ", ".join(f"{k} {v}" for k, v in result.rebalanced.items()) or "-"
        phase = "" if result.phase == "Succeeded" else f" ({result.phase})"
        print(
            f"| {label}{phase} | {result.makespan:,.0f} | {result.lower_bound:,.0f} | "
            f"{result.ratio:.2f} | {len(result.failed)} | {result.attempts:,} | "
            f"{result.speculative_copies} | {rebalanced} | {result.wasted_seconds:,.0f} | "
            f"{wall:.1f} |"
        )
        for anomaly in result.anomalies:
            print(f"|  ↳ core invariant broken: {anomaly} |")
    print()


def seed_table(first: int, count: int, total: int) -> None:
    spec = realistic_job(total)
    seeds = list(range(first, first + count))
    print(f"## Makespan / lower bound over seeds {seeds[0]}..{seeds[-1]} (same job and cluster)")
    print()
    print("| policies | " + " | ".join(f"seed {s}" for s in seeds) + " | median |")
    print("|---|" + "---:|" * (len(seeds) + 1))
    ratios: dict[str, list[float]] = {}
    for seed in seeds:
        for label, run in policy_runs(spec, seed):
            ratios.setdefault(label, []).append(run().ratio)
    for label, values in ratios.items():
        cells = " | ".join(f"{v:.2f}" for v in values)
        print(f"| {label} | {cells} | {statistics.median(values):.2f} |")
    print()


MIXED_SEEDS = (1, 2, 3, 4, 5)
# The mixed job with `microtasksPerShard: auto`: shards sized to run this long on their pool.
MIXED_TARGET_SECONDS = 150.0
MIXED_LARGEST_SHARD = 1000


def mixed_runs(seed: int) -> tuple[SimulationResult, SimulationResult]:
    """All policies on (adaptive shard sizes), and the static job, for the mixed job."""
    from dataclasses import replace

    from microtask_operator.simulator.jobfile import load_job

    spec = load_job(ROOT / "examples" / "clusters" / "jobs" / "mixed.yaml").spec
    cluster = load_cluster(ROOT / "examples" / "clusters" / "mixed.yaml")
    adaptive = spec
    if spec.target_shard_seconds is None:
        adaptive = replace(
            spec,
            microtasks_per_shard=MIXED_LARGEST_SHARD,
            target_shard_seconds=MIXED_TARGET_SECONDS,
        )
    return simulate(adaptive, cluster, seed=seed), simulate_static(spec, cluster, seed=seed)


def mixed_default_runs(seed: int) -> tuple[SimulationResult, SimulationResult]:
    """The mixed job with the shard-size settings left out (the defaults: auto, 60 s)."""
    import tempfile

    from microtask_operator.simulator.jobfile import load_job

    text = (ROOT / "examples" / "clusters" / "jobs" / "mixed.yaml").read_text()
    kept = [
        line
        for line in text.splitlines()
        if not line.strip().startswith(("microtasksPerShard:", "targetShardSeconds:"))
    ]
    with tempfile.TemporaryDirectory() as folder:
        written = Path(folder) / "mixed-defaults.yaml"
        written.write_text("\n".join(kept) + "\n")
        spec = load_job(written).spec
    cluster = load_cluster(ROOT / "examples" / "clusters" / "mixed.yaml")
    return simulate(spec, cluster, seed=seed), simulate_static(spec, cluster, seed=seed)


UNIFORM_FAILURES = {
    "kind": "SimulatedCluster",
    "name": "uniform-failures",
    "description": "50 CPU nodes (4 slots) + 8 GPU nodes (2 GPUs), every node equally flaky",
    "workload": {
        "secondsPerMicrotask": {"gpu": 0.2, "cpu": 1.0},
        "jitter": 0.3,
        "failureRate": 0.003,
        "podStartupSeconds": 5,
    },
    "nodes": [
        {"name": "cpu", "count": 50, "pool": "cpu", "slots": 4},
        {"name": "gpu", "count": 8, "pool": "gpu", "gpus": 2},
    ],
}


def false_exclusions(total: int, seed: int = 1) -> tuple[int, SimulationResult]:
    """Healthy nodes excluded (soft or hard) at any time in a job with only transient failures."""
    spec = CoreSpec(
        total=total,
        microtasks_per_shard=1000,
        target_shard_seconds=60.0,
        parallelism=216,
        accelerator=Accelerator.AUTO,
        retry=RetryPolicy(max_attempts=3, backoff_seconds=10),
        speculation=SpeculationPolicy(enabled=True),
    )
    result = simulate(spec, parse_cluster(UNIFORM_FAILURES), seed=seed)
    return len(result.excluded_nodes), result


def figures(quick: bool) -> Iterator[Figure]:
    """Makespan over the lower bound on the mixed cluster, median over seeds, against --static;
    the worst seed of the same job with the default shard sizes; then the false exclusions of a
    large job with transient failures only.

    Every seed's own ratios are yielded too: one straggler at the end can make a run atypical.
    A seed whose job fails is reported with its ratio as infinite, never left out.
    """
    ours: list[float] = []
    static: list[float] = []
    for seed in MIXED_SEEDS[:3] if quick else MIXED_SEEDS:
        result, baseline = mixed_runs(seed)
        value = result.ratio if result.phase == "Succeeded" else float("inf")
        ours.append(value)
        # A static job that failed has no makespan to compare with: no baseline then.
        done = baseline.phase == "Succeeded"
        static.append(baseline.ratio if done else float("inf"))
        yield Figure(
            f"simulator.mixed_over_bound_seed{seed}",
            round(value, 3),
            "x lower bound",
            round(baseline.ratio, 3) if done else None,
            "the plain Indexed Job (--static)" if done else "the plain Indexed Job failed",
        )
    median = statistics.median(static)
    yield Figure(
        "simulator.mixed_over_bound",
        round(statistics.median(ours), 3),
        "x lower bound",
        round(median, 3) if median != float("inf") else None,
        "the plain Indexed Job (--static)" if median != float("inf") else "it failed",
    )
    worst: list[float] = []
    worst_static: list[float] = []
    for seed in MIXED_SEEDS[:1] if quick else MIXED_SEEDS:
        result, baseline = mixed_default_runs(seed)
        worst.append(result.ratio if result.phase == "Succeeded" else float("inf"))
        worst_static.append(baseline.ratio if baseline.phase == "Succeeded" else float("inf"))
    yield Figure(
        "simulator.mixed_defaults_worst_over_bound",
        round(max(worst), 3),
        "x lower bound (worst seed)",
        round(max(worst_static), 3) if max(worst_static) != float("inf") else None,
        "the plain Indexed Job (--static)" if max(worst_static) != float("inf") else "it failed",
    )
    total = 20_000 if quick else 1_000_000
    excluded, _ = false_exclusions(total)
    yield Figure(
        f"simulator.false_exclusions_{'20k' if quick else '1m'}",
        excluded,
        "healthy nodes excluded",
        0,
        "none (transient failures only)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--seeds", type=int, default=1, help="also show ratios for this many seeds (slow)"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the microtasks")
    parser.add_argument(
        "--figures", action="store_true", help="only the mixed-cluster figures, as JSON lines"
    )
    args = parser.parse_args()
    if args.figures:
        for figure in figures(args.quick):
            print(figure.line(), flush=True)
        return
    scale = 10 if args.quick else 1
    throughput(args.seed, 100_000 // scale)
    policy_table(args.seed, 50_000 // scale)
    if args.seeds > 1:
        seed_table(args.seed, args.seeds, 50_000 // scale)


if __name__ == "__main__":
    main()
