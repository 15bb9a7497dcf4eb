"""`microtask run` (the local executor) with a no-op worker, against `xargs -P2` on the same work.

Command mode runs `true` once per microtask, as `seq N | xargs -P2 -n1 true` does, so the ratio
is what the executor and the runner add per microtask and per shard: 2 workers, N microtasks
(1,000 with --quick, 4,000 otherwise) at 1, 10 and 100 microtasks per shard, and with
`microtasksPerShard: auto`, the default (shards sized from the measured durations; the core's
spec comes from a MicrotaskJob that leaves the field out, as `microtask run` reads one). Python
mode calls a no-op function in-process: at 1 microtask per shard it measures the cost of a shard
alone.

Prints one JSON line per figure, and on stderr where the time went (wall time and CPU per shard,
the executor's and its runners'); asserts nothing.

    .venv/bin/python -m bench.bench_local [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from microtask_operator.api.convert import to_core_spec
from microtask_operator.api.loading import validate_job
from microtask_operator.core.types import CoreSpec
from microtask_operator.local.executor import LocalExecutor, LocalJob
from microtask_operator.local.rundir import RunDir
from microtask_runner.indexset import IndexSet

from bench.figures import Figure

WORKERS = 2
CHILDREN = resource.RUSAGE_CHILDREN


def _items(_: IndexSet) -> str:
    return json.dumps({"range": {"start": 0, "step": 1}})


#: `microtasksPerShard: auto` (the default) as the core sees it for range items.
AUTO = None


def run_local(
    total: int,
    per_shard: int | None,
    *,
    command: list[str],
    callable: str | None = None,
    reuse_processes: bool = False,
) -> float:
    """Seconds `microtask run` takes for the job (its folder in a temporary directory).

    ``per_shard``: microtasks per shard, or `AUTO`. ``reuse_processes``: as `microtask run
    --reuse-processes`.
    """
    if per_shard is AUTO:
        spec = _default_sizing(total)
    else:
        spec = CoreSpec(total=total, microtasks_per_shard=per_shard, parallelism=WORKERS)
    job = LocalJob(name="bench", spec=spec, command=command, items_env=_items, callable=callable)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(Path(folder) / "run")
        run_dir.prepare(job.name, fresh=True)
        before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(CHILDREN)
        started = time.perf_counter()
        result = LocalExecutor(job, WORKERS, run_dir, reuse_processes=reuse_processes).run()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(CHILDREN)
    phase = result.decision.status.get("phase")
    if phase != "Succeeded":
        raise RuntimeError(f"the benchmark job ended {phase}, not Succeeded")
    # Where the time went, on stderr: the executor's own CPU, and its runners' with their
    # commands' (children reaped meanwhile: the workers and the fork server, with their children).
    shards = max(result.shards, 1)
    own, children = (_cpu(after[i]) - _cpu(before[i]) for i in (0, 1))
    print(
        f"# {total} microtasks at {per_shard or 'auto'} per shard ({shards} shards): "
        f"{seconds * 1000 / shards:.2f} ms per shard, CPU per shard: executor "
        f"{own * 1000 / shards:.2f} ms, runners and commands {children * 1000 / shards:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return seconds


def _default_sizing(total: int) -> CoreSpec:
    """The core's spec of a MicrotaskJob over `total` range items with every default."""
    body = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": "bench"},
        "spec": {
            "items": {"range": {"start": 0, "end": total}},
            "parallelism": WORKERS,
            "template": {
                "spec": {"containers": [{"name": "w", "image": "bench", "command": ["true"]}]}
            },
        },
    }
    job, problems = validate_job(body)
    if job is None:
        raise RuntimeError(f"the benchmark job is invalid: {problems}")
    return to_core_spec(job)


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_xargs(total: int, true: str) -> float:
    """Seconds `seq N | xargs -P2 -n1 true` takes: a process per microtask, no bookkeeping."""
    numbers = "".join(f"{i}\n" for i in range(total)).encode()
    started = time.perf_counter()
    subprocess.run(["xargs", f"-P{WORKERS}", "-n1", true], input=numbers, check=True)
    return time.perf_counter() - started


def figures(quick: bool) -> Iterator[Figure]:
    total = 1000 if quick else 4000
    true = shutil.which("true") or "/bin/true"
    for per_shard in (10, 1, 100, AUTO):
        # The baseline is measured beside each run (the mean of one before and one after), so a
        # machine shared with other work loads both alike.
        before = run_xargs(total, true)
        seconds = run_local(total, per_shard, command=[true])
        xargs = (before + run_xargs(total, true)) / 2
        yield Figure(
            f"command_mode.per_shard_{per_shard or 'auto'}",
            round(seconds, 3),
            "s",
            round(xargs, 3),
            "xargs -P2",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 microtasks instead of 4,000")
    args = parser.parse_args()
    for figure in figures(args.quick):
        print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
