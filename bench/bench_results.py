"""Wall time and peak memory of `microtask results` on a large result store.

Writes ``--records`` records (default 1,000,000) in shards of ``--per-shard`` consecutive indexes
to a temporary directory store, with 1% of the indexes failing their first attempt and retried in
retry shards that pack scattered indexes (as the operator packs retries; a tenth of the retries
fail again), and a run.json whose job has 1,000 more indexes that never ran. Then it runs
`microtask results --store DIR` as a subprocess, output to /dev/null, for -o jsonl, -o csv and
--failed. Prints one JSON line per command: wall seconds, CPU seconds, records per second, and
the peak resident memory of that process (its own rusage from wait4, the per-child form of
getrusage(RUSAGE_CHILDREN)). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_results.py [--records N] [--per-shard N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microtask_operator.local.rundir import RunDir
from microtask_operator.results.stores import DirectoryStore
from microtask_runner.contract import records_name
from microtask_runner.indexset import IndexSet
from microtask_runner.records import ShardInfo, format_record
from microtask_runner.results import Finished

JOB = "bench"
START = 1_764_770_000.0
RETRY_FRACTION = 0.01
#: Of the retried indexes, every tenth fails its retry too.
FAIL_AGAIN_EVERY = 10
NEVER_RAN = 1000


def _record(index: int, *, shard: int, attempt: int, failed: bool) -> bytes:
    info = ShardInfo(job=JOB, shard=shard, attempt=attempt, pool="cpu", node=f"node-{shard % 7}")
    if failed:
        finished = Finished.failure(index, 1, f"Traceback ...\nValueError: bad input {index}")
    else:
        finished = Finished(
            0, result=json.dumps({"thumb": f"s3://out/{index}.png", "bytes": index})
        )
    start = START + index * 0.01 + attempt * 1000
    return format_record(info, index=index, start=start, seconds=0.25, finished=finished)


def write_store(root: Path, records: int, per_shard: int, seed: int) -> dict[str, int]:
    """The store's records files; how many files and retried indexes it got."""
    store = DirectoryStore(str(root))
    rng = random.Random(seed)
    retried = sorted(rng.sample(range(records), int(records * RETRY_FRACTION)))
    failing = set(retried)
    shard = 0
    for first in range(0, records, per_shard):
        indexes = range(first, min(first + per_shard, records))
        lines = [_record(i, shard=shard, attempt=1, failed=i in failing) for i in indexes]
        store.put(records_name(first, JOB, shard), b"".join(lines))
        shard += 1
    failed_again = retried[::FAIL_AGAIN_EVERY]
    failing_again = set(failed_again)
    for position in range(0, len(retried), per_shard):
        chunk = retried[position : position + per_shard]
        lines = [_record(i, shard=shard, attempt=2, failed=i in failing_again) for i in chunk]
        store.put(records_name(chunk[0], JOB, shard), b"".join(lines))
        shard += 1
    total = records + NEVER_RAN
    failed = IndexSet.from_indexes(failed_again)
    succeeded = IndexSet.from_range(0, records) - failed
    RunDir(root).save_state(
        {
            "job": JOB,
            "universe": None,
            "status": {
                "phase": "Failed",
                "total": total,
                "succeeded": len(succeeded),
                "failed": len(failed),
                "succeededIndexes": succeeded.to_compact(),
                "failedIndexes": failed.to_compact(),
            },
            "finished": True,
            "interrupted": False,
        }
    )
    return {"files": shard, "retried": len(retried), "failed": len(failed), "never_ran": NEVER_RAN}


def microtask_command() -> list[str]:
    script = Path(sys.executable).with_name("microtask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "microtask_operator.cli"]


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit code) of one run, stdout to /dev/null."""
    with open(os.devnull, "wb") as devnull:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=devnull, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.stderr is not None:
        errors = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        if errors:
            print(errors, file=sys.stderr)
    # ru_maxrss is in KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", metavar="DIR", help="write the store here and keep it")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="microtask-bench-"))
    try:
        started = time.perf_counter()
        layout = write_store(root, args.records, args.per_shard, args.seed)
        size = sum(p.stat().st_size for p in (root / "records").iterdir())
        print(
            json.dumps(
                {
                    "bench": "results-store",
                    "records": args.records,
                    "per_shard": args.per_shard,
                    **layout,
                    "bytes": size,
                    "write_seconds": round(time.perf_counter() - started, 2),
                }
            ),
            flush=True,
        )
        base = [*microtask_command(), "results", "--store", str(root)]
        for name, extra in (
            ("jsonl", ["-o", "jsonl"]),
            ("csv", ["-o", "csv"]),
            ("failed", ["--failed"]),
        ):
            seconds, cpu, peak, code = measure(base + extra)
            print(
                json.dumps(
                    {
                        "bench": "results",
                        "output": name,
                        "records": args.records,
                        "seconds": round(seconds, 2),
                        "cpu_seconds": round(cpu, 2),
                        "records_per_second": round(args.records / seconds),
                        "peak_rss_mib": round(peak, 1),
                        "exit_code": code,
                    }
                ),
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
