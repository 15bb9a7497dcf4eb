"""The local executor's runners come from a warm fork server: one child per shard, isolated from
the next, handled like a spawned runner when killed or stopped, and nothing lost or counted twice
when the server itself dies. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.core.types import CoreSpec, RetryPolicy
from microtask_operator.local.executor import LocalExecutor, LocalJob, RunResult, Snapshot
from microtask_operator.local.launcher import (
    FORK_SERVER,
    WORKER,
    ForkServer,
    Launcher,
    helper_argv,
)
from microtask_operator.local.rundir import RunDir
from microtask_runner.indexset import IndexSet
from test_local_support import (
    alive,
    assert_gone,
    descendants,
    job_yaml,
    lines_of,
    processes_with,
    start_cli,
    write,
)

#: A Python-mode worker that writes what its process sees, then dirties everything a shard could
#: leave behind for the next one: the environment, the folder, a signal handler, a module global.
PROBE = """
import json, os, signal, sys

calls = 0

def probe(index, item):
    global calls
    calls += 1
    with open(os.environ["PROBE_OUT"], "a") as out:
        out.write(json.dumps({
            "index": index,
            "shard": os.environ["MICROTASK_SHARD"],
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "leak": os.environ.get("PROBE_LEAK"),
            "calls": calls,
            "cwd": os.getcwd(),
            "usr1": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
            "path0": sys.path[0],
        }) + "\\n")
    os.environ["PROBE_LEAK"] = str(index)
    os.chdir("/")
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
"""


def _items(_: IndexSet) -> str:
    return json.dumps({"range": {"start": 0, "step": 1}})


def make_job(
    tmp_path: Path,
    *,
    total: int,
    per_shard: int,
    workers: int = 2,
    command: str | None = None,
    callable: str | None = None,
    retry: RetryPolicy | None = None,
) -> LocalJob:
    spec = CoreSpec(
        total=total,
        microtasks_per_shard=per_shard,
        parallelism=workers,
        retry=retry or RetryPolicy(),
    )
    return LocalJob(
        name="fork",
        spec=spec,
        command=["sh", "-c", command] if command is not None else [],
        items_env=_items,
        callable=callable,
        env={"PROBE_OUT": str(tmp_path / "probe.jsonl")},
        workdir=tmp_path,
    )


def make_executor(
    tmp_path: Path,
    job: LocalJob,
    *,
    workers: int = 2,
    fork: bool = True,
    persistent: bool = True,
    on_progress: Callable[[Snapshot], None] | None = None,
    folder: str = "out",
) -> LocalExecutor:
    run_dir = RunDir(tmp_path / folder)
    run_dir.prepare(job.name, fresh=True)
    return LocalExecutor(
        job, workers, run_dir, fork=fork, persistent=persistent, on_progress=on_progress
    )


#: How a command-mode shard's runner is started: (fork, persistent) for make_executor.
MODES = {"spawned": (False, False), "forked": (True, False), "worker": (True, True)}


def started(executor: LocalExecutor) -> dict[str, int]:
    launcher = executor.launcher
    counts = {"spawned": launcher.spawned, "forked": launcher.forked, "worker": launcher.worked}
    return {mode: n for mode, n in counts.items() if n}


def probes(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "probe.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def probe_without_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The probe module in the job's folder, Python writing no bytecode (as in many images), and
    a cache folder of the test's own; returns the compiled runner's cache there."""
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "microtask" / "pycache"


