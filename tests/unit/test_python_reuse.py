"""`microtask run --reuse-processes`: Python-mode shards run one after another in a persistent
worker per slot, the user's module imported once, as multiprocessing.Pool's workers do; each shard
still gets its own environment, folder and log, and a worker that dies mid-shard is replaced
without losing or double-counting a microtask. Real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from microtask_operator.core.types import RetryPolicy
from microtask_operator.local.executor import LocalExecutor
from microtask_operator.local.rundir import RunDir
from test_local_fork import (
    PROBE,
    make_job,
    probe_without_bytecode,
    probes,
    probes_of_shards,
    started,
)
from test_local_support import run_cli, write

#: A Python-mode worker that SIGKILLs the process it runs in at index 3, the first time only.
KILLER = """
import os, signal, sys

def work(index, item):
    flag = os.path.join(os.environ["PROBE_DIR"], "killed")
    if index == 3 and not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    with open(os.path.join(os.environ["PROBE_DIR"], "done.txt"), "a") as out:
        out.write(f"{index} {os.getpid()}\\n")
"""


def reusing_executor(tmp_path: Path, *, total: int, per_shard: int, callable: str) -> LocalExecutor:
    # No backoff: the retry of a killed shard's microtask goes at once.
    retry = RetryPolicy(backoff_seconds=0)
    job = make_job(
        tmp_path, total=total, per_shard=per_shard, workers=1, callable=callable, retry=retry
    )
    job.env["PROBE_DIR"] = str(tmp_path)
    run_dir = RunDir(tmp_path / "out")
    run_dir.prepare(job.name, fresh=True)
    return LocalExecutor(job, 1, run_dir, reuse_processes=True)


def test_one_process_runs_shard_after_shard_with_the_module_imported_once(tmp_path: Path) -> None:
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    executor = reusing_executor(tmp_path, total=8, per_shard=2, callable="mt_probe:probe")
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert started(executor) == {"worker": 4}

    seen = probes_of_shards(tmp_path, 8, 2)  # each with its shard's own environment
    assert len({p["pid"] for p in seen.values()}) == 1
    for index, probe in seen.items():
        first = index % 2 == 0  # the first microtask of its shard
        assert probe["calls"] == index + 1  # imported once: its globals carry on
        # What a microtask left in the process is there for the next, shard or not...
        assert probe["leak"] == (None if index == 0 else str(index - 1))
        assert probe["usr1"] is (index == 0)
        # ...but every shard starts in the job's folder, whose modules come first.
        assert probe["cwd"] == (str(tmp_path) if first else "/")
        assert probe["path0"] == str(tmp_path)


def test_where_bytecode_is_not_written_nothing_of_the_users_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = probe_without_bytecode(tmp_path, monkeypatch)
    executor = reusing_executor(tmp_path, total=4, per_shard=1, callable="mt_probe:probe")
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert started(executor) == {"worker": 4}
    # The worker keeps the runner compiled for the next run, never the user's module.
    kept = list(cache.rglob("*.pyc"))
    assert any(path.match("microtask_runner/cli.*.pyc") for path in kept)
    assert not list(tmp_path.rglob("mt_probe*.pyc"))


def test_a_process_killed_mid_shard_is_replaced_and_nothing_is_lost_or_counted_twice(
    tmp_path: Path,
) -> None:
    (tmp_path / "mt_killer.py").write_text(KILLER, encoding="utf-8")
    executor = reusing_executor(tmp_path, total=8, per_shard=2, callable="mt_killer:work")
    status = executor.run().decision.status

    assert (status["phase"], status["succeeded"], status["failed"]) == ("Succeeded", 8, 0)
    done = [line.split() for line in (tmp_path / "done.txt").read_text().splitlines()]
    assert sorted(int(index) for index, _ in done) == list(range(8))
    # The killed worker was replaced: the shards after it ran in a second one.
    pids = [pid for _, pid in done]
    assert len(set(pids)) == 2 and pids[0] != pids[-1]
    assert started(executor) == {"worker": 5}  # 4 shards and the retry of the killed one
    # Index 2 had succeeded in the killed shard: it is neither lost nor run again.
    assert [index for index, _ in done].count("2") == 1


def test_microtask_run_reuses_processes_when_asked(tmp_path: Path) -> None:
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    job = (
        "apiVersion: microtask.dev/v1alpha1\n"
        "kind: MicrotaskJob\n"
        "metadata: {name: reuse}\n"
        "spec:\n"
        "  items: {range: {start: 0, end: 6}}\n"
        "  microtasksPerShard: 1\n"
        "  parallelism: 1\n"
        "  callable: mt_probe:probe\n"
        "  template:\n"
        "    spec:\n"
        "      containers:\n"
        "      - name: worker\n"
        "        image: ghcr.io/microtask-dev/microtask-runner:0.1.0\n"
        "        env:\n"
        f"        - {{name: PROBE_OUT, value: {json.dumps(str(tmp_path / 'probe.jsonl'))}}}\n"
    )
    write(tmp_path, job)
    pids = {}
    for flag in ((), ("--reuse-processes",)):
        (tmp_path / "probe.jsonl").unlink(missing_ok=True)
        result = run_cli("run", "job.yaml", "--workers", "1", *flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        pids[flag] = {p["pid"] for p in probes(tmp_path)}
    assert len(pids[()]) == 6  # a fresh process per shard, as a pod
    assert len(pids[("--reuse-processes",)]) == 1
