"""SIGINT, SIGTERM and SIGHUP stop `microtask run` gracefully; `--resume` finishes the rest; no
runner ever outlives the command. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from microtask_runner.indexset import IndexSet
from test_local_support import (
    assert_gone,
    counting,
    descendants,
    job_yaml,
    lines_of,
    processes_with,
    run_cli,
    start_cli,
    state,
    wait_for_lines,
    write,
)


def marker_for(tmp_path: Path) -> str:
    return f"mt-marker-{tmp_path.name}-{time.monotonic_ns()}"


def wait_for_processes(marker: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(processes_with(marker)) < count:
        assert time.monotonic() < deadline, processes_with(marker)
        time.sleep(0.02)


def assert_none_left(marker: str) -> None:
    # The command has returned: whatever it started must already be gone (a moment for the
    # kernel to reap what was just killed).
    deadline = time.monotonic() + 1.0
    while processes_with(marker):
        assert time.monotonic() < deadline, processes_with(marker)
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_stops_the_run_and_resume_runs_every_index_exactly_once(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    out = tmp_path / "executions.txt"
    marker = marker_for(tmp_path)
    command = counting(out, sleep=0.1, marker=marker)
    path = write(tmp_path, job_yaml(total=12, per_shard=3, parallelism=2, command=command))
    folder = tmp_path / "microtask-runs" / "count"

    proc = start_cli("run", path, "--workers", "2", "--progress-interval", "0", cwd=tmp_path)
    wait_for_lines(out, 2)
    started = descendants(proc.pid)  # the fork server, the runners, their commands
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=20)

    assert proc.returncode == code, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    assert f"MicrotaskJob count: Interrupted (by {signum.name}; state saved for --resume)" in (
        stderr
    )
    assert "next: microtask run" in stderr and "--resume" in stderr
    assert_none_left(marker)
    assert started
    assert_gone(started)
    saved = state(folder)
    assert (saved["interrupted"], saved["finished"]) == (True, False)
    done_before = sorted(map(int, lines_of(out)))
    assert 2 <= len(done_before) < 12
    # What finished before the stop is kept, interrupted work is not charged.
    assert IndexSet.from_compact(saved["status"]["succeededIndexes"]) == IndexSet.from_indexes(
        done_before
    )
    assert saved["status"]["failed"] == 0
    first_logs = {p.name for p in (folder / "logs").iterdir()}

    resumed = run_cli("run", path, "--resume", "--progress-interval", "0", cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert f"note: resuming count: {12 - len(done_before)} of 12 microtasks to run" in (
        resumed.stderr
    )
    assert sorted(map(int, lines_of(out))) == list(range(12))  # each index ran exactly once
    saved = state(folder)
    assert (saved["finished"], saved["interrupted"]) == (True, False)
    assert saved["status"]["succeededIndexes"] == "0-11"
    assert saved["status"]["phase"] == "Succeeded"
    # The resumed run's shards have new ids: no log of the first run was overwritten.
    second_logs = {p.name for p in (folder / "logs").iterdir()} - first_logs
    assert second_logs and len(first_logs) + len(second_logs) == len(
        list((folder / "logs").iterdir())
    )
    assert_none_left(marker)


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    marker = marker_for(tmp_path)
    # Commands that ignore SIGTERM: a gentle stop would wait out the whole grace period.
    command = f"trap '' TERM; sleep 30 # {marker}"
    path = write(tmp_path, job_yaml(total=4, per_shard=2, parallelism=2, command=command))

    proc = start_cli("run", path, "--workers", "2", "--progress-interval", "0", cwd=tmp_path)
    # Two commands (a runner forked from the fork server has the server's command line).
    wait_for_processes(marker, 2)
    tree = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting for the runners' reports
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)

    assert time.monotonic() - started < 3.0  # well within the 5 s grace
    assert proc.returncode == 130
    assert "Interrupted (by SIGINT" in stderr and "Traceback" not in stderr
    assert_none_left(marker)
    assert_gone(tree)
    assert state(tmp_path / "microtask-runs" / "count")["interrupted"] is True


def test_no_runner_outlives_a_crash_of_the_executor(tmp_path: Path) -> None:
    from microtask_operator.api.loading import load_text
    from microtask_operator.local.executor import LocalExecutor, Snapshot
    from microtask_operator.local.job import local_job
    from microtask_operator.local.rundir import RunDir

    marker = marker_for(tmp_path)
    loaded = load_text(job_yaml(total=4, per_shard=2, command=f"sleep 30 # {marker}")).jobs[0]
    run_dir = RunDir(tmp_path / "out")
    run_dir.prepare("count", fresh=True)
    job, _ = local_job(loaded.job, 2, tmp_path, run_dir.scratch)

    started: set[int] = set()
    seen_at: list[float] = []

    def crash(snapshot: Snapshot) -> None:
        if len(processes_with(marker)) >= 2:  # both commands run
            # The whole tree, read over a few progress calls: on a loaded machine one reading
            # of /proc can miss a process that is being forked or exec'd.
            seen_at.append(time.monotonic())
            started.update(descendants(os.getpid()) - before)
            if len(started) >= 5 or time.monotonic() - seen_at[0] > 3.0:
                raise RuntimeError("a bug in the display")

    before = descendants(os.getpid())
    executor = LocalExecutor(job, 2, run_dir, on_progress=crash)
    with pytest.raises(RuntimeError, match="a bug in the display"):
        executor.run()
    assert_none_left(marker)
    assert len(started) >= 5  # the fork server, two runners, two commands
    assert_gone(started)


def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path: Path) -> None:
    marker = marker_for(tmp_path)
    path = write(tmp_path, job_yaml(total=2, per_shard=1, command=f"sleep 30 # {marker}"))
    proc = start_cli("run", path, "--progress-interval", "0", cwd=tmp_path)
    try:
        wait_for_processes(marker, 2)
        second = run_cli("run", path, cwd=tmp_path)
        assert second.returncode == 2
        assert "microtask-runs/count is in use by another run (process " in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 143
    assert not (tmp_path / "microtask-runs" / "count" / ".lock").exists()
    assert_none_left(marker)