def probes_of_shards(tmp_path: Path, total: int, per_shard: int) -> dict[int, dict[str, Any]]:
    """Each microtask's probe by index: every one probed once, with its own shard's environment."""
    seen = probes(tmp_path)
    assert sorted(p["index"] for p in seen) == list(range(total))
    for probe in seen:
        assert probe["shard"] == str(probe["index"] // per_shard)
    return {p["index"]: p for p in seen}


def test_shards_run_in_children_forked_from_one_warm_process(tmp_path: Path) -> None:
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    job = make_job(tmp_path, total=6, per_shard=1, callable="mt_probe:probe")
    executor = make_executor(tmp_path, job)
    result = executor.run()

    assert result.decision.status["phase"] == "Succeeded"
    seen = probes(tmp_path)
    assert sorted(p["index"] for p in seen) == list(range(6))
    # Six runners, each a process of its own and the leader of its group, all children of the
    # same process, which is not the executor: no new interpreter per shard.
    assert len({p["pid"] for p in seen}) == 6
    assert all(p["pgid"] == p["pid"] for p in seen)
    parents = {p["ppid"] for p in seen}
    assert len(parents) == 1 and os.getpid() not in parents
    assert (executor.launcher.forked, executor.launcher.spawned) == (6, 0)
    # The server is gone with the run.
    assert not alive(parents.pop())


def test_without_the_fork_server_each_shard_is_a_new_interpreter(tmp_path: Path) -> None:
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    job = make_job(tmp_path, total=3, per_shard=1, callable="mt_probe:probe")
    executor = make_executor(tmp_path, job, fork=False)
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert {p["ppid"] for p in probes(tmp_path)} == {os.getpid()}
    assert (executor.launcher.forked, executor.launcher.spawned) == (0, 3)


def test_nothing_a_shard_does_reaches_the_next_one_on_the_same_slot(tmp_path: Path) -> None:
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    # One worker: every shard runs after the previous one, from the same server.
    job = make_job(tmp_path, total=8, per_shard=2, workers=1, callable="mt_probe:probe")
    executor = make_executor(tmp_path, job, workers=1)
    assert executor.run().decision.status["phase"] == "Succeeded"

    seen = probes_of_shards(tmp_path, 8, 2)
    assert len({p["ppid"] for p in seen.values()}) == 1
    for index, probe in seen.items():
        first = index % 2 == 0  # the first microtask of its shard
        # A fresh process per shard: what the previous shard set is not there...
        assert probe["leak"] == (None if first else str(index - 1))
        assert probe["calls"] == (1 if first else 2)  # the user's module imported anew
        assert probe["usr1"] is first
        assert probe["cwd"] == (str(tmp_path) if first else "/")
        assert probe["path0"] == str(tmp_path)  # like `python -m` started in the job's folder


def test_without_bytecode_writing_the_shards_share_compiled_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_without_bytecode(tmp_path, monkeypatch)
    job = make_job(tmp_path, total=4, per_shard=1, workers=1, callable="mt_probe:probe")
    executor = make_executor(tmp_path, job, workers=1)
    assert executor.run().decision.status["phase"] == "Succeeded"
    # Compiled once into the run's own folder, never next to the user's source.
    assert list(executor.scratch.joinpath("pycache").rglob("mt_probe*.pyc"))
    assert not (tmp_path / "__pycache__").exists()
    assert {p["index"] for p in probes(tmp_path)} == set(range(4))
    # The shards' reports (in a folder of their own in memory where there is /dev/shm) are
    # gone with the run.
    assert executor.reports is not None
    assert not list(executor.reports.glob("shard-*.report"))
    assert executor.own_reports is executor.reports.is_relative_to("/dev/shm")
    if executor.own_reports:
        assert not executor.reports.exists()


@pytest.mark.parametrize("mode", ["python", "command"])
def test_without_bytecode_writing_servers_and_workers_keep_the_runner_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    cache = probe_without_bytecode(tmp_path, monkeypatch)

    def run(folder: str) -> LocalExecutor:
        if mode == "python":
            job = make_job(tmp_path, total=2, per_shard=1, workers=1, callable="mt_probe:probe")
        else:
            job = make_job(tmp_path, total=2, per_shard=1, workers=1, command="true")
        executor = make_executor(tmp_path, job, workers=1, folder=folder)
        assert executor.run().decision.status["phase"] == "Succeeded"
        return executor

    executor = run("first")
    kept = {path: path.stat().st_mtime_ns for path in cache.rglob("*.pyc")}
    # The runner's own modules, compiled once for the next start; nothing of the user's.
    assert any(path.match("microtask_runner/cli.*.pyc") for path in kept)
    assert not any("mt_probe" in path.name for path in kept)
    if mode == "python":
        assert list(executor.scratch.joinpath("pycache").rglob("mt_probe*.pyc"))
    assert not (tmp_path / "__pycache__").exists()
    # The next run reads them as they are.
    run("second")
    assert {path: path.stat().st_mtime_ns for path in kept} == kept


def test_a_helper_reads_the_runner_compiled_only_where_bytecode_is_not_written(
    tmp_path: Path,
) -> None:
    server = [*FORK_SERVER, "--pycache", "/run"]
    off = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert helper_argv(server, off, tmp_path) == [
        sys.executable,
        "-X",
        f"pycache_prefix={tmp_path}",
        "-m",
        "microtask_runner.forkserver",
        "--compiled",
        str(tmp_path),
        "--pycache",
        "/run",
    ]
    assert helper_argv(WORKER, off, tmp_path)[-3:] == ["--compiled", str(tmp_path), "--worker"]
    # Bytecode written as usual, the user's own prefix, no cache, another command: as given.
    assert helper_argv(server, {}, tmp_path) == server
    assert helper_argv(server, {**off, "PYTHONPYCACHEPREFIX": "/mine"}, tmp_path) == server
    assert helper_argv(server, off, None) == server
    other = [sys.executable, "-c", "pass"]
    assert helper_argv(other, off, tmp_path) == other


def test_reports_left_by_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here: reports go to the run's scratch")
    # A pid that is surely gone: a child of ours, reaped.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = shm / f"microtask-reports-{child.pid}-test"
    stale.mkdir()
    (stale / "shard-0.report").write_text("{}")
    (tmp_path / "mt_probe.py").write_text(PROBE, encoding="utf-8")
    job = make_job(tmp_path, total=2, per_shard=1, workers=1, callable="mt_probe:probe")
    executor = make_executor(tmp_path, job, workers=1)
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert not stale.exists()


def killer(tmp_path: Path) -> str:
    """Index 3 kills its own runner (SIGKILL) the first time; every index appends to done.txt."""
    flag = tmp_path / "killed"
    return (
        f"if [ $MICROTASK_INDEX = 3 ] && [ ! -e {flag} ]; then touch {flag}; kill -9 $PPID; "
        f"sleep 0.2; exit 1; fi; echo $MICROTASK_INDEX >> {tmp_path / 'done.txt'}"
    )


def outcome(result: RunResult) -> dict[str, Any]:
    """The parts of the final status a killed runner decides (no times)."""
    status = result.decision.status
    keep = ("phase", "succeeded", "failed", "attempts", "succeededAfterRetry", "failureSummary")
    return {key: status.get(key) for key in keep}


def test_a_killed_forked_runner_is_handled_as_a_killed_spawned_one(tmp_path: Path) -> None:
    results = {}
    ended: dict[str, list[tuple[str, int | None, str | None]]] = {}
    for mode, (fork, persistent) in MODES.items():
        folder = tmp_path / mode
        folder.mkdir()
        job = make_job(
            folder, total=6, per_shard=2, command=killer(folder), retry=RetryPolicy(max_attempts=3)
        )
        executor = make_executor(folder, job, fork=fork, persistent=persistent)
        results[mode] = outcome(executor.run())
        # How each shard's end was observed: phase, exit code, reason.
        ended[mode] = sorted(
            (shard.phase.value, shard.exit_code, shard.failure_reason)
            for shard in executor.finished.values()
        )
        assert sorted(map(int, lines_of(folder / "done.txt"))) == list(range(6))
        assert list(started(executor)) == [mode]

    assert results["forked"] == results["spawned"] == results["worker"]
    assert results["worker"]["phase"] == "Succeeded" and results["worker"]["succeeded"] == 6
    assert ended["forked"] == ended["spawned"] == ended["worker"]
    assert ("Failed", 137, "runner exited with -9") in ended["worker"]


def test_the_fork_server_dying_mid_run_loses_and_double_counts_nothing(tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    command = f"sleep 0.15; echo $MICROTASK_INDEX >> {done}"
    job = make_job(tmp_path, total=16, per_shard=4, command=command)
    killed: list[int] = []

    def kill_the_server(snapshot: Snapshot) -> None:
        server = executor.launcher.server
        if not killed and server is not None and len(lines_of(done)) >= 2:
            killed.append(server.pid)
            os.kill(server.pid, signal.SIGKILL)

    executor = make_executor(tmp_path, job, persistent=False, on_progress=kill_the_server)
    result = executor.run()

    assert killed, "the server was never killed"
    status = result.decision.status
    assert (status["phase"], status["succeeded"], status["failed"]) == ("Succeeded", 16, 0)
    # Every index ran exactly once: what the orphaned runners finished is kept, what they were
    # running is stopped and run again, not charged.
    assert sorted(map(int, lines_of(done))) == list(range(16))
    assert status["attempts"] == 16
    records = [
        json.loads(line)
        for path in (tmp_path / "out" / "records").rglob("*")
        if path.is_file()
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    succeeded = [r["index"] for r in records if r.get("outcome") == "succeeded"]
    assert sorted(succeeded) == list(range(16))
    # A new server took over: later shards were forked again.
    assert executor.launcher.deaths == 1
    assert executor.launcher.spawned == 0
    assert not alive(killed[0])


def test_the_child_forked_ahead_runs_nothing_without_its_request(tmp_path: Path) -> None:
    server = ForkServer(FORK_SERVER, env=dict(os.environ), cwd=tmp_path)
    try:
        # The next request's child waits already, on nothing of the server's.
        deadline = time.monotonic() + 5
        while not (ahead := descendants(server.pid)):
            assert time.monotonic() < deadline, "no child forked ahead"
            time.sleep(0.01)
        (spare,) = ahead
        held = [os.readlink(fd) for fd in Path(f"/proc/{spare}/fd").iterdir()]
        assert server.popen.stdin is not None and server.popen.stdout is not None
        talk = {
            os.readlink(f"/proc/self/fd/{f.fileno()}")
            for f in (server.popen.stdin, server.popen.stdout)
        }
        # Its own request pipe only: none of the server's, whose end the executor must see.
        assert len([target for target in held if target.startswith("pipe:")]) == 1
        assert not talk & set(held)
        assert os.getpgid(spare) == spare
        # The server dies before any request: the child exits, and no runner is left unseen.
        os.kill(server.pid, signal.SIGKILL)
        assert_gone({spare})
        assert not list(tmp_path.iterdir())
    finally:
        server.kill()
        server.close(timeout=1.0)


def test_a_fork_server_that_keeps_dying_gives_way_to_spawning(tmp_path: Path) -> None:
    done = tmp_path / "done.txt"
    job = make_job(tmp_path, total=6, per_shard=1, command=f"echo $MICROTASK_INDEX >> {done}")
    executor = make_executor(tmp_path, job)
    executor.launcher = Launcher(server_argv=[sys.executable, "-c", "raise SystemExit(3)"])
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert sorted(map(int, lines_of(done))) == list(range(6))
    launcher = executor.launcher
    assert (launcher.deaths, launcher.forked, launcher.spawned) == (3, 0, 6)


def test_microtask_run_killed_outright_leaves_no_runner_behind(tmp_path: Path) -> None:
    # SIGKILL gives `microtask run` no chance to stop anything: the fork server sees its end and
    # stops the runners it forked (each stops its command and writes its report).
    marker = f"mt-marker-{tmp_path.name}-{time.monotonic_ns()}"
    path = write(tmp_path, job_yaml(total=4, per_shard=2, command=f"sleep 30 # {marker}"))
    proc = start_cli("run", path, "--workers", "2", "--progress-interval", "0", cwd=tmp_path)
    deadline = time.monotonic() + 15
    while len(processes_with(marker)) < 2:
        assert time.monotonic() < deadline, processes_with(marker)
        time.sleep(0.02)
    tree = descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=10)
    assert len(tree) >= 4  # two runners (persistent workers), two commands
    assert_gone(tree, timeout=10)
    assert not processes_with(marker)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_runner_whose_output_is_the_shard_log(tmp_path: Path, mode: str) -> None:
    job = make_job(
        tmp_path, total=2, per_shard=2, command="echo out-$MICROTASK_INDEX; echo err >&2"
    )
    fork, persistent = MODES[mode]
    executor = make_executor(tmp_path, job, fork=fork, persistent=persistent)
    assert executor.run().decision.status["phase"] == "Succeeded"
    assert list(started(executor)) == [mode]
    log = (tmp_path / "out" / "logs" / "fork-0.log").read_text(encoding="utf-8")
    assert "out-0" in log and "out-1" in log and log.count("err") >= 2
    assert "::microtask:: index=1 attempt=1 end exit=0" in log
