"""Helpers for the `microtask run` tests (real processes), and unit tests of the pieces they use."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.core.types import RetryPolicy
from microtask_operator.local import processes
from microtask_operator.local.display import ProgressView, Ui, duration
from microtask_operator.local.executor import Snapshot
from microtask_operator.local.saved import Mode, failure_allowance, merge_status
from microtask_operator.local.summary import run_summary
from microtask_runner.indexset import IndexSet

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "microtask"
MICROTASK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "microtask_operator.cli"]


#: The documented keys of `microtask run -o json`, in order.
SUMMARY_KEYS = [
    "apiVersion",
    "kind",
    "job",
    "phase",
    "total",
    "succeeded",
    "failed",
    "notRun",
    "succeededAfterRetry",
    "attempts",
    "seconds",
    "succeededIndexes",
    "failedIndexes",
    "failureSummary",
    "resources",
    "output",
    "conditions",
]


def job_yaml(
    name: str = "count",
    *,
    total: int = 12,
    per_shard: int = 3,
    parallelism: int = 2,
    command: str = "echo $MICROTASK_INDEX",
    extra: str = "",
) -> str:
    """A MicrotaskJob over range(total) whose worker runs `command` with sh."""
    return (
        "apiVersion: microtask.dev/v1alpha1\n"
        "kind: MicrotaskJob\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  items: {{range: {{start: 0, end: {total}}}}}\n"
        f"  microtasksPerShard: {per_shard}\n"
        f"  parallelism: {parallelism}\n"
        f"{extra}"
        "  template:\n"
        "    spec:\n"
        "      containers:\n"
        "      - name: worker\n"
        "        image: busybox\n"
        f"        command: [sh, -c, {json.dumps(command)}]\n"
    )


def counting(path: Path, *, sleep: float = 0.0, marker: str = "") -> str:
    """A command that appends its index to `path` once it has done its work (so a microtask
    stopped midway leaves no line) and carries `marker` for pgrep."""
    pause = f"sleep {sleep}; " if sleep else ""
    tail = f" # {marker}" if marker else ""
    return f"{pause}echo $MICROTASK_INDEX >> {path}{tail}"


def write(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["COLUMNS"] = "80"  # errors must not be wrapped at 80 columns even when told the width
    return env


def run_cli(*args: str | Path, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`microtask ARGS` as a person types it, in `cwd`; stdin, stdout, stderr are not terminals."""
    result = subprocess.run(
        [*MICROTASK, *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def start_cli(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    """`microtask ARGS` started in the background, in a session of its own (for signals)."""
    return subprocess.Popen(
        [*MICROTASK, *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def state(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    return loaded


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(lines_of(path)) < count:
        assert time.monotonic() < deadline, f"{path}: fewer than {count} lines in {timeout}s"
        time.sleep(0.02)


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes holding `marker` (pgrep -f, or /proc without it)."""
    if shutil.which("pgrep"):
        found = subprocess.run(
            ["pgrep", "-af", marker], capture_output=True, text=True, check=False
        ).stdout
        return [line for line in found.splitlines() if "pgrep" not in line]
    result = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in text:
                result.append(text)
    return result


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: runners, the fork server, commands)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text(encoding="ascii", errors="replace")
                parent = int(text.rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    pending = list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        if child not in found:
            found.add(child)
            pending.extend(children.get(child, ()))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped yet, does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


def assert_gone(pids: set[int], timeout: float = 2.0) -> None:
    """Every process of `pids` ends within `timeout` (a moment for the kernel to reap them)."""
    deadline = time.monotonic() + timeout
    while left := {pid for pid in pids if alive(pid)}:
        assert time.monotonic() < deadline, [processes.PROC / str(pid) for pid in left]
        time.sleep(0.02)


# -- unit tests of the pieces ------------------------------------------------------------------


def test_merge_status_unions_successes_and_keeps_totals_over_the_whole_job() -> None:
    old = {
        "phase": "Failed",
        "succeededIndexes": "0-5",
        "failedIndexes": "6,7",
        "attempts": 10,
        "succeededAfterRetry": 1,
        "failureSummary": [
            {"exitCode": 3, "reason": "exit 3", "attempts": 4, "microtasks": 2, "sampleIndex": 6}
        ],
        "resources": {"cpuSeconds": 2.0, "wastedCpuSeconds": 1.0},
        "startTime": "2024-01-01T00:00:00Z",
    }
    new = {
        "phase": "Succeeded",
        "succeededIndexes": "6,8-9",
        "failedIndexes": "7",
        "attempts": 5,
        "failureSummary": [
            {"exitCode": 3, "reason": "exit 3", "attempts": 1, "microtasks": 1, "sampleIndex": 7}
        ],
        "resources": {"cpuSeconds": 1.5, "wastedCpuSeconds": 0.5},
        "conditions": [],
    }
    merged = merge_status(old, new, total=10, mode=Mode.FAILED, allowance=5)
    assert merged["succeededIndexes"] == "0-6,8-9"
    assert merged["failedIndexes"] == "7"
    assert (merged["total"], merged["succeeded"], merged["failed"]) == (10, 9, 1)
    assert merged["attempts"] == 15 and merged["succeededAfterRetry"] == 1
    assert merged["resources"] == {"cpuSeconds": 3.5, "wastedCpuSeconds": 1.5}
    # A rerun reran the earlier failures: their count is the rerun's; attempts add up.
    assert merged["failureSummary"] == [
        {"exitCode": 3, "reason": "exit 3", "attempts": 5, "microtasks": 1, "sampleIndex": 7}
    ]
    assert merged["startTime"] == "2024-01-01T00:00:00Z"
    assert merged["phase"] == "Succeeded"
    # Over the allowance with the earlier failures: the job failed, whatever this run says.
    resumed = merge_status(old, new, total=10, mode=Mode.RESUME, allowance=0)
    assert resumed["phase"] == "Failed" and "more than the 0 tolerated" in resumed["message"]
    assert resumed["failureSummary"][0]["microtasks"] == 3


def test_failure_allowance_takes_the_larger_of_count_and_fraction() -> None:
    assert failure_allowance(RetryPolicy(max_failed_microtasks=3), 1000) == 3
    policy = RetryPolicy(max_failed_microtasks=3, max_failed_fraction=0.01)
    assert failure_allowance(policy, 1000) == 10
    assert failure_allowance(policy, 100) == 3


def test_run_summary_has_the_documented_keys_and_plain_index_ranges() -> None:
    scattered = IndexSet.from_indexes(range(1, 4000, 2))
    assert scattered.to_compact().startswith("z:")  # what the status stores
    status = {
        "phase": "Failed",
        "succeededIndexes": IndexSet.from_indexes(range(0, 4000, 2)).to_compact(),
        "failedIndexes": scattered.to_compact(),
        "attempts": 4000,
        "retryQueue": [],
        "nextShard": 40,
        "conditions": [{"type": "Failed", "status": "True"}],
    }
    summary = run_summary(job="big", status=status, total=4100, seconds=1.23456, output="/tmp/x")
    assert list(summary) == SUMMARY_KEYS
    assert summary["failedIndexes"] == scattered.format()
    assert not summary["succeededIndexes"].startswith(("z:", "d:"))
    assert (summary["succeeded"], summary["failed"], summary["notRun"]) == (2000, 2000, 100)
    assert summary["seconds"] == 1.235
    assert run_summary(
        job="big", status=status, total=4100, seconds=0, output="/x", interrupted=True
    )["phase"] == ("Interrupted")


def test_the_plain_progress_line() -> None:
    now = [100.0]
    ui = Ui(stream=io.StringIO())
    view = ProgressView("primes", ui, total=1000, base_succeeded=100, clock=lambda: now[0])
    now[0] += 10.0
    line = view.line(Snapshot(total=900, succeeded=20, failed=3, running=8, queued=0))
    assert line == "primes: 120/1000 succeeded, 3 failed, 8 running, 2.3/s, ETA 6m21s"
    assert [duration(s) for s in (9.4, 73, 7510, float("inf"))] == ["9s", "1m13s", "2h05m10s", "?"]


def test_kill_tree_ends_groups_started_below_a_process() -> None:
    marker = f"kill-tree-{os.getpid()}-{time.monotonic_ns()}"
    # A parent in its own group whose child starts a group of its own, like runner and command.
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 30 # {marker}'], start_new_session=True)\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, marker], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(processes_with(marker)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert processes.groups_below(parent.pid)
    processes.kill_tree(parent.pid)
    parent.wait(timeout=5)
    assert parent.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while processes_with(marker):
        assert time.monotonic() < deadline, processes_with(marker)
        time.sleep(0.02)


@pytest.mark.parametrize("text", ["", "not json", '{"version": 99}'])
def test_unreadable_saved_states_are_run_dir_errors(tmp_path: Path, text: str) -> None:
    from microtask_operator.local.rundir import RunDir, RunDirError

    (tmp_path / "run.json").write_text(text, encoding="utf-8")
    with pytest.raises(RunDirError):
        RunDir(tmp_path).load_state()
