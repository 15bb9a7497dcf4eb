"""Command mode's persistent workers: shard after shard in one warm process, each shard kept apart
from the next (environment, folder, output, records, open files), a worker that dies replaced
without losing or double-counting a microtask, and no worker outliving its run. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from microtask_operator.core.types import RetryPolicy
from microtask_operator.local.executor import LocalExecutor, Snapshot
from microtask_operator.local.launcher import WORKER
from microtask_operator.local.rundir import RunDir
from microtask_runner.execute import CommandExecutor, Finished, Signals
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report
from test_local_fork import killer, make_executor, make_job, started
from test_local_support import alive, lines_of


def records_of(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Each records file of the run's store -> its records."""
    return {
        path.name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for path in (folder / "out" / "records").rglob("*")
        if path.is_file()
    }


def test_one_worker_runs_shard_after_shard_keeping_them_apart(tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    # The worker's open files are counted once it waits for the command (it opens a few
    # while starting it).
    command = (
        "sleep 0.2; "
        f'echo "$MICROTASK_INDEX $MICROTASK_SHARD $PPID $(ls /proc/$PPID/fd | wc -l) $(pwd)"'
        f" >> {probe}; echo out-$MICROTASK_INDEX; echo err-$MICROTASK_INDEX >&2"
    )
    job = make_job(tmp_path, total=8, per_shard=2, workers=1, command=command)
    executor = make_executor(tmp_path, job, workers=1)
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert started(executor) == {"worker": 4}

    seen = [line.split() for line in probe.read_text(encoding="utf-8").splitlines()]
    assert sorted(int(s[0]) for s in seen) == list(range(8))
    for index, shard, _, _, cwd in seen:
        assert shard == str(int(index) // 2)  # the shard's own environment
        assert cwd == str(tmp_path)
    # One process ran every shard (not the executor), and it holds no more files at the fourth
    # shard than at the first: each shard's report, records and log are closed with it.
    assert len({s[2] for s in seen}) == 1 and str(os.getpid()) not in {s[2] for s in seen}
    for first in (True, False):
        assert len({s[3] for s in seen if (int(s[0]) % 2 == 0) is first}) == 1, seen
    assert not alive(int(seen[0][2]))  # gone with the run

    for shard in range(4):
        log = (tmp_path / "out" / "logs" / f"fork-{shard}.log").read_text(encoding="utf-8")
        mine = {2 * shard, 2 * shard + 1}
        for index in range(8):
            assert (f"out-{index}" in log) is (index in mine), (shard, log)
            assert (f"err-{index}" in log) is (index in mine), (shard, log)
        for index in mine:
            begin = log.index(f"::microtask:: index={index} attempt=1 begin")
            end = log.index(f"::microtask:: index={index} attempt=1 end exit=0")
            assert begin < log.index(f"out-{index}") < end
    records = records_of(tmp_path)
    assert len(records) == 4
    for records_file in records.values():
        indexes = sorted(r["index"] for r in records_file)
        assert len(indexes) == 2 and indexes[1] == indexes[0] + 1 and indexes[0] % 2 == 0


def test_a_worker_lends_one_results_spool_to_shard_after_shard(tmp_path: Path) -> None:
    spools = tmp_path / "spools.txt"
    command = (
        f'echo "{{\\"i\\": $MICROTASK_INDEX}}" > "$MICROTASK_OUTPUT"; '
        f'dirname "$MICROTASK_OUTPUT" >> {spools}'
    )
    job = make_job(tmp_path, total=6, per_shard=2, workers=1, command=command)
    executor = make_executor(tmp_path, job, workers=1)
    assert executor.run().decision.status["phase"] == "Succeeded"
    results = {
        r["index"]: r.get("result") for records in records_of(tmp_path).values() for r in records
    }
    assert results == {i: {"i": i} for i in range(6)}
    # One spool for the worker's three shards, removed with the worker.
    (spool,) = set(lines_of(spools))
    assert not Path(spool).exists()


def test_a_worker_that_dies_mid_shard_is_replaced_and_nothing_is_lost_or_counted_twice(
    tmp_path: Path,
) -> None:
    # Index 3 SIGKILLs the process running its shard (the worker) the first time it runs.
    command = killer(tmp_path) + f"; echo $PPID >> {tmp_path / 'workers.txt'}"
    job = make_job(tmp_path, total=8, per_shard=2, workers=1, command=command)
    executor = make_executor(tmp_path, job, workers=1)
    result = executor.run()

    status = result.decision.status
    assert (status["phase"], status["succeeded"], status["failed"]) == ("Succeeded", 8, 0)
    assert sorted(map(int, lines_of(tmp_path / "done.txt"))) == list(range(8))
    # The killed worker was replaced: shards after it ran in a second one.
    workers = lines_of(tmp_path / "workers.txt")
    assert len(set(workers)) == 2 and workers[0] != workers[-1]
    assert started(executor) == {"worker": 5}  # 4 shards and the retry of the killed one
    succeeded = sorted(
        r["index"]
        for records_file in records_of(tmp_path).values()
        for r in records_file
        if r.get("outcome") == "succeeded"
    )
    assert succeeded == list(range(8))


def test_a_stopped_shard_is_its_workers_last(tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    job = make_job(
        tmp_path, total=40, per_shard=10, command=f"sleep 0.05; echo $MICROTASK_INDEX >> {done}"
    )

    def stop_soon(snapshot: Snapshot) -> None:
        if len(lines_of(done)) >= 3:
            executor.request_stop()

    executor = make_executor(tmp_path, job, on_progress=stop_soon)
    result = executor.run()

    assert result.interrupted
    # What the stopped shards finished is kept, and only that.
    assert result.decision.status["succeeded"] == len(lines_of(done)) < 40
    # Every worker is gone with the run, the stopped ones first of all.
    assert started(executor) == {"worker": executor.shards_started}
    assert all(worker.popen.returncode is not None for worker in executor.launcher.workers)


# ----------------------------------------------------------- the worker's own protocol


def start_worker(cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        list(WORKER), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=dict(os.environ)
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode()


def send(proc: subprocess.Popen[bytes], request: dict[str, Any]) -> None:
    stdin: IO[bytes] | None = proc.stdin
    assert stdin is not None
    stdin.write(json.dumps(request).encode() + b"\n")
    stdin.flush()


def shard_request(folder: Path, name: str, command: str, **env: str) -> dict[str, Any]:
    folder.mkdir(exist_ok=True)
    return {
        "argv": ["--", "sh", "-c", command],
        "env": {
            "PATH": os.environ.get("PATH", os.defpath),
            "MICROTASK_INDEXES": "0-1",
            "MICROTASK_REPORT_PATH": str(folder / f"{name}.report"),
            **env,
        },
        "cwd": str(folder),
        "log": str(folder / f"{name}.log"),
    }


def test_a_worker_gives_each_shard_its_own_environment_folder_and_log(tmp_path: Path) -> None:
    proc, ready = start_worker(tmp_path)
    assert ready == f"ready {proc.pid}\n"
    assert proc.stdout is not None
    command = 'echo "A=$A B=$B at $(pwd)"; echo to-stderr >&2'
    send(proc, shard_request(tmp_path / "one", "one", command, A="1"))
    assert proc.stdout.readline() == b"done 0\n"
    # A request carries what changes: the next shard's environment is this one's without A.
    send(proc, {**shard_request(tmp_path / "two", "two", command, B="2"), "unset": ["A"]})
    assert proc.stdout.readline() == b"done 0\n"
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(timeout=10) == 0

    one = (tmp_path / "one" / "one.log").read_text(encoding="utf-8")
    two = (tmp_path / "two" / "two.log").read_text(encoding="utf-8")
    assert one.count(f"A=1 B= at {tmp_path / 'one'}") == 2 and "to-stderr" in one
    assert two.count(f"A= B=2 at {tmp_path / 'two'}") == 2 and "to-stderr" in two
    for name in ("one", "two"):
        report = Report.decode((tmp_path / name / f"{name}.report").read_text(encoding="utf-8"))
        assert len(report.succeeded) == 2 and report.current is None


def test_a_busy_worker_whose_executor_is_gone_stops_its_shard_and_reports(tmp_path: Path) -> None:
    proc, _ = start_worker(tmp_path)
    assert proc.stdout is not None
    send(proc, shard_request(tmp_path, "busy", f"sleep 30 # {tmp_path}"))
    report_path = tmp_path / "busy.report"
    deadline = time.monotonic() + 10
    while not report_path.exists() or Report.decode(report_path.read_text()).current is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.stdin.close()  # type: ignore[union-attr]
    # The shard is stopped as SIGTERM would stop it: its final report names nothing running,
    # and the microtask was not charged.
    assert proc.stdout.readline() == f"done {128 + 15}\n".encode()
    assert proc.wait(timeout=10) == 0
    report = Report.decode(report_path.read_text(encoding="utf-8"))
    assert report.current is None and not report.succeeded and not report.failed_indexes()


def test_a_resumed_runs_stale_report_is_never_read_as_a_new_shards(tmp_path: Path) -> None:
    # A report left in the scratch folder under the id the first shard gets, claiming success;
    # that shard's runner then dies before writing its own.
    job = make_job(tmp_path, total=1, per_shard=1, retry=RetryPolicy(max_attempts=1))
    run_dir = RunDir(tmp_path / "out")
    run_dir.prepare(job.name, fresh=True)
    run_dir.scratch.mkdir(parents=True, exist_ok=True)
    stale = Report(succeeded=IndexSet.parse("0")).encode()
    (run_dir.scratch / "shard-0.report").write_text(stale, encoding="utf-8")
    executor = LocalExecutor(
        job, 1, run_dir, runner=[sys.executable, "-c", "raise SystemExit(3)"], fork=False
    )
    status = executor.run().decision.status
    assert (status["phase"], status["succeeded"], status["failed"]) == ("Failed", 0, 1)


# ------------------------------------------------------------- starting a command


@pytest.mark.parametrize("spawn", [True, False], ids=["posix_spawn", "popen"])
def test_a_command_starts_alike_with_posix_spawn_or_popen(
    tmp_path: Path, spawn: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    script = 'echo "out-$1"; echo "err-$1" >&2; grep SigIgn /proc/self/status; exit "$2"'
    signals = Signals()
    executor = CommandExecutor(
        ["sh", "-c", script, "sh", "$(MICROTASK_INDEX)", "0"],
        os.environ,
        timeout=None,
        signals=signals,
        on_signal=lambda: None,
        direct_output=spawn,
    )
    executor.use_spawn = spawn
    try:
        assert executor.run(1, None) == Finished(0)
        executor.command[-1] = "3"
        failed = executor.run(2, None)
        assert failed is not None and failed.code == 3 and "err-2" in (failed.error or "")
        executor.command[0] = "no-such-program-anywhere"
        missing = executor.run(3, None)
        assert missing is not None and missing.code == 127
        (tmp_path / "not-executable").write_text("#!/bin/sh\n", encoding="utf-8")
        executor.command[0] = str(tmp_path / "not-executable")
        denied = executor.run(4, None)
        assert denied is not None and denied.code == 126
    finally:
        executor.close()
        signals.restore()
    out, err = capfd.readouterr()
    assert "out-1" in out and "out-2" in out and "err-1" in err
    # Python ignores SIGPIPE; the command gets it back at its default, as Popen restores it.
    ignored = [int(line.split()[1], 16) for line in out.splitlines() if line.startswith("SigIgn")]
    assert len(ignored) == 2
    assert all(not mask & (1 << (signal.SIGPIPE - 1)) for mask in ignored)
    assert executor.devnull is None
