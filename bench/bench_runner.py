"""The runner in Python mode against `multiprocessing.Pool` and `dask.bag` on the same work.

* `python_mode.noop_1m`: 1,000,000 no-op microtasks (100,000 with --quick), 10,000 per shard, 2
  workers, through `microtask run`'s local executor; the baseline is
  `Pool(2).imap_unordered(fn, range(n), chunksize=10000)`, measured before and after it;
* `python_mode.noop_1m_reused`: the same with `microtask run --reuse-processes` (shard after shard
  in one process per worker, as the Pool's workers do), against the same Pool;
* `python_mode.noop_1m_vs_dask`: the same run against `dask.bag` with as many partitions (only
  when dask is installed: `pip install "dask[bag]"`);
* `python_mode.sha256_20k`: 20,000 microtasks (5,000 with --quick) of 1,000 SHA-256 rounds each,
  20 shards, against the Pool with the same chunk size;
* `python_mode.runner_alone_noop`: µs per no-op microtask inside one runner process (its own
  summary line, so no interpreter start), against a bare Python loop calling the same function;
* `python_mode.runner_alone_noop_store`: the same with a result store and no log copy, as
  `microtask run` starts its runners (a record per microtask; the runner's loop for quick
  streaks captures fds 1 and 2 and holds back the delimiter lines of silent microtasks);
* `runner.import_ms`: what the runner's own modules take to import for
  `python -m microtask_runner --help` (the best of a few runs), against the 10 ms target;
  beside it, a note on stderr: everything a real one-microtask shard imports after `site`
  (standard library included, the no-op callable's module too).

Prints one JSON line per figure; asserts nothing.

    .venv/bin/python -m bench.bench_runner [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from microtask_runner import demo
from microtask_runner.indexset import IndexSet

from bench.bench_local import run_local
from bench.figures import Figure

WORKERS = 2
NOOP = "microtask_runner.demo:noop"
SHA256 = "microtask_runner.demo:sha256"


def _items(_: IndexSet) -> str:
    return json.dumps({"range": {"start": 0, "step": 1}})


def _noop(index: int) -> None:
    demo.noop(index, index)


def _sha256(index: int) -> None:
    demo.sha256(index, index)


def run_pool(function: Callable[[int], None], total: int, chunk: int) -> float:
    """Seconds `Pool(2).imap_unordered` takes over range(total), the pool's start included."""
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        for _ in pool.imap_unordered(function, range(total), chunksize=chunk):
            pass
    return time.perf_counter() - started


def run_dask(total: int, chunk: int) -> float | None:
    """Seconds dask.bag takes for the same no-ops with processes; None without dask."""
    try:
        import dask.bag as db  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    started = time.perf_counter()
    bag = db.from_sequence(range(total), npartitions=max(total // chunk, 1)).map(_noop)
    bag.compute(scheduler="processes", num_workers=WORKERS)
    return time.perf_counter() - started


def _beside(measure: Callable[[], float], baseline: Callable[[], float]) -> tuple[float, float]:
    """The measure, and the mean of the baseline just before and just after it.

    The machine is shared: measured side by side, both get the same load.
    """
    before = baseline()
    value = measure()
    return value, (before + baseline()) / 2


def runner_alone(total: int, *, store: bool = False) -> float:
    """µs per no-op microtask in one runner process, from its own summary line.

    ``store``: with a result store (records, no log copy), as `microtask run` gives it.
    """
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
        env.update(
            MICROTASK_INDEXES=f"0-{total - 1}",
            MICROTASK_CALLABLE=NOOP,
            MICROTASK_ITEMS=_items(IndexSet.EMPTY),
            MICROTASK_REPORT_PATH=str(Path(folder) / "report.json"),
        )
        if store:
            env.update(
                MICROTASK_OUTPUT_URL=str(Path(folder) / "store"),
                MICROTASK_JOB="bench",
                MICROTASK_SHARD="0",
                MICROTASK_LOG_COPY="false",
            )
        with open(Path(folder) / "out.log", "wb") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "microtask_runner"],
                env=env,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                check=True,
            )
    match = re.search(r"microtasks run in ([0-9.]+)s", proc.stderr)
    if match is None:
        raise RuntimeError(f"no summary in the runner's output: {proc.stderr[-500:]}")
    return float(match[1]) / total * 1e6


