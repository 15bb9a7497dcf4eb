"""The local executor: the core's decisions carried out with local processes as the nodes.

Each shard is one run of `microtask-runner` with the same environment a shard's pod gets, so a
spec that runs here runs the same way on a cluster (the image is ignored: the worker command runs
on this machine). The runner writes its records to the run's folder (the result store) and its
output to the shard's log there. In command mode shards go to persistent workers that run shard
after shard; in Python mode runners are forked from a warm fork server; either way they are
spawned as new interpreters where that is not possible (see launcher.py). The loop wakes the
moment a runner ends; between ends, it reads the running shards' reports (the runner rewrites
its report before each microtask), so progress moves per microtask, not per shard. The reports
live in a folder of the run's own in /dev/shm where there is one (else in the run's scratch).

Asked to stop, the executor launches nothing more, asks every runner to stop (SIGTERM: the runner
stops its microtask and writes its final report), kills what is still there after a grace period,
and keeps what the reports show as done; interrupted microtasks are not charged an attempt.
Whatever happens, no runner outlives the executor.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from microtask_runner import contract
from microtask_runner.contract import log_name
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report, ReportError

from ..core import retries
from ..core.decision import apply
from ..core.planner import Decision, plan
from ..core.shardsize import shards_at_most
from ..core.state import CoreState
from ..core.types import (
    ClusterView,
    CoreSpec,
    CreateShard,
    DeleteShard,
    Event,
    ObservedShard,
    Pool,
    Progress,
    ShardPhase,
    ShardPlan,
    SpeculationPolicy,
    SuspendShard,
)
from .launcher import SPAWN_RUNNER, ForkedRunner, Launcher, RunnerProcess, compiled_cache
from .processes import kill_tree, signal_group
from .rundir import RunDir

# The runner's "some microtasks failed" exit code: the pod did its job, the report says the rest.
RUNNER_SOME_FAILED = 10
# The longest the loop sleeps without news, so a stop request or a due backoff is never late by
# much, and the progress bar moves at least this often.
MAX_IDLE_SECONDS = 0.5
# How often the running shards' reports are read for the progress display, at most.
REPORT_READ_SECONDS = 0.1
# How long stopped runners get to write their final reports before they are killed.
DEFAULT_GRACE_SECONDS = 5.0


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


@dataclass(frozen=True)
class Snapshot:
    """Progress of the microtasks this executor runs, counted per microtask."""

    total: int
    succeeded: int  # harvested, plus what running shards' reports already show
    failed: int  # permanently
    running: int
    queued: int  # waiting for a retry


@dataclass
class _Process:
    plan: ShardPlan
    node: str
    runner: RunnerProcess
    report_path: Path
    started_at: float
    #: What the shard's report showed as succeeded when last read (for the progress display).
    seen: IndexSet = IndexSet.EMPTY
    #: How many of its microtasks the report showed as ended (succeeded or failed) when last read:
    #: the shard's progress, by which the core tells a straggler early. None: not read yet.
    ended: int | None = None


def _reports_folder(scratch: Path) -> tuple[Path, bool]:
    """Where the shards' reports go, and whether the folder is ours to remove at the end.

    A folder of its own in /dev/shm where there is one: a runner updates its report in place
    all along, and the executor reads and removes one per shard; on a busy disk a truncate or an
    unlink takes a millisecond or more, in memory a few microseconds. Else the run's scratch.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        # Those of runs that were killed outright (their executor's pid is gone) go first.
        for stale in shm.glob(f"{_REPORTS_PREFIX}*"):
            pid = stale.name[len(_REPORTS_PREFIX) :].partition("-")[0]
            if pid.isdigit() and not _running(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        with contextlib.suppress(OSError):
            prefix = f"{_REPORTS_PREFIX}{os.getpid()}-"
            return Path(tempfile.mkdtemp(prefix=prefix, dir=shm)), True
    return scratch, False


_REPORTS_PREFIX = "microtask-reports-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's: not ours to judge
    return True


@dataclass
class RunResult:
    decision: Decision
    shards: int
    seconds: float
    interrupted: bool = False
    # Run time of the shards' processes (seconds), wasted or not.
    shard_seconds: float = 0.0
    failure_examples: dict[int, str] = field(default_factory=dict)


class LocalExecutor:
    """Runs one MicrotaskJob on this machine until it ends or is asked to stop."""

    def __init__(
        self,
        job: LocalJob,
        workers: int,
        run_dir: RunDir,
        *,
        state: CoreState | None = None,
        on_progress: Callable[[Snapshot], None] | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        on_stopping: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        runner: Sequence[str] = SPAWN_RUNNER,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        fork: bool = True,
        persistent: bool = True,
        reuse_processes: bool = False,
    ) -> None:
        self.job = job
        self.workers = max(1, workers)
        self.run_dir = run_dir
        self.initial_state = state or CoreState.initial()
        self.on_progress = on_progress
        self.on_decision = on_decision
        self.on_stopping = on_stopping
        self.clock = clock
        self.runner = tuple(runner)
        self.grace_seconds = grace_seconds
        # Resolved once: the runners work in the job's folder, so every path they get is absolute.
        self.workdir = job.workdir.resolve()
        self.folder = run_dir.path.resolve()
        self.scratch = run_dir.scratch.resolve()
        self.base_env: dict[str, str] | None = None
        # The fork server runs the standard runner only: another runner command is spawned.
        # Command mode runs nothing of the user's in the runner's process: its shards go to
        # persistent workers; Python mode imports the user's module, so a fresh fork per shard,
        # unless asked to reuse processes (``reuse_processes``: the module imported once per
        # worker, and whatever a shard leaves in the process is there for the next).
        standard = fork and self.runner == SPAWN_RUNNER
        self.launcher = Launcher(
            spawn_argv=self.runner,
            fork=standard,
            server_log=run_dir.scratch / "fork-server.log",
            pycache=self.scratch / "pycache",
            compiled=compiled_cache() if standard else None,
            persistent=standard and persistent and (reuse_processes or not job.callable),
            # No more workers than shards can be in flight, or than the job has.
            slots=min(
                self.workers,
                max(1, job.spec.parallelism),
                shards_at_most(job.spec),
            ),
        )
        self.nodes = [f"local-{i}" for i in range(self.workers)]
        # All local slots serve the CPU pool: this machine has no GPU pool of its own.
        self.cluster = ClusterView(ready_nodes={Pool.CPU: frozenset(self.nodes)})
        self.running: dict[int, _Process] = {}
        self.finished: dict[int, ObservedShard] = {}
        self.exits: queue.Queue[int] = queue.Queue()
        self.shards_started = 0
        self.shard_seconds = 0.0
        self.failure_examples: dict[int, str] = {}
        self.stop_requested = False
        self.kill_requested = False
        self.reports_read_at = -REPORT_READ_SECONDS
        #: Reports of ended shards, removed while the loop waits (see `wait`).
        self.garbage: list[Path] = []
        self.reports: Path | None = None
        self.own_reports = False

    # -- requests from signal handlers (they only set flags or kill) -------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """Stop gently: launch nothing more, stop the runners, keep what they finished."""
        del signum
        self.stop_requested = True

    def kill_now(self) -> None:
        """Stop at once: kill every runner's process tree (a second Ctrl-C)."""
        self.stop_requested = True
        self.kill_requested = True
        self.kill_all()

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

    def job_env(self) -> dict[str, str]:
        """The part of a runner's environment that is the same for every shard of the job."""
        env = dict(os.environ)
        # `python3` in a worker command means the Python running microtask (as the image's own
        # python3 would on a cluster), not whatever a version-manager shim picks.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(self.job.env)
        env.update(
            {
                contract.ENV_JOB: self.job.name,
                # The runner works in the job's folder: every path it gets is absolute.
                contract.ENV_OUTPUT_URL: str(self.folder),
                # The runner's output already goes to the shard's log in the same folder.
                contract.ENV_LOG_COPY: "false",
                # Same local disk as the run's own files: no sync per shard (see contract).
                contract.ENV_STORE_SYNC: "false",
            }
        )
        for name in (
            contract.ENV_TIMEOUT_SECONDS,
            contract.ENV_CALLABLE,
            contract.ENV_RETRY_AFTER_SECONDS,
            contract.ENV_NO_RETRY_EXIT_CODES,
        ):
            env.pop(name, None)
        if self.job.timeout_seconds is not None:
            env[contract.ENV_TIMEOUT_SECONDS] = str(self.job.timeout_seconds)
        if self.job.callable:
            env[contract.ENV_CALLABLE] = self.job.callable
            # Python mode imports the user's module from the spec's folder, as a pod's workdir.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.workdir), env.get("PYTHONPATH", "")) if p
            )
        return env

    def runner_env(self, shard: ShardPlan, node: str, report_path: Path) -> dict[str, str]:
        if self.base_env is None:
            self.base_env = self.job_env()
        env = dict(self.base_env)
        env[contract.ENV_SHARD] = str(shard.shard_id)
        env[contract.ENV_ATTEMPT] = str(shard.attempt)
        env[contract.ENV_POOL] = shard.pool.value
        env[contract.ENV_NODE] = node
        env[contract.ENV_INDEXES] = shard.indexes.to_compact()
        env[contract.ENV_ITEMS] = self.job.items_env(shard.indexes)
        env[contract.ENV_REPORT_PATH] = str(report_path)
        env.update(retries.in_pod_env(self.job.spec.retry, shard.attempt))
        return env

    def start(self, shard: ShardPlan, now: float) -> None:
        # Shard ids are never reused within a run; a resumed run's reports are gone (see `run`).
        if self.reports is None:
            self.reports, self.own_reports = _reports_folder(self.scratch)
        report_path = self.reports / f"shard-{shard.shard_id}.report"
        node = self.free_node((*shard.avoid_nodes_hard, *shard.avoid_nodes_soft))
        env = self.runner_env(shard, node, report_path)
        shard_id = shard.shard_id
        runner = self.launcher.launch(
            ["--", *self.job.command],
            env=env,
            cwd=self.workdir,
            log=self.folder / log_name(self.job.name, shard_id),
            on_exit=lambda: self.exits.put(shard_id),
        )
        self.running[shard_id] = _Process(shard, node, runner, report_path, now)
        self.shards_started += 1

    def read_report(self, process: _Process) -> Report | None:
        # A bare read: a text file object costs several times the read itself, once per shard.
        try:
            fd = os.open(process.report_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = b""
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
            finally:
                os.close(fd)
            return Report.decode(data.decode("utf-8"))
        except (OSError, ReportError, UnicodeDecodeError):
            return None

    def collect(self, shard_id: int, *, stopped: bool = False) -> None:
        """Turn an ended runner into an observed shard for the next decision.

        `stopped`: we ended it (a stop request). What its report shows as done counts; the rest
        goes back without being charged (the phase says "ended well", or "lost" without a report).
        """
        process = self.running.pop(shard_id, None)
        if process is None:
            return  # deleted meanwhile
        code = process.runner.wait()
        report = self.read_report(process)
        self.garbage.append(process.report_path)
        if report is not None:
            for exit_code, text in report.errors.items():
                self.failure_examples.setdefault(exit_code, text)
        now = self.clock()
        self.shard_seconds += max(0.0, now - process.started_at)
        usable = report is not None and not report.runner_error
        if stopped:
            phase = ShardPhase.SUCCEEDED if usable else ShardPhase.LOST
            ended_well = True
        else:
            ended_well = code in (0, RUNNER_SOME_FAILED)
            phase = ShardPhase.SUCCEEDED if ended_well else ShardPhase.FAILED
        self.finished[shard_id] = ObservedShard(
            shard_id=shard_id,
            indexes=process.plan.indexes,
            attempt=process.plan.attempt,
            pool=process.plan.pool,
            created_at=process.started_at,
            phase=phase,
            copy_of=process.plan.copy_of,
            node=process.node,
            started_at=process.started_at,
            finished_at=now,
            report=report,
            exit_code=code if code >= 0 else 128 - code,
            failure_reason=None if ended_well else f"runner exited with {code}",
        )

    def stop(self, shard_id: int) -> None:
        """The core no longer wants this shard (a losing copy, a cancelled shard)."""
        process = self.running.pop(shard_id, None)
        self.finished.pop(shard_id, None)
        if process is None:
            return
        self._end([process])
        self.shard_seconds += max(0.0, self.clock() - process.started_at)
        self.garbage.append(process.report_path)

    def _end(self, processes: Sequence[_Process]) -> None:
        """SIGTERM, a grace period for final reports, then SIGKILL of what is left."""
        alive = [p for p in processes if p.runner.poll() is None]
        for process in alive:
            self.launcher.retire(process.runner)
            signal_group(process.runner.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for process in alive:
            while not self.kill_requested:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    process.runner.wait(timeout=min(left, 0.1))
                    break
                except subprocess.TimeoutExpired:
                    continue
        for process in alive:
            if process.runner.poll() is None:
                kill_tree(process.runner.pid)
            process.runner.wait()

    def kill_all(self) -> None:
        """SIGKILL every running shard's tree at once (safe to call from a signal handler)."""
        for process in list(self.running.values()):
            if process.runner.returncode is None:
                self.launcher.retire(process.runner)
                kill_tree(process.runner.pid)

    # -- the loop --------------------------------------------------------------------------

    def observed(self) -> list[ObservedShard]:
        shards = list(self.finished.values())
        # Progress only serves speculation: without it, no report is read for the core.
        with_progress = self.job.spec.speculation.enabled
        if with_progress:
            self.read_running_reports()
        now = self.clock()
        for shard_id, p in self.running.items():
            progress = None
            if with_progress and p.ended is not None:
                progress = Progress(done=p.ended, seconds=max(0.0, now - p.started_at))
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
                    progress=progress,
                )
            )
        return shards

    def run(self) -> RunResult:
        started = self.clock()
        state = self.initial_state
        decision: Decision | None = None
        interrupted = False
        # A resumed run's scratch may hold reports under the ids this run gives its shards: gone
        # once here, not checked per shard.
        for stale in self.scratch.glob("shard-*.report"):
            stale.unlink(missing_ok=True)
        atexit.register(self.kill_all)
        try:
            while True:
                if self.stop_requested:
                    decision = self.wind_down(state)
                    interrupted = True
                    break
                now = self.clock()
                decision = plan(self.job.spec, state, self.observed(), self.cluster, now)
                state = decision.state
                apply(decision, _Applied(self, now))
                self.progress(decision)
                if decision.done and not self.running:
                    break
                self.wait(decision.next_wakeup)
                self.progress(decision)
        finally:
            self.kill_all()
            atexit.unregister(self.kill_all)
            self.launcher.close()
            self.sweep()
            if self.own_reports and self.reports is not None:
                shutil.rmtree(self.reports, ignore_errors=True)
        assert decision is not None
        return RunResult(
            decision=decision,
            shards=self.shards_started,
            seconds=self.clock() - started,
            interrupted=interrupted,
            shard_seconds=self.shard_seconds,
            failure_examples=self.failure_examples,
        )

    def wind_down(self, state: CoreState) -> Decision:
        """Stop every runner, then one last decision over what they reported, launching nothing."""
        processes = list(self.running.values())
        if self.on_stopping is not None:
            self.on_stopping(len(processes))
        self._end(processes)
        for process in processes:
            self.collect(process.plan.shard_id, stopped=True)
        # The same spec with no room for new shards or copies: the core only harvests.
        quiet = replace(self.job.spec, parallelism=0, speculation=SpeculationPolicy(enabled=False))
        decision = plan(quiet, state, list(self.finished.values()), self.cluster, self.clock())
        self.finished.clear()
        return decision

    def sweep(self) -> None:
        """Remove the reports of ended shards (read already)."""
        for path in self.garbage:
            path.unlink(missing_ok=True)
        self.garbage.clear()

    def wait(self, wakeup: float | None) -> None:
        """Block until a shard ends, a decision is due, or a short while passes."""
        # While the runners work (and cheap where the reports are in memory).
        self.sweep()
        timeout = MAX_IDLE_SECONDS
        if wakeup is not None:
            timeout = min(timeout, max(0.0, wakeup - self.clock()))
        try:
            ended = [self.exits.get(timeout=timeout) if timeout > 0 else self.exits.get_nowait()]
        except queue.Empty:
            return
        # Whatever else ended meanwhile, so one decision covers them all.
        while True:
            try:
                ended.append(self.exits.get_nowait())
            except queue.Empty:
                break
        # Runners whose fork server died still run, and nothing would tell how they end: stop
        # them like a stop request does (their reports keep what they did, nothing is charged).
        orphans = [
            p
            for p in (self.running.get(shard_id) for shard_id in ended)
            if p is not None and isinstance(p.runner, ForkedRunner) and p.runner.orphaned
        ]
        if orphans:
            self._end(orphans)
        orphaned = {p.plan.shard_id for p in orphans}
        for shard_id in ended:
            self.collect(shard_id, stopped=shard_id in orphaned)

    def read_running_reports(self) -> None:
        """Note what the running shards' reports show (for the display and the core)."""
        # A few times a second at most: at one microtask per shard, reading them at every
        # decision would cost as much as the decisions.
        now = time.monotonic()
        if now - self.reports_read_at < REPORT_READ_SECONDS:
            return
        self.reports_read_at = now
        for process in self.running.values():
            report = self.read_report(process)
            if report is None:
                continue
            indexes = process.plan.indexes
            process.seen = report.succeeded & indexes
            failed = sum(len(ones & indexes) for ones in report.failed.values())
            process.ended = len(process.seen) + failed

    def progress(self, decision: Decision) -> None:
        """Tell the display where the microtasks stand, running shards' reports included."""
        if self.on_progress is None:
            return
        final = decision.state.succeeded | decision.state.failed
        self.read_running_reports()
        done_in_flight = IndexSet.EMPTY
        for process in self.running.values():
            if process.seen:
                done_in_flight = done_in_flight | process.seen
        extra = len(done_in_flight - final)
        status = decision.status
        self.on_progress(
            Snapshot(
                total=self.job.spec.total,
                succeeded=len(decision.state.succeeded) + extra,
                failed=len(decision.state.failed),
                running=max(0, int(status.get("running", 0)) - extra),
                queued=int(status.get("queued", 0)),
            )
        )


@dataclass
class _Applied:
    """The executor as the body a decision is applied to, in the core's order."""

    executor: LocalExecutor
    now: float  # when the decision was made

    def create(self, creates: tuple[CreateShard, ...]) -> None:
        for action in creates:
            if not self.executor.stop_requested:
                self.executor.start(action.plan, self.now)

    def record(self, decision: Decision) -> None:
        if self.executor.on_decision is not None:
            self.executor.on_decision(decision)

    def delete(self, deletes: tuple[DeleteShard, ...]) -> None:
        for action in deletes:
            self.executor.stop(action.shard_id)

    def suspend(self, suspends: tuple[SuspendShard, ...]) -> None:
        pass  # never asked: `microtask run` refuses a job with spec.suspend

    def emit(self, events: tuple[Event, ...]) -> None:
        pass  # the display shows progress and the summary, not events
