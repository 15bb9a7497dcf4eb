"""The operator's load on the API server, measured on the real control plane.

For one MicrotaskJob of N microtasks (default 2,000) it prints the API write requests the operator
made per microtask (from the API server's audit log), with 100 microtasks per shard and with 1, and
the time from the MicrotaskJob's creation to its first Jobs. Prints figures; asserts nothing. Needs
the dev install and hack/kube-binaries.sh (the control plane and our kubelet are the test harness).

    .venv/bin/python bench/bench_operator.py [--total N] [--parallelism P]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness.cluster import start_cluster  # noqa: E402
from tests.integration.operator_harness import (  # noqa: E402
    microtask_job,
    running_operator,
    wait_phase,
)


def measure(total: int, per_shard: int, parallelism: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as workdir,
        start_cluster(Path(workdir)) as cluster,
        running_operator(cluster),
    ):
        mark = cluster.mark()
        created = time.monotonic()
        cluster.create(
            microtask_job("bench", total=total, per_shard=per_shard, parallelism=parallelism)
        )
        cluster.wait_for(
            lambda: cluster.list("jobs", labels="microtask.dev/job=bench"),
            timeout=60,
            interval=0.005,
            message="first Jobs",
        )
        first_jobs = time.monotonic() - created
        status = wait_phase(cluster, "bench", timeout=3600)["status"]
        elapsed = time.monotonic() - created
        writes: Counter[tuple[str, str, str | None]] = cluster.count_writes(since=mark)
    total_writes = sum(writes.values())
    return {
        "phase_ok": float(status["phase"] == "Succeeded"),
        "writes": total_writes,
        "writes_per_microtask": total_writes / total,
        "job_creates": writes.get(("create", "jobs", None), 0),
        "status_patches": writes.get(("patch", "microtaskjobs", "status"), 0),
        "first_jobs_seconds": first_jobs,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2_000)
    parser.add_argument("--parallelism", type=int, default=20)
    args = parser.parse_args()
    rows = [(per_shard, measure(args.total, per_shard, args.parallelism)) for per_shard in (100, 1)]
    print(f"{args.total:,} microtasks, parallelism {args.parallelism}, real control plane")
    print(
        f"{'per shard':>9}{'writes':>9}{'per microtask':>15}{'Job creates':>13}"
        f"{'status writes':>15}{'first Jobs':>12}{'total s':>9}  ok"
    )
    for per_shard, r in rows:
        print(
            f"{per_shard:>9}{r['writes']:>9.0f}{r['writes_per_microtask']:>15.3f}"
            f"{r['job_creates']:>13.0f}{r['status_patches']:>15.0f}"
            f"{r['first_jobs_seconds']:>11.3f}s{r['seconds']:>9.1f}  {bool(r['phase_ok'])}"
        )
    ratio = rows[1][1]["writes_per_microtask"] / max(rows[0][1]["writes_per_microtask"], 1e-9)
    print(f"1 microtask per shard costs {ratio:.0f}x the API writes of 100 per shard")


if __name__ == "__main__":
    main()
