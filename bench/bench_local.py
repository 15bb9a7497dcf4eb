"""Throughput of `microtask run` (the local executor): microtasks per second with a no-op worker.

Prints figures; asserts nothing. Command mode starts one process per microtask, so it is compared,
in the same run, with a plain loop starting the same process; Python mode calls a function
in-process.

    .venv/bin/python bench/bench_local.py [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microtask_operator.core.types import CoreSpec
from microtask_operator.local.executor import LocalExecutor, LocalJob
from microtask_runner.indexset import IndexSet


def run(job: LocalJob, workers: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as logs:
        started = time.perf_counter()
        outcome = LocalExecutor(job, workers, Path(logs)).run()
        seconds = time.perf_counter() - started
    return seconds, outcome.decision.phase


def items(_: IndexSet) -> str:
    return json.dumps({"range": {"start": 0, "step": 1}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--command-microtasks", type=int, default=2000)
    parser.add_argument("--python-microtasks", type=int, default=200_000)
    args = parser.parse_args()
    true = shutil.which("true") or "/bin/true"

    n = args.command_microtasks
    baseline_n = min(n, 1000)
    started = time.perf_counter()
    for _ in range(baseline_n):
        subprocess.run([true], check=True)
    per_process = (time.perf_counter() - started) / baseline_n

    rows = []
    for per_shard in (1, 10, 100):
        spec = CoreSpec(total=n, microtasks_per_shard=per_shard, parallelism=args.workers)
        job = LocalJob(name="bench", spec=spec, command=[true], items_env=items)
        seconds, phase = run(job, args.workers)
        rows.append(("command `true`", per_shard, n, seconds, phase))
    m = args.python_microtasks
    for per_shard in (1000, 10_000):
        spec = CoreSpec(total=m, microtasks_per_shard=per_shard, parallelism=args.workers)
        job = LocalJob(
            name="bench",
            spec=spec,
            command=[],
            items_env=items,
            callable="microtask_runner.demo:noop",
        )
        seconds, phase = run(job, args.workers)
        rows.append(("python noop", per_shard, m, seconds, phase))

    print(
        f"machine: {os.cpu_count()} CPUs, {args.workers} workers, Python {sys.version.split()[0]}"
    )
    print(
        f"baseline: a plain loop starting `true` runs {1 / per_process:,.0f} processes/s (1 core)"
    )
    print(
        f"{'mode':<16}{'per shard':>10}{'microtasks':>12}{'seconds':>9}{'microtasks/s':>14}"
        f"{'vs loop':>9}  phase"
    )
    for mode, per_shard, total, seconds, phase in rows:
        rate = total / seconds
        ratio = rate * per_process
        print(
            f"{mode:<16}{per_shard:>10}{total:>12,}{seconds:>9.2f}{rate:>14,.0f}"
            f"{ratio:>8.2f}x  {phase}"
        )


if __name__ == "__main__":
    main()
