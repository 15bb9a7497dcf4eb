"""Starting a shard's runner: forked from a warm fork server, or spawned as a new interpreter.

A new `python -m microtask_runner` per shard costs an interpreter start and the runner's imports
(tens of milliseconds) before the first microtask runs. The launcher starts one fork server per
run instead (`microtask_runner.forkserver`: the runner imported once) and asks it for a fresh
child per shard. Either way the executor gets a process handle with a pid (the leader of the
runner's own process group), `poll`, `wait` and `returncode`, and one call of `on_exit` when the
runner has ended; stopping and killing work on the group as before.

A server that dies is started again; once it has died `MAX_SERVER_DEATHS` times, or where there is
no `fork` (not POSIX), every shard is spawned as before. The runners a dead server leaves behind
are reported through `on_exit` as *orphaned*: still running, with nobody left to say how they end,
so the executor stops them and keeps what their reports show.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

#: The command that runs a shard's runner as a new interpreter.
SPAWN_RUNNER = (sys.executable, "-m", "microtask_runner")
#: The command of the fork server (see microtask_runner.forkserver).
FORK_SERVER = (sys.executable, "-m", "microtask_runner.forkserver")
#: Deaths of the fork server after which a run spawns its runners instead.
MAX_SERVER_DEATHS = 3
#: How long a starting server may take to import the runner (a loaded machine is slow).
START_SECONDS = 30.0
#: How long a fork may take before the server is taken for dead.
REPLY_SECONDS = 10.0
#: The exit code of an orphaned runner: the server that could have told it is gone.
UNKNOWN_EXIT = -getattr(signal, "SIGKILL", 9)
#: How often an orphaned runner is checked while someone waits for it.
ORPHAN_POLL_SECONDS = 0.02


class RunnerProcess(Protocol):
    """What the executor needs of a running shard (subprocess.Popen has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ForkServerError(Exception):
    """The fork server could not start a runner (it is dead, or could not fork)."""


def can_fork() -> bool:
    return os.name == "posix" and hasattr(os, "fork")


def _alive(pid: int) -> bool:
    """Whether a process that is not our child still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no /proc: kill(0) is all there is
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


class ForkedRunner:
    """A runner forked by the fork server; its end is told by the server."""

    def __init__(self, on_exit: Callable[[], None]) -> None:
        self.pid = 0
        self.returncode: int | None = None
        #: The server died before this runner: nobody will tell its exit code.
        self.orphaned = False
        self._ended = threading.Event()
        self._on_exit = on_exit

    def exited(self, code: int) -> None:
        self.returncode = code
        self._ended.set()
        self._on_exit()

    def orphan(self) -> None:
        self.orphaned = True
        self._on_exit()

    def poll(self) -> int | None:
        if self.returncode is None and self.orphaned and not _alive(self.pid):
            self.returncode = UNKNOWN_EXIT
            self._ended.set()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            left = ORPHAN_POLL_SECONDS
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0.0)
            # In slices: the server may die meanwhile, and then only polling tells the end.
            self._ended.wait(left)


class ForkServer:
    """One running fork server and the runners it forked (see microtask_runner.forkserver)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stderr: Path | None = None,
    ) -> None:
        errors: IO[bytes] | int = subprocess.DEVNULL
        if stderr is not None:
            with contextlib.suppress(OSError):
                errors = stderr.open("ab")
        try:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=cwd,
                env=dict(env),
                # A session of its own: a terminal's Ctrl-C reaches `microtask run` only.
                start_new_session=True,
            )
        finally:
            if not isinstance(errors, int):
                errors.close()
        self.lock = threading.Lock()
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.children: dict[int, ForkedRunner] = {}
        self.pending: ForkedRunner | None = None
        self.dead = False
        self.reader = threading.Thread(target=self._read, daemon=True, name="fork-server")
        self.reader.start()
        reply = self._reply(START_SECONDS)
        if not reply.startswith("ready "):
            self.close(timeout=1.0)
            raise ForkServerError(f"the fork server did not start: {reply}")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        on_exit: Callable[[], None],
    ) -> ForkedRunner:
        """Fork a runner running `microtask-runner ARGS`; ForkServerError when it cannot."""
        runner = ForkedRunner(on_exit)
        request = {"argv": list(args), "env": dict(env), "cwd": str(cwd), "log": str(log)}
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            if self.dead:
                raise ForkServerError("the fork server is gone")
            self.pending = runner
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line)
            stdin.flush()
        except (OSError, ValueError):
            self.kill()
            raise ForkServerError("the fork server is gone") from None
        reply = self._reply(REPLY_SECONDS)
        if reply != "spawned":
            with self.lock:
                self.pending = None
            raise ForkServerError(f"the fork server cannot start a runner: {reply}")
        return runner

    def _reply(self, timeout: float) -> str:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()  # hung: as good as dead
            return "no answer"
        return "died" if reply is None else reply

    def _read(self) -> None:
        """The reader thread: replies to the waiting caller, exits to their runners."""
        stdout = self.popen.stdout
        assert stdout is not None
        for raw in stdout:
            kind, _, rest = raw.decode("utf-8", "replace").strip().partition(" ")
            if kind == "exit":
                pid, _, code = rest.partition(" ")
                with self.lock:
                    runner = self.children.pop(int(pid), None)
                if runner is not None:
                    runner.exited(int(code))
            elif kind == "spawned":
                with self.lock:
                    runner, self.pending = self.pending, None
                    if runner is not None:
                        runner.pid = int(rest)
                        self.children[runner.pid] = runner
                self.replies.put(kind)
            else:
                self.replies.put(f"{kind} {rest}")
        with self.lock:
            self.dead = True
            orphans = list(self.children.values())
            self.children.clear()
        self.replies.put(None)
        for runner in orphans:
            runner.orphan()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.kill()

    def close(self, timeout: float = 5.0) -> None:
        """End the server (its stdin closes; it stops any runner it still has) and reap it."""
        with contextlib.suppress(OSError, ValueError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait()
        self.reader.join(timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Launcher:
    """Starts runners for one run: forked while the fork server works, spawned otherwise."""

    def __init__(
        self,
        *,
        spawn_argv: Sequence[str] = SPAWN_RUNNER,
        fork: bool = True,
        server_argv: Sequence[str] = FORK_SERVER,
        server_log: Path | None = None,
        max_deaths: int = MAX_SERVER_DEATHS,
    ) -> None:
        self.spawn_argv = tuple(spawn_argv)
        self.fork = fork and can_fork()
        self.server_argv = tuple(server_argv)
        self.server_log = server_log
        self.max_deaths = max_deaths
        self.server: ForkServer | None = None
        self.deaths = 0
        #: Runners started each way, for the curious (and the tests).
        self.forked = 0
        self.spawned = 0

    def launch(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        on_exit: Callable[[], None],
    ) -> RunnerProcess:
        """Start `microtask-runner ARGS` with its output appended to `log`."""
        while self.fork:
            server = self._server(env, cwd)
            if server is None:
                break
            try:
                runner = server.spawn(args, env=env, cwd=cwd, log=log, on_exit=on_exit)
            except ForkServerError:
                self._lost(server)
                continue
            self.forked += 1
            return runner
        self.spawned += 1
        return self._spawn(args, env=env, cwd=cwd, log=log, on_exit=on_exit)

    def _server(self, env: Mapping[str, str], cwd: Path) -> ForkServer | None:
        """The live fork server (started on first use, again after a death); None: give up."""
        if self.server is not None and self.server.dead:
            self._lost(self.server)
        if self.server is None and self.fork:
            try:
                # The first shard's environment: what a new interpreter reads at start-up
                # (PYTHONPATH, PYTHON*) is the job's, the same for every shard.
                self.server = ForkServer(self.server_argv, env=env, cwd=cwd, stderr=self.server_log)
            except (OSError, ForkServerError):
                self.deaths += 1
                self.fork = self.deaths < self.max_deaths
        return self.server

    def _lost(self, server: ForkServer) -> None:
        server.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            server.close(timeout=1.0)
        self.server = None
        self.deaths += 1
        self.fork = self.deaths < self.max_deaths

    def _spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        on_exit: Callable[[], None],
    ) -> RunnerProcess:
        with log.open("ab") as output:
            popen = subprocess.Popen(
                [*self.spawn_argv, *args],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches us, and we stop the shards ourselves
            )

        def wait() -> None:
            popen.wait()
            on_exit()

        threading.Thread(target=wait, daemon=True, name=f"runner-{popen.pid}").start()
        return popen

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
