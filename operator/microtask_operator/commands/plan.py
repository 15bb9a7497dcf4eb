"""`microtask plan FILE`: print, as YAML, the Kubernetes Jobs the operator would create first.

That is the first `parallelism` shards (attempt 1) of each MicrotaskJob in the file, on the pool
its accelerator starts with (gpu for `gpu` and `auto`, cpu for `cpu`), built by the same Job
builder the operator uses. Invalid input: the problems on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

EXIT_INVALID = 2
#: Stands in for the uid the API server assigns to the MicrotaskJob when it is created.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="YAML file with MicrotaskJobs ('-': stdin)")
    parser.add_argument(
        "-n",
        "--namespace",
        help="namespace of the MicrotaskJobs (default: metadata.namespace, else 'default')",
    )
    parser.add_argument(
        "--uid", default=PLACEHOLDER_UID, help="uid of the MicrotaskJob (for ownerReferences)"
    )
    parser.add_argument(
        "--total",
        type=int,
        metavar="N",
        help="number of microtasks, for a configMapRef whose ConfigMap is not in FILE",
    )
    parser.add_argument(
        "--job", metavar="NAME", help="only this MicrotaskJob of the file (default: all)"
    )


def _error(message: str) -> int:
    print(f"microtask plan: {message}", file=sys.stderr)
    return EXIT_INVALID


def execute(args: argparse.Namespace) -> int:
    import yaml
    from microtask_runner.indexset import IndexSet

    from microtask_operator.api.convert import DEFAULT_TARGET_SHARD_SECONDS
    from microtask_operator.api.items import ItemsError, largest_shard, total_microtasks
    from microtask_operator.api.loading import load_file
    from microtask_operator.api.model import AUTO
    from microtask_operator.builder import OwnerMeta, build_job
    from microtask_operator.core.shardsize import initial_size
    from microtask_operator.core.types import Pool, ShardPlan
    from microtask_operator.settings import Settings, SettingsError

    result = load_file(args.file)
    if result.problems:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    jobs = [j for j in result.jobs if args.job is None or j.job.metadata.name == args.job]
    if not jobs:
        wanted = f"named {args.job!r} " if args.job else ""
        return _error(f"{result.source}: no MicrotaskJob {wanted}in the file")
    if args.total is not None and args.total < 0:
        return _error("--total must not be negative")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _error(str(exc))

    out: list[str] = []
    for loaded in jobs:
        job = loaded.job
        spec = job.spec
        name = job.metadata.name
        try:
            total = total_microtasks(job, result.config_map_data(loaded))
        except ItemsError as exc:
            if args.total is None or spec.items.config_map_ref is None:
                hint = (
                    " (put the ConfigMap in the file, or give --total)"
                    if spec.items.config_map_ref
                    else ""
                )
                return _error(f"{result.source}: doc {loaded.document.index} ({name}): {exc}{hint}")
            total = args.total
        owner = OwnerMeta(
            name=name,
            namespace=args.namespace or job.metadata.namespace or "default",
            uid=args.uid,
        )
        pool = Pool.CPU if spec.placement.accelerator == "cpu" else Pool.GPU
        if spec.microtasks_per_shard == AUTO:
            per_shard = initial_size(total, spec.parallelism, largest_shard(job))
            target = spec.target_shard_seconds or DEFAULT_TARGET_SHARD_SECONDS
            first = min(spec.parallelism, -(-total // per_shard))
            notes = [
                f"MicrotaskJob {name}: {total:,} microtasks in shards sized as they run "
                f"(microtasksPerShard: auto): the first {first} (parallelism "
                f"{spec.parallelism}) hold up to {per_shard} each to measure the "
                f"{pool.value} pool; later ones are sized to run about {target:g} s.",
            ]
        else:
            per_shard = int(spec.microtasks_per_shard)
            shards = -(-total // per_shard)
            first = min(spec.parallelism, shards)
            notes = [
                f"MicrotaskJob {name}: {total:,} microtasks in {shards:,} shards of up to "
                f"{per_shard}; the first {first} (parallelism {spec.parallelism}) on the "
                f"{pool.value} pool.",
            ]
        if spec.suspend:
            notes.append("spec.suspend is true: these are created when it is resumed.")
        if spec.depends_on:
            notes.append(f"Created once {', '.join(spec.depends_on)} succeeded.")
        if args.uid == PLACEHOLDER_UID:
            notes.append("The uid is a placeholder for the one the API server assigns.")
        out.append("".join(f"# {note}\n" for note in notes))
        for shard in range(first):
            indexes = IndexSet.from_range(shard * per_shard, min(total, (shard + 1) * per_shard))
            plan = ShardPlan(shard_id=shard, indexes=indexes, attempt=1, pool=pool)
            manifest = build_job(job, owner, plan, settings)
            out.append("---\n" + yaml.safe_dump(manifest, sort_keys=False, width=100))
    sys.stdout.write("".join(out))
    return 0
