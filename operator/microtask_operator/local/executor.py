"""The local executor: the core's decisions carried out with local processes as the nodes.

Each shard is one `microtask-runner` process started with the same environment a shard's pod gets,
so a spec that runs here runs the same way on a cluster (the image is ignored: the worker command
runs on this machine). A thread waits on each process so the loop wakes the moment one ends.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report, ReportError

from ..core.planner import Decision, Deltas, plan
from ..core.state import CoreState
from ..core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteShard,
    ObservedShard,
    Pool,
    ShardPhase,
    ShardPlan,
)

# The runner's "some microtasks failed" exit code: the pod did its job, the report says the rest.
RUNNER_SOME_FAILED = 10
# The longest the loop sleeps without news, so a Ctrl-C or a due backoff is never late by much.
MAX_IDLE_SECONDS = 0.5


@dataclass(frozen=True)
class LocalJob:
    """What the executor needs to start a shard's runner; built from a validated MicrotaskJob."""

    name: str
    spec: CoreSpec
    command: Sequence[str]  # the worker's command + args (empty in Python mode)
    items_env: Callable[[IndexSet], str]  # MICROTASK_ITEMS for a shard's indexes
    callable: str | None = None
    timeout_seconds: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # from the worker container's env
    workdir: Path = Path(".")


@dataclass
class _Process:
    plan: ShardPlan
    node: str
    popen: subprocess.Popen[bytes]
    report_path: Path
    log: IO[bytes]
    started_at: float


@dataclass
class RunResult:
    decision: Decision
    shards: int
    seconds: float
    log_dir: Path
    retried: int = 0
    failure_examples: dict[int, str] = field(default_factory=dict)


