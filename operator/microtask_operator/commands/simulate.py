"""`microtask simulate FILE --cluster CLUSTER.yaml`: run a MicrotaskJob on a simulated cluster.

For capacity planning and policy tuning: how long would this job take on that cluster, how far is
that from the best possible, and what does each rebalancing policy buy (`--no-*` turn one off;
`--static` runs the same work as a plain Indexed Job instead; `--compare` runs every combination
of policies and `--static` and prints them side by side). Same seed, same output, byte for byte.
Exit codes: 0 done, 1 the simulation could not finish or the core broke an invariant, 2 unusable
input.

Only argparse is imported at module level: the CLI imports every command to build its parser.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.types import CoreSpec
    from ..simulator.cluster import ClusterSpec
    from ..simulator.jobfile import Job
    from ..simulator.result import Policies, SimulationResult

# The simulator keeps a few numbers per microtask; beyond this a run would not be "seconds".
MAX_SIMULATED_MICROTASKS = 10_000_000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a MicrotaskJob YAML file")
    parser.add_argument(
        "--cluster",
        required=True,
        metavar="CLUSTER.yaml",
        help="the simulated cluster (format: examples/clusters/README.md)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--no-fallback", action="store_true", help="never move GPU shards to the CPU pool"
    )
    parser.add_argument(
        "--no-speculation", action="store_true", help="no speculative copies of stragglers"
    )
    parser.add_argument(
        "--no-exclusion", action="store_true", help="do not avoid nodes that keep failing work"
    )
    parser.add_argument(
        "--static",
        action="store_true",
        help="run the work as a plain Indexed Job instead (the baseline: no item-level "
        "retries, no rebalancing)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run every combination of the policies and --static, and print them side by side",
    )


def execute(args: argparse.Namespace) -> int:
    from ..simulator import (
        ClusterFileError,
        Policies,
        SimulationError,
        load_cluster,
        simulate,
        simulate_static,
    )
    from ..simulator.jobfile import JobFileError, load_job

    policies = Policies(
        fallback=not args.no_fallback,
        speculation=not args.no_speculation,
        exclusion=not args.no_exclusion,
    )
    if args.static and policies != Policies():
        return _fail("--static has no policies to turn off; drop the --no-* flags")
    if args.compare and (args.static or policies != Policies()):
        return _fail("--compare runs every combination; drop --static and the --no-* flags")
    try:
        job = load_job(args.file)
    except JobFileError as error:
        return _fail(f"{error.source}: cannot simulate this MicrotaskJob", error.problems)
    try:
        cluster = load_cluster(args.cluster)
    except ClusterFileError as error:
        return _fail(f"{error.source}: not a usable cluster file", error.problems)
    spec = job.spec
    if spec.total > MAX_SIMULATED_MICROTASKS:
        return _fail(
            f"{args.file}: {spec.total} microtasks; the simulator handles up to "
            f"{MAX_SIMULATED_MICROTASKS} (simulate a representative slice)"
        )
    if args.compare:
        return _compare(job, cluster, args)
    unusable = _unusable(spec, cluster, policies, static=args.static)
    if unusable:
        return _fail(f"{args.cluster}: {unusable}")
    try:
        if args.static:
            result = simulate_static(spec, cluster, seed=args.seed)
        else:
            result = simulate(spec, cluster, seed=args.seed, policies=policies)
    except SimulationError as error:
        print(f"error: simulation failed: {error}", file=sys.stderr)
        return 1
    if args.json:
        document = result.to_dict()
        document["job"] = job.name
        import json

        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(render(job, cluster, result))
    for anomaly in result.anomalies:
        print(f"warning: core invariant broken: {anomaly}", file=sys.stderr)
    if not result.finished:
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 1 if result.anomalies else 0


def _unusable(spec: CoreSpec, cluster: ClusterSpec, policies: Policies, *, static: bool) -> str:
    """Why the job can never run on the cluster this way, or "" when it can."""
    from ..core.types import Accelerator, Pool
    from ..simulator.bounds import usable_pools

    pools = usable_pools(spec.accelerator)
    how = f"accelerator {spec.accelerator.value}"
    if spec.accelerator is Accelerator.AUTO and (static or not policies.fallback):
        # Without fallback an `auto` job never leaves the GPU pool (and an Indexed Job has one
        # template, the GPU one).
        pools = (Pool.GPU,)
        how += " without fallback" if not static else " as a plain Indexed Job (GPU only)"
    if any(cluster.slots(pool) for pool in pools):
        return ""
    return (
        f"no {' or '.join(p.value for p in pools)} nodes, so a job with {how} can never run there"
    )


#: The runs of `--compare`, in the order printed: every combination of policies, then the
#: plain Indexed Job that all of them are measured against.
def _combinations() -> list[Policies | None]:
    from itertools import product

    from ..simulator import Policies

    runs: list[Policies | None] = [
        Policies(fallback=f, speculation=s, exclusion=e)
        for f, s, e in product((True, False), repeat=3)
    ]
    return [*runs, None]


def _compare(job: Job, cluster: ClusterSpec, args: argparse.Namespace) -> int:
    """Every policy combination and the static baseline, one row each, from the same seed."""
    from ..simulator import SimulationError, simulate, simulate_static

    spec = job.spec
    rows: list[tuple[str, SimulationResult | str]] = []
    for policies in _combinations():
        label = "static Indexed Job" if policies is None else policies.label()
        unusable = _unusable(spec, cluster, policies or _all_on(), static=policies is None)
        if unusable:
            rows.append((label, unusable))
            continue
        try:
            if policies is None:
                result = simulate_static(spec, cluster, seed=args.seed)
            else:
                result = simulate(spec, cluster, seed=args.seed, policies=policies)
        except SimulationError as error:
            rows.append((label, f"simulation failed: {error}"))
            continue
        rows.append((label, result))
    static = rows[-1][1]
    if args.json:
        import json

        document = {
            "job": job.name,
            "cluster": cluster.name,
            "seed": args.seed,
            "runs": [
                {"label": label, **r.to_dict()}
                if not isinstance(r, str)
                else {"label": label, "error": r}
                for label, r in rows
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(_comparison_table(job, cluster, args.seed, rows, static))
    broken = any(not isinstance(r, str) and r.anomalies for _, r in rows)
    for label, r in rows:
        if not isinstance(r, str):
            for anomaly in r.anomalies:
                print(f"warning: {label}: core invariant broken: {anomaly}", file=sys.stderr)
    return 1 if broken else 0


def _all_on() -> Policies:
    from ..simulator import Policies

    return Policies()


def _comparison_table(
    job: Job,
    cluster: ClusterSpec,
    seed: int,
    rows: list[tuple[str, SimulationResult | str]],
    static: SimulationResult | str,
) -> str:
    spec = job.spec
    lines = [
        f"job {job.name}: {spec.total} microtasks, {shard_sizes(spec)}, "
        f"parallelism {spec.parallelism}, accelerator {spec.accelerator.value}",
        f"cluster {cluster.name}; seed {seed}",
        "",
        f"{'policies':<44}{'phase':<11}{'makespan':>10}{'/ bound':>9}{'static /':>10}"
        f"{'failed':>8}{'attempts':>10}{'copies':>8}",
    ]
    for label, result in rows:
        if isinstance(result, str):
            lines.append(f"{label:<44}{result}")
            continue
        # A run that failed or never finished stopped early: its time is no makespan.
        succeeded = result.finished and result.phase == "Succeeded"
        faster = (
            f"{static.makespan / result.makespan:.2f}x"
            if not isinstance(static, str)
            and static.finished
            and static.phase == "Succeeded"
            and succeeded
            and result.makespan > 0
            else "-"
        )
        phase = result.phase if result.finished else "unfinished"
        bound = f"{result.ratio:.2f}" if succeeded and math.isfinite(result.lower_bound) else "-"
        lines.append(
            f"{label:<44}{phase:<11}{_duration(result.makespan):>10}{bound:>9}{faster:>10}"
            f"{len(result.failed):>8}{result.attempts:>10}{result.speculative_copies:>8}"
        )
    lines.append("")
    lines.append(
        "/ bound: makespan over the lower bound (1.00 is the best possible; - for a run that "
        "did not succeed)"
    )
    lines.append(
        "static /: the plain Indexed Job's makespan over this one's (how many times faster; "
        "- when either did not succeed)"
    )
    return "\n".join(lines) + "\n"


def _fail(message: str, problems: list[str] | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    for problem in problems or []:
        print(f"  {problem}", file=sys.stderr)
    return 2


def render(job: Job, cluster: ClusterSpec, result: SimulationResult) -> str:
    """The human summary: what ran where, then one figure per line."""
    from ..core.types import Pool

    spec = job.spec
    pools = []
    for pool in Pool:
        nodes = [n for n in cluster.nodes if n.pool is pool]
        if nodes:
            unit = "GPU" if pool is Pool.GPU else "slot"
            pools.append(
                f"{_count(len(nodes), f'{pool.value} node')} ({_count(cluster.slots(pool), unit)})"
            )
    losses = len(cluster.node_losses)
    mode = "static Indexed Job (baseline)" if result.mode == "static" else result.policies.label()
    lines = [
        f"job {job.name}: {spec.total} microtasks, {shard_sizes(spec)}, "
        f"parallelism {spec.parallelism}, accelerator {spec.accelerator.value}",
        f"cluster {cluster.name}: {', '.join(pools)}"
        + (f"; {losses} node loss{'es' if losses != 1 else ''}" if losses else "")
        + f"; seed {result.seed}",
        f"policies: {mode}",
        "",
    ]
    rebalanced = ", ".join(f"{k} {v}" for k, v in sorted(result.rebalanced.items())) or "-"
    by_pool = ", ".join(f"{k} {v}" for k, v in sorted(result.completed_by_pool.items()) if v)
    excluded = (
        ", ".join(f"{e['node']} ({e['level']})" for e in result.excluded_nodes)
        if result.excluded_nodes
        else "-"
    )
    rows = [
        ("phase", result.phase if result.finished else f"{result.phase} (unfinished)"),
        ("makespan", f"{_duration(result.makespan)}  ({result.makespan:.1f} s)"),
        (
            "lower bound",
            f"{_duration(result.lower_bound)}  ({result.lower_bound:.1f} s); "
            f"makespan / bound {result.ratio:.2f}"
            if math.isfinite(result.lower_bound)
            else "none: every node the job may use is lost",
        ),
        ("succeeded", str(len(result.succeeded))),
        ("failed", str(len(result.failed))),
        ("attempts", f"{result.attempts}  (microtask runs: {result.executions})"),
        ("speculative copies", str(result.speculative_copies)),
        ("rebalanced", rebalanced),
        ("wasted", f"{result.wasted_seconds:.1f} slot-seconds"),
        ("completed on", by_pool or "-"),
        ("excluded nodes", excluded),
    ]
    lines.extend(f"  {name:<20}{value}" for name, value in rows)
    if result.message:
        lines.append(f"  {'note':<20}{result.message}")
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def shard_sizes(spec: CoreSpec) -> str:
    """How the job sizes its shards, in words."""
    if spec.target_shard_seconds is None:
        return f"{spec.microtasks_per_shard} per shard"
    return f"shards sized to about {spec.target_shard_seconds:g} s (auto)"
