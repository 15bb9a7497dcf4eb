"""The folder of a local run: its result store, its shard logs and its saved state.

    microtask-runs/<job>/          the default; `microtask run --output DIR` chooses another
      run.json                     the saved state: spec digest, status, what is left (for --resume)
      records/...                  the result store (layout in microtask_runner.contract)
      logs/<job>-<shard>.log       each shard's output, with a delimiter line around each microtask
      .work/                       scratch of a run in progress (shard reports, the items file)
      .lock                        the process id of the run in progress, while it runs

`microtask results`, `logs` and `rerun` find a local run from its job file the same way `run` does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microtask_runner.contract import LOGS_DIR, RECORDS_DIR, log_name

#: Where `microtask run` keeps a job's run when --output is not given (relative to the working
#: directory, like `kubectl`'s own files are relative to where it runs).
DEFAULT_PARENT = Path("microtask-runs")
STATE_FILE = "run.json"
SCRATCH_DIR = ".work"
LOCK_FILE = ".lock"
STATE_VERSION = 1


class RunDirError(ValueError):
    """The folder cannot hold (or does not hold) a run; the message says why."""


def default_output(job_name: str) -> Path:
    """The folder of a job's local run when no --output is given."""
    return DEFAULT_PARENT / job_name


@dataclass(frozen=True)
class RunDir:
    """One local run's folder."""

    path: Path

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def records(self) -> Path:
        return self.path / RECORDS_DIR

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def scratch(self) -> Path:
        """Files a run needs only while it runs (shard reports, the items file)."""
        return self.path / SCRATCH_DIR

    def log_path(self, job: str, shard: int) -> Path:
        """The file a shard's runner writes its output to."""
        return self.path / log_name(job, shard)

    def exists(self) -> bool:
        return self.state_path.is_file()

    def prepare(self, job: str, *, fresh: bool) -> list[str]:
        """Make the folder ready for a run of `job`; notes for the person running it.

        A fresh run clears the previous run of the same job (records, logs, state), so old and
        new files never mix; a folder holding another job's run, or files that are not a run's,
        is refused rather than cleared. RunDirError when the folder cannot be used.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"cannot create the output folder {self.path}: {error.strerror or error}"
            ) from None
        self._check_writable()
        self.lock()
        notes: list[str] = []
        if fresh:
            if self.exists():
                try:
                    previous = self.load_state()
                except RunDirError as error:
                    raise RunDirError(
                        f"{error}; delete {self.path} or choose another --output"
                    ) from None
                if previous.get("job") != job:
                    raise RunDirError(
                        f"{self.path} holds a run of MicrotaskJob {previous.get('job')!r}, not "
                        f"{job!r}: choose another --output (or delete that folder)"
                    )
                notes.append(f"cleared the previous run of {job} in {self.path}")
            elif any(self._has_files(p) for p in (self.records, self.logs)):
                raise RunDirError(
                    f"{self.path} has {RECORDS_DIR}/ or {LOGS_DIR}/ files but no {STATE_FILE}: "
                    "it is not the folder of a run; choose an empty or new --output"
                )
            self.clear()
        for folder in (self.records, self.logs, self.scratch):
            try:
                folder.mkdir(exist_ok=True)
            except OSError as error:
                raise RunDirError(f"cannot create {folder}: {error.strerror or error}") from None
        return notes

    def clear(self) -> None:
        """Remove a previous run's records, logs, state and scratch (nothing else)."""
        for folder in (self.records, self.logs, self.scratch):
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise RunDirError(f"cannot clear {folder}: {error.strerror or error}") from None
        try:
            self.state_path.unlink(missing_ok=True)
        except OSError as error:
            raise RunDirError(
                f"cannot remove {self.state_path}: {error.strerror or error}"
            ) from None

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def lock(self) -> None:
        """Claim the folder for this process; RunDirError while another live run holds it."""
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._lock_holder()
                if holder is not None and holder != os.getpid():
                    raise RunDirError(
                        f"{self.path} is in use by another run (process {holder}); wait for it, "
                        f"or choose another --output (if no such run exists, delete "
                        f"{self.lock_path})"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # a stale lock of a run that died
                continue
            except OSError as error:
                raise RunDirError(f"cannot lock {self.path}: {error.strerror or error}") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return
        raise RunDirError(f"cannot lock {self.path}: {self.lock_path} keeps coming back")

    def unlock(self) -> None:
        if self._lock_holder() == os.getpid():
            self.lock_path.unlink(missing_ok=True)

    def _lock_holder(self) -> int | None:
        """The live process holding the lock, if any."""
        try:
            pid = int(self.lock_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def remove_scratch(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _check_writable(self) -> None:
        probe = self.path / f".probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RunDirError(
                f"cannot write in the output folder {self.path}: {error.strerror or error}"
            ) from None

    @staticmethod
    def _has_files(folder: Path) -> bool:
        try:
            return folder.is_dir() and any(folder.iterdir())
        except OSError:
            return False

    def load_state(self) -> dict[str, Any]:
        """The saved state; RunDirError when there is none or it cannot be read."""
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: no run here (no {STATE_FILE})") from None
        except OSError as error:
            raise RunDirError(f"{self.state_path}: {error.strerror or error}") from None
        try:
            state = json.loads(text)
        except ValueError as error:
            raise RunDirError(f"{self.state_path} is not valid JSON: {error}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise RunDirError(f"{self.state_path} is not a run state of this version")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the state atomically (a crash leaves the old or the new one, never half)."""
        text = json.dumps({**state, "version": STATE_VERSION}, indent=1, sort_keys=True)
        temporary = self.state_path.with_name(f".{STATE_FILE}.{os.getpid()}")
        temporary.write_text(text + "\n", encoding="utf-8")
        os.replace(temporary, self.state_path)