class LocalExecutor:
    """Runs one MicrotaskJob to the end on this machine."""

    def __init__(
        self,
        job: LocalJob,
        workers: int,
        log_dir: Path,
        on_progress: Callable[[Decision, Deltas], None] | None = None,
        clock: Callable[[], float] = time.time,
        runner: Sequence[str] = (sys.executable, "-m", "microtask_runner"),
    ) -> None:
        self.job = job
        self.workers = max(1, workers)
        self.log_dir = log_dir
        self.on_progress = on_progress
        self.clock = clock
        self.runner = tuple(runner)
        self.nodes = [f"local-{i}" for i in range(self.workers)]
        # All local slots serve the CPU pool: this machine has no GPU pool of its own.
        self.cluster = ClusterView(ready_nodes={Pool.CPU: frozenset(self.nodes)})
        self.running: dict[int, _Process] = {}
        self.finished: dict[int, ObservedShard] = {}
        self.exits: queue.Queue[int] = queue.Queue()
        self.shards_started = 0
        self.retried = 0
        self.failure_examples: dict[int, str] = {}

    # -- processes -------------------------------------------------------------------------

    def free_node(self, avoid: Sequence[str]) -> str:
        busy = {p.node for p in self.running.values()}
        for preferred in (True, False):
            for node in self.nodes:
                if node in busy:
                    continue
                if preferred and node in avoid:
                    continue
                return node
        # More shards than slots cannot happen (parallelism is capped by workers).
        return self.nodes[len(self.running) % len(self.nodes)]

    def start(self, shard: ShardPlan, now: float) -> None:
        report_path = self.log_dir / f"shard-{shard.shard_id}.report"
        report_path.unlink(missing_ok=True)
        env = dict(os.environ)
        # `python3` in a worker command means the Python running microtask (as the image's own
        # python3 would on a cluster), not whatever a version-manager shim picks.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(self.job.env)
        env.update(
            MICROTASK_JOB=self.job.name,
            MICROTASK_SHARD=str(shard.shard_id),
            MICROTASK_ATTEMPT=str(shard.attempt),
            MICROTASK_POOL=shard.pool.value,
            MICROTASK_INDEXES=shard.indexes.to_compact(),
            MICROTASK_ITEMS=self.job.items_env(shard.indexes),
            MICROTASK_REPORT_PATH=str(report_path),
        )
        if self.job.timeout_seconds is not None:
            env["MICROTASK_TIMEOUT_SECONDS"] = str(self.job.timeout_seconds)
        if self.job.callable:
            env["MICROTASK_CALLABLE"] = self.job.callable
            # Python mode imports the user's module from the spec's folder, as a pod's workdir.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.job.workdir.resolve()), env.get("PYTHONPATH", "")) if p
            )
        argv = [*self.runner, "--", *self.job.command]
        log = (self.log_dir / f"shard-{shard.shard_id}.log").open("ab")
        avoid = (*shard.avoid_nodes_hard, *shard.avoid_nodes_soft)
        popen = subprocess.Popen(
            argv,
            cwd=self.job.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop the shards ourselves
        )
        self.running[shard.shard_id] = _Process(
            shard, self.free_node(avoid), popen, report_path, log, now
        )
        self.shards_started += 1
        threading.Thread(
            target=self._wait,
            args=(shard.shard_id, popen),
            daemon=True,
            name=f"shard-{shard.shard_id}",
        ).start()

    def _wait(self, shard_id: int, popen: subprocess.Popen[bytes]) -> None:
        popen.wait()
        self.exits.put(shard_id)

    def collect(self, shard_id: int) -> None:
        process = self.running.pop(shard_id, None)
        if process is None:
            return  # deleted meanwhile
        process.log.close()
        code = process.popen.returncode
        report: Report | None = None
        try:
            report = Report.decode(process.report_path.read_text(encoding="utf-8"))
        except (OSError, ReportError, UnicodeDecodeError):
            report = None
        if report is not None:
            for exit_code, text in report.errors.items():
                self.failure_examples.setdefault(exit_code, text)
        ended_well = code in (0, RUNNER_SOME_FAILED)
        self.finished[shard_id] = ObservedShard(
            shard_id=shard_id,
            indexes=process.plan.indexes,
            attempt=process.plan.attempt,
            pool=process.plan.pool,
            created_at=process.started_at,
            phase=ShardPhase.SUCCEEDED if ended_well else ShardPhase.FAILED,
            copy_of=process.plan.copy_of,
            node=process.node,
            started_at=process.started_at,
            finished_at=self.clock(),
            report=report,
            exit_code=code if code >= 0 else 128 - code,
            failure_reason=None if ended_well else f"runner exited with {code}",
        )

    def stop(self, shard_id: int) -> None:
        process = self.running.pop(shard_id, None)
        self.finished.pop(shard_id, None)
        if process is None:
            return
        _terminate(process.popen)
        process.log.close()

    def stop_all(self) -> None:
        for shard_id in list(self.running):
            self.stop(shard_id)

    # -- the loop --------------------------------------------------------------------------

    def observed(self) -> list[ObservedShard]:
        shards = list(self.finished.values())
        for shard_id, p in self.running.items():
            shards.append(
                ObservedShard(
                    shard_id=shard_id,
                    indexes=p.plan.indexes,
                    attempt=p.plan.attempt,
                    pool=p.plan.pool,
                    created_at=p.started_at,
                    phase=ShardPhase.RUNNING,
                    copy_of=p.plan.copy_of,
                    node=p.node,
                    started_at=p.started_at,
                )
            )
        return shards

    def run(self) -> RunResult:
        started = self.clock()
        state = CoreState.initial()
        decision: Decision | None = None
        try:
            while True:
                now = self.clock()
                decision = plan(self.job.spec, state, self.observed(), self.cluster, now)
                state = decision.state
                for action in decision.actions:
                    if isinstance(action, CreateShard):
                        self.start(action.plan, now)
                for action in decision.actions:
                    if isinstance(action, DeleteShard):
                        self.stop(action.shard_id)
                self.retried += decision.deltas.retried
                if self.on_progress is not None:
                    self.on_progress(decision, decision.deltas)
                if decision.done and not self.running:
                    break
                self.wait(decision.next_wakeup)
        finally:
            self.stop_all()
        assert decision is not None
        return RunResult(
            decision=decision,
            shards=self.shards_started,
            seconds=self.clock() - started,
            log_dir=self.log_dir,
            retried=self.retried,
            failure_examples=self.failure_examples,
        )

    def wait(self, wakeup: float | None) -> None:
        """Block until a shard ends, a decision is due, or a short while passes."""
        timeout = MAX_IDLE_SECONDS
        if wakeup is not None:
            timeout = min(timeout, max(0.0, wakeup - self.clock()))
        try:
            shard_id = self.exits.get(timeout=timeout) if timeout > 0 else self.exits.get_nowait()
        except queue.Empty:
            return
        self.collect(shard_id)
        # Drain whatever else ended meanwhile, so one decision covers them all.
        while True:
            try:
                self.collect(self.exits.get_nowait())
            except queue.Empty:
                return


def _terminate(popen: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