def bare_loop(total: int) -> float:
    """µs per call of the same function in a plain loop."""
    function = demo.noop
    started = time.perf_counter()
    for index in range(total):
        function(index, index)
    return (time.perf_counter() - started) / total * 1e6


def import_ms(
    args: list[str], env: dict[str, str] | None = None, *, everything: bool = False, runs: int = 5
) -> float:
    """Milliseconds of imports (cumulative) the runner's start-up takes, the best of runs.

    The runner's own modules only, or (``everything``) all that is imported after ``site``:
    what a shard's process pays before its first microtask, standard library included.
    """
    # As installed in an image: compiled once, then read from __pycache__ (with
    # PYTHONDONTWRITEBYTECODE every run would compile the modules again).
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    best = float("inf")
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "microtask_runner", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        rows = []
        for line in proc.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                name = parts[2].rstrip()
                rows.append((len(name) - len(name.lstrip()), name.strip(), int(parts[1])))
        if everything:
            # Top-level entries after site's (children come before their parent).
            after = max((i for i, row in enumerate(rows) if row[1] == "site"), default=-1)
            depth = min(row[0] for row in rows)
            total = sum(us for indent, _, us in rows[after + 1 :] if indent == depth)
        else:
            ours = [row for row in rows if row[1].split(".")[0] == "microtask_runner"]
            depth = min(row[0] for row in ours)
            total = sum(us for indent, _, us in ours if indent == depth)
        best = min(best, total / 1000)
    return best


def figures(quick: bool) -> Iterator[Figure]:
    chunk = 10_000
    total = 100_000 if quick else 1_000_000
    seconds, pool = _beside(
        lambda: run_local(total, chunk, command=[], callable=NOOP),
        lambda: run_pool(_noop, total, chunk),
    )
    yield Figure(
        "python_mode.noop_1m", round(seconds, 3), "s", round(pool, 3), "multiprocessing.Pool(2)"
    )
    reused, pool = _beside(
        lambda: run_local(total, chunk, command=[], callable=NOOP, reuse_processes=True),
        lambda: run_pool(_noop, total, chunk),
    )
    yield Figure(
        "python_mode.noop_1m_reused",
        round(reused, 3),
        "s",
        round(pool, 3),
        "multiprocessing.Pool(2)",
    )
    dask = run_dask(total, chunk)
    if dask is None:
        print("dask is not installed: no python_mode.noop_1m_vs_dask", file=sys.stderr)
    else:
        yield Figure(
            "python_mode.noop_1m_vs_dask", round(seconds, 3), "s", round(dask, 3), "dask.bag"
        )

    work = 5_000 if quick else 20_000
    work_chunk = work // 20
    seconds, pool = _beside(
        lambda: run_local(work, work_chunk, command=[], callable=SHA256),
        lambda: run_pool(_sha256, work, work_chunk),
    )
    yield Figure(
        "python_mode.sha256_20k", round(seconds, 3), "s", round(pool, 3), "multiprocessing.Pool(2)"
    )

    # The runner's summary gives seconds to 2 decimals: enough microtasks for 1% precision.
    alone = 200_000 if quick else 1_000_000
    per, loop = _beside(lambda: runner_alone(alone), lambda: bare_loop(alone))
    yield Figure("python_mode.runner_alone_noop", round(per, 3), "µs", round(loop, 3), "bare loop")
    per, loop = _beside(lambda: runner_alone(alone, store=True), lambda: bare_loop(alone))
    yield Figure(
        "python_mode.runner_alone_noop_store", round(per, 3), "µs", round(loop, 3), "bare loop"
    )

    yield Figure("runner.import_ms", round(import_ms(["--help"]), 2), "ms", 10.0, "target")
    # Not a figure of its own: what a real one-microtask shard imports, standard library
    # included, as a note beside the figures.
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
        env.update(
            MICROTASK_INDEXES="0",
            MICROTASK_CALLABLE=NOOP,
            MICROTASK_REPORT_PATH=str(Path(folder) / "report.json"),
        )
        shard = import_ms([], env, everything=True)
    print(f"note: a one-microtask shard imports for {shard:.1f} ms after site", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    args = parser.parse_args()
    for figure in figures(args.quick):
        print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
