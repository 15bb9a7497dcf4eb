"""One local run of one MicrotaskJob, from its folder to its summary.

Shared by `microtask run` (fresh, or `--resume`) and `microtask rerun FILE --failed`: prepare the
output folder, read what an earlier run left, run the executor under the stop signals, save the
state (at the start, every couple of seconds, at the end), show the summary and choose the exit
code: 0 succeeded, 1 failed, 2 refused, 128+N stopped by signal N.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..api.convert import to_core_spec
from ..api.model import MicrotaskJob
from ..core.planner import Decision
from ..core.state import CoreState
from ..core.timefmt import to_rfc3339
from ..core.types import RetryPolicy
from .display import ProgressView, Ui, next_commands, show_summary
from .executor import LocalExecutor, RunResult
from .job import local_job
from .rundir import RunDir, RunDirError, default_output
from .saved import (
    FAILED,
    SUCCEEDED,
    Mode,
    SavedRun,
    failure_allowance,
    kept_failures,
    merge_status,
    spec_digest,
)
from .stopping import StopSignals, exit_code, signal_name
from .summary import run_summary

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
#: run.json is rewritten at most this often while a job runs.
SAVE_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    """How the command was asked to run jobs."""

    file: str  # as the user typed it (for the next commands shown)
    workers: int
    progress_interval: float
    # Python mode: shard after shard in one process per worker (`--reuse-processes`).
    reuse_processes: bool = False
    # Extra arguments that find the same run again (`--output DIR`, `--name NAME`).
    hint_args: tuple[str, ...] = ()


@dataclass
class Outcome:
    code: int
    summary: dict[str, Any] | None = None
    messages: list[str] = field(default_factory=list)


class Refused(Exception):
    """The run cannot start; the message says why (exit 2)."""


class JobRun:
    """One job's run: `check()` first (refusals before anything runs), then `run()`."""

    def __init__(
        self,
        job: MicrotaskJob,
        config_map_data: Mapping[str, str] | None,
        *,
        output: Path | None,
        mode: Mode,
        settings: Settings,
        ui: Ui,
        stop: StopSignals,
    ) -> None:
        self.job = job
        self.name = job.metadata.name
        self.data = config_map_data
        self.mode = mode
        self.settings = settings
        self.ui = ui
        self.stop = stop
        self.run_dir = RunDir(output if output is not None else default_output(self.name))
        self.output = str(self.run_dir.path.resolve())
        self.digest = spec_digest(job, config_map_data)
        self.file = str(Path(settings.file).resolve())
        self.previous: SavedRun | None = None
        self.started_at = to_rfc3339(time.time())
        self.last_save = 0.0
        self.total = 0
        self.whole_retry = RetryPolicy()

    # -- before -----------------------------------------------------------------------------

    def load_previous(self) -> SavedRun:
        where = self.run_dir.path
        command = f"microtask run {shlex.quote(self.settings.file)}"
        if not self.run_dir.exists():
            raise Refused(
                f"no saved run of {self.name} in {where}: nothing to "
                f"{'resume' if self.mode == Mode.RESUME else 'rerun'}; run it first ({command})"
            )
        saved = SavedRun.from_state(self.run_dir.load_state(), str(self.run_dir.state_path))
        if saved.job != self.name:
            raise Refused(f"{where} holds a run of MicrotaskJob {saved.job!r}, not {self.name!r}")
        if saved.digest != self.digest:
            raise Refused(
                f"the spec of {self.name} changed since its run in {where} (specDigest differs): "
                "continuing would mix results of two different specs; restore the spec, or run "
                f"it afresh with `{command}` (that clears the folder)"
            )
        return saved

    def check(self) -> None:
        """Refused (or RunDirError) when this run cannot start; reads an earlier run's state."""
        if self.mode != Mode.FRESH and self.previous is None:
            self.previous = self.load_previous()

    def run(self) -> Outcome:
        """Run the job; never raises for a problem a person can fix."""
        try:
            return self._run()
        except (Refused, RunDirError) as error:
            self.ui.error(str(error))
            return Outcome(EXIT_REFUSED)
        finally:
            self.run_dir.unlock()

    def _run(self) -> Outcome:
        universe = None
        if self.mode != Mode.FRESH:
            self.check()
            saved = self.previous
            assert saved is not None
            universe = saved.remaining(self.mode)
            if not universe:
                return self.nothing_left(saved)
        try:
            # The items must be usable before an earlier run's folder is cleared.
            to_core_spec(self.job, self.data, universe=universe)
        except ValueError as error:
            raise Refused(f"{self.settings.file}: {error}") from None
        for note in self.run_dir.prepare(self.name, fresh=self.mode == Mode.FRESH):
            self.ui.note(note)
        workdir = Path(self.settings.file).resolve().parent
        try:
            local, notes = local_job(
                self.job,
                self.settings.workers,
                workdir,
                self.run_dir.scratch,
                self.data,
                universe=universe,
            )
        except ValueError as error:
            raise Refused(f"{self.settings.file}: {error}") from None
        for note in notes:
            self.ui.note(note)
        state = CoreState.initial()
        base_succeeded = base_failed = 0
        if self.previous is not None:
            saved = self.previous
            self.total = saved.total
            kept = kept_failures(saved, self.mode)
            # The job's allowance for permanent failures is over the whole job, and the
            # failures kept from earlier runs have used part of it.
            self.whole_retry = local.spec.retry
            allowance = failure_allowance(local.spec.retry, self.total)
            retry = replace(
                local.spec.retry,
                max_failed_microtasks=max(0, allowance - len(kept)),
                max_failed_fraction=None,
            )
            local = replace(local, spec=replace(local.spec, retry=retry))
            state = replace(state, next_shard=saved.next_shard)
            base_succeeded = len(saved.succeeded)
            base_failed = len(kept)
            what = "resuming" if self.mode == Mode.RESUME else "rerunning"
            self.ui.note(
                f"{what} {self.name}: {len(universe or ())} of {self.total} microtasks to run "
                f"({base_succeeded} succeeded before)"
            )
        else:
            self.total = local.spec.total
        self.save(self.initial_status(), next_shard=state.next_shard)

        view = ProgressView(
            self.name,
            self.ui,
            total=self.total,
            base_succeeded=base_succeeded,
            base_failed=base_failed,
            interval=self.settings.progress_interval,
        )
        executor = LocalExecutor(
            local,
            self.settings.workers,
            self.run_dir,
            state=state,
            on_progress=view.update,
            on_decision=self.on_decision,
            on_stopping=self.on_stopping,
            reuse_processes=self.settings.reuse_processes,
        )
        self.stop.on_first(executor.request_stop)
        self.stop.on_force(executor.kill_now)
        if self.stop.requested:
            executor.request_stop()
        try:
            with view:
                result = executor.run()
        finally:
            self.stop.forget(executor.request_stop)
            self.stop.forget(executor.kill_now)
        return self.finish(result, cpu_per_pod=local.spec.cpu_per_pod)

    def nothing_left(self, saved: SavedRun) -> Outcome:
        failed = len(saved.failed)
        if self.mode == Mode.RESUME and failed:
            hint = (
                f"; {failed} failed for good: `microtask rerun {shlex.quote(self.settings.file)}"
                " --failed` runs them again"
            )
        else:
            hint = ""
        self.ui.line(
            f"{self.name}: nothing left to run in {self.run_dir.path}: "
            f"{len(saved.succeeded)} of {saved.total} microtasks succeeded{hint}"
        )
        status = dict(saved.status)
        if status.get("phase") not in (SUCCEEDED, FAILED):
            # Every microtask has an outcome, so the job is over, whatever was saved last.
            allowance = failure_allowance(
                to_core_spec(self.job, self.data, total=saved.total).retry, saved.total
            )
            status["phase"] = FAILED if failed > allowance else SUCCEEDED
        summary = run_summary(
            job=self.name, status=status, total=saved.total, seconds=0.0, output=self.output
        )
        return Outcome(EXIT_OK, summary)

    # -- during -----------------------------------------------------------------------------

    def initial_status(self) -> dict[str, Any]:
        if self.previous is not None:
            return dict(self.previous.status)
        return {
            "phase": "Pending",
            "total": self.total,
            "succeeded": 0,
            "failed": 0,
            "succeededIndexes": "",
            "failedIndexes": "",
        }

    def whole_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """A decision's status over the whole job (merged with the earlier runs', if any)."""
        if self.previous is None:
            return status
        allowance = failure_allowance(self.whole_retry, self.total)
        return merge_status(
            self.previous.status, status, total=self.total, mode=self.mode, allowance=allowance
        )

    def on_decision(self, decision: Decision) -> None:
        now = time.monotonic()
        if now - self.last_save < SAVE_INTERVAL_SECONDS:
            return
        self.last_save = now
        self.save(self.whole_status(decision.status), next_shard=decision.state.next_shard)

    def on_stopping(self, shards: int) -> None:
        if shards:
            self.ui.note(
                f"stopping {self.name}: {shards} running shard(s) asked to stop; what they "
                "finished is kept (send the signal again to kill them at once)"
            )

    def save(
        self,
        status: dict[str, Any],
        *,
        next_shard: int,
        finished: bool = False,
        interrupted: bool = False,
        ended: bool = False,
    ) -> None:
        state = {
            "job": self.name,
            "file": self.file,
            "specDigest": self.digest,
            "universe": self.previous.universe.format()
            if self.previous is not None and self.previous.universe is not None
            else None,
            "status": status,
            "nextShard": next_shard,
            "finished": finished,
            "interrupted": interrupted,
            "startedAt": self.previous.started_at
            if self.previous is not None and self.previous.started_at
            else self.started_at,
            "endedAt": to_rfc3339(time.time()) if ended else None,
        }
        try:
            self.run_dir.save_state(state)
        except OSError as error:
            self.ui.warning(
                f"cannot save the run's state to {self.run_dir.state_path}: "
                f"{error.strerror or error}"
            )

    # -- after ------------------------------------------------------------------------------

    def finish(self, result: RunResult, *, cpu_per_pod: float) -> Outcome:
        decision = result.decision
        status = dict(decision.status)
        if not isinstance(status.get("resources"), dict):
            # What this machine spent, when the core does not say: process time x CPU request.
            wasted = float(status.get("wastedSeconds") or 0.0)
            status["resources"] = {
                "cpuSeconds": round(result.shard_seconds * cpu_per_pod, 3),
                "gpuSeconds": 0.0,
                "wastedCpuSeconds": round(wasted * cpu_per_pod, 3),
                "wastedGpuSeconds": 0.0,
            }
        finished_here = len(decision.state.succeeded) + len(decision.state.failed)
        status = self.whole_status(status)
        final = decision.done and not result.interrupted
        interrupted = result.interrupted and not decision.done
        summary = run_summary(
            job=self.name,
            status=status,
            total=self.total,
            seconds=result.seconds,
            output=self.output,
            interrupted=interrupted,
        )
        status["notRun"] = summary["notRun"]
        self.save(
            status,
            next_shard=decision.state.next_shard,
            finished=final,
            interrupted=interrupted,
            ended=True,
        )
        self.run_dir.remove_scratch()
        # stderr may be gone (a closed terminal's SIGHUP): the state is saved all the same.
        with contextlib.suppress(OSError):
            self.show(result, summary, interrupted=interrupted, finished_here=finished_here)
        if interrupted:
            return Outcome(exit_code(self.stop.received or signal.SIGINT), summary)
        return Outcome(EXIT_OK if summary["phase"] == SUCCEEDED else EXIT_FAILED, summary)

    def show(
        self, result: RunResult, summary: dict[str, Any], *, interrupted: bool, finished_here: int
    ) -> None:
        title = f"MicrotaskJob {self.name}: {summary['phase']}"
        if interrupted and self.stop.received is not None:
            title += f" (by {signal_name(self.stop.received)}; state saved for --resume)"
        show_summary(
            self.ui,
            summary,
            title=title,
            shards=result.shards,
            examples=result.failure_examples,
            finished_here=finished_here,
            commands=next_commands(summary, file=self.settings.file, extra=self.settings.hint_args),
        )
