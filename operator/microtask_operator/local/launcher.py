"""Starting a shard's runner: forked from a warm fork server, or spawned as a new interpreter.

A new `python -m microtask_runner` per shard costs an interpreter start and the runner's imports
(tens of milliseconds) before the first microtask runs. The launcher starts one fork server per
run instead (`microtask_runner.forkserver`: the runner imported once) and asks it for a fresh
child per shard. Either way the executor gets a process handle with a pid (the leader of the
runner's own process group), `poll`, `wait` and `returncode`, and one call of `on_exit` when the
runner has ended; stopping and killing work on the group as before.

In command mode the runner runs nothing of the user's in its own process, so a shard needs no
fresh process at all: the launcher keeps persistent workers (`microtask_runner.forkserver
--worker`), one per shard in flight, each running shard after shard, and hands a shard to an idle
one. The shard's process handle is then the worker's: its pid (the leader of the worker's group,
signalled and killed as a runner would be) and the exit code the worker replies when the shard
ends, or the worker's own exit code if it dies on the way. A worker that dies is not reused; one
that cannot even start is counted like a dying fork server, and after `MAX_SERVER_DEATHS` of them
shards are forked again. Python-mode shards go to persistent workers too when the run reuses
processes (`microtask run --reuse-processes`): the user's module then stays imported from one
shard to the next.

Where Python writes no bytecode (``PYTHONDONTWRITEBYTECODE``), every server and worker would
compile the runner and the standard modules it imports at each start, which takes longer than the
rest of its start. They read them compiled from a folder kept across runs instead
(``compiled_cache``, given to them as ``-X pycache_prefix``), and write there what they had to
compile (see ``microtask_runner.forkserver``); the user's modules are not kept there.

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
#: The command of a persistent worker (see microtask_runner.forkserver).
WORKER = (*FORK_SERVER, "--worker")
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


def compiled_cache() -> Path | None:
    """Where servers and workers keep the runner compiled across runs (made when first used):
    ``$XDG_CACHE_HOME/microtask/pycache``, ``~/.cache`` by default; None without a home."""
    try:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base, "microtask", "pycache").resolve()
    except (OSError, RuntimeError):
        return None


def helper_argv(argv: Sequence[str], env: Mapping[str, str], compiled: Path | None) -> list[str]:
    """The command that starts a server or worker (``argv``) with ``env``: reading the runner
    compiled from ``compiled`` where bytecode is not written (see the module doc)."""
    if (
        compiled is None
        or tuple(argv[: len(FORK_SERVER)]) != FORK_SERVER
        or not env.get("PYTHONDONTWRITEBYTECODE")
        or env.get("PYTHONPYCACHEPREFIX")
    ):
        return list(argv)
    try:
        compiled.mkdir(parents=True, exist_ok=True)
    except OSError:
        return list(argv)
    if not os.access(compiled, os.W_OK | os.X_OK):
        # Nothing could be kept: every start would compile and then fail to write.
        return list(argv)
    rest = argv[len(FORK_SERVER) :]
    return [
        argv[0],
        "-X",
        f"pycache_prefix={compiled}",
        *FORK_SERVER[1:],
        "--compiled",
        str(compiled),
        *rest,
    ]


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


def start_helper(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, stderr: Path | None
) -> subprocess.Popen[bytes]:
    """A fork server or worker process: talked to over its stdin and stdout, its stderr appended
    to ``stderr`` (or dropped), in a session of its own (a terminal's Ctrl-C reaches `microtask
    run` only, which stops it as it stops runners)."""
    errors: IO[bytes] | int = subprocess.DEVNULL
    if stderr is not None:
        with contextlib.suppress(OSError):
            errors = stderr.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        if not isinstance(errors, int):
            errors.close()


def _request(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path, held: Mapping[str, str]
) -> dict[str, object]:
    """A shard's request to a fork server or worker whose environment is ``held``: only the
    variables that differ ("env") and those to remove ("unset", if any)."""
    changed = {key: value for key, value in env.items() if held.get(key) != value}
    request: dict[str, object] = {
        "argv": list(args),
        "env": changed,
        "cwd": str(cwd),
        "log": str(log),
    }
    unset = [key for key in held if key not in env]
    if unset:
        request["unset"] = unset
    return request


class _Helper:
    """A fork server or a worker: a process we talk to over its stdin and stdout."""

    popen: subprocess.Popen[bytes]
    reader: threading.Thread

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.kill()

    def close(self, timeout: float = 5.0) -> None:
        """End it: its stdin closes (idle, it exits; busy, it stops what it runs); reap it."""
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


class ForkServer(_Helper):
    """One running fork server and the runners it forked (see microtask_runner.forkserver)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stderr: Path | None = None,
    ) -> None:
        self.popen = start_helper(argv, env=env, cwd=cwd, stderr=stderr)
        #: The server's environment, which every child starts from: a request carries only
        #: what differs from it.
        self.env = dict(env)
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
        request = _request(args, env=env, cwd=cwd, log=log, held=self.env)
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


class WorkerShard:
    """One shard handed to a persistent worker: the worker's pid, the shard's exit code."""

    def __init__(self, worker: Worker, on_exit: Callable[[], None]) -> None:
        self.worker = worker
        self.pid = worker.pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._on_exit = on_exit

    def retire(self) -> None:
        """Never hand the worker another shard: it is about to be stopped or killed."""
        self.worker.retired = True

    def exited(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        self._ended.set()
        self._on_exit()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class Worker(_Helper):
    """A persistent worker process and the shard it runs, if any."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stderr: Path | None,
        on_done: Callable[[Worker, WorkerShard, int], None],
    ) -> None:
        # Its own session and group: signalled and killed as a runner's group is.
        self.popen = start_helper(argv, env=env, cwd=cwd, stderr=stderr)
        self.on_done = on_done
        #: The environment the worker holds now: a request carries only what differs from it.
        self.env = dict(env)
        self.lock = threading.Lock()
        self.shard: WorkerShard | None = None
        self.dead = False
        #: Never to be handed another shard (its shard is being stopped or killed).
        self.retired = False
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True, name="worker")
        self.reader.start()

    def wait_ready(self) -> None:
        """Wait until the worker has imported the runner; ForkServerError if it never does."""
        if not self.ready.wait(START_SECONDS) or self.dead:
            self.close(timeout=1.0)
            raise ForkServerError("the worker did not start")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        on_exit: Callable[[], None],
    ) -> WorkerShard:
        """Hand the worker a shard; ForkServerError if it is gone."""
        shard = WorkerShard(self, on_exit)
        request = _request(args, env=env, cwd=cwd, log=log, held=self.env)
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            if self.dead or self.retired or self.shard is not None:
                raise ForkServerError("the worker is gone")
            self.shard = shard
            self.env = dict(env)
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line)
            stdin.flush()
        except (OSError, ValueError):
            # Gone: the reader tells the shard how the worker ended, as for a death mid-shard.
            self.kill()
        return shard

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for raw in stdout:
            kind, _, rest = raw.decode("utf-8", "replace").strip().partition(" ")
            if kind == "ready":
                self.ready.set()
            elif kind == "done":
                with self.lock:
                    shard, self.shard = self.shard, None
                if shard is not None:
                    self.on_done(self, shard, int(rest))
        with self.lock:
            self.dead = True
            shard, self.shard = self.shard, None
        self.ready.set()
        code = self.popen.wait()
        if shard is not None:
            shard.exited(code)


class Launcher:
    """Starts runners for one run: on persistent workers, forked, or spawned (see the module)."""

    def __init__(
        self,
        *,
        spawn_argv: Sequence[str] = SPAWN_RUNNER,
        fork: bool = True,
        server_argv: Sequence[str] = FORK_SERVER,
        server_log: Path | None = None,
        pycache: Path | None = None,
        max_deaths: int = MAX_SERVER_DEATHS,
        persistent: bool = False,
        worker_argv: Sequence[str] = WORKER,
        slots: int = 1,
        compiled: Path | None = None,
    ) -> None:
        self.spawn_argv = tuple(spawn_argv)
        self.fork = fork and can_fork()
        #: Shards go to persistent workers (command mode) while they work.
        self.persistent = persistent and can_fork()
        self.worker_argv = tuple(worker_argv)
        #: Shards in flight at most: as many workers are started side by side on first use.
        self.slots = max(1, slots)
        self.workers: list[Worker] = []
        self.idle: list[Worker] = []
        self.idle_lock = threading.Lock()
        self.worker_deaths = 0
        # Compiled modules shared by the forked runners where bytecode is not written.
        self.server_argv = tuple(server_argv)
        if pycache is not None and self.server_argv == FORK_SERVER:
            self.server_argv = (*FORK_SERVER, "--pycache", str(pycache))
        self.server_log = server_log
        #: Where servers and workers keep the runner compiled (``compiled_cache``), if anywhere.
        self.compiled = compiled
        self.max_deaths = max_deaths
        self.server: ForkServer | None = None
        self.deaths = 0
        #: Runners started each way, for the curious (and the tests).
        self.forked = 0
        self.spawned = 0
        #: Shards run by persistent workers.
        self.worked = 0

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
        while self.persistent:
            worker = self._worker(env, cwd)
            if worker is None:
                break
            try:
                shard = worker.run(args, env=env, cwd=cwd, log=log, on_exit=on_exit)
            except ForkServerError:
                continue  # it died while idle: another one
            self.worked += 1
            return shard
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
                self.server = ForkServer(
                    helper_argv(self.server_argv, env, self.compiled),
                    env=env,
                    cwd=cwd,
                    stderr=self.server_log,
                )
            except (OSError, ForkServerError):
                self.deaths += 1
                self.fork = self.deaths < self.max_deaths
        return self.server

    def _worker(self, env: Mapping[str, str], cwd: Path) -> Worker | None:
        """An idle worker, started if none is (None: workers keep failing to start)."""
        with self.idle_lock:
            while self.idle:
                worker = self.idle.pop()
                if not (worker.dead or worker.retired):
                    return worker
        self.workers = [w for w in self.workers if not w.dead]
        # The first time, every slot's worker at once: their start-ups overlap.
        count = 1 if self.workers else self.slots
        started: list[Worker] = []
        try:
            for _ in range(count):
                # The shard's environment: what an interpreter reads at start-up is the job's.
                started.append(
                    Worker(
                        helper_argv(self.worker_argv, env, self.compiled),
                        env=env,
                        cwd=cwd,
                        stderr=self.server_log,
                        on_done=self._done,
                    )
                )
            for worker in started:
                worker.wait_ready()
        except (OSError, ForkServerError):
            for worker in started:
                worker.kill()
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    worker.close(timeout=1.0)
            self.worker_deaths += 1
            self.persistent = self.worker_deaths < self.max_deaths
            return None
        self.workers.extend(started)
        with self.idle_lock:
            self.idle.extend(started[1:])
        return started[0]

    def _done(self, worker: Worker, shard: WorkerShard, code: int) -> None:
        """A worker's shard ended (the worker's reader thread): the worker is free again."""
        with self.idle_lock:
            # The shard's end before the worker is free: the executor has collected it by the
            # time it launches anything, so a handle never points at someone else's shard.
            shard.exited(code)
            # A shard stopped by a signal is its worker's last (see microtask_runner.forkserver).
            if code < 128 and not worker.retired:
                self.idle.append(worker)

    @staticmethod
    def retire(runner: RunnerProcess) -> None:
        """The runner is about to be stopped or killed: its process runs no further shard."""
        if isinstance(runner, WorkerShard):
            runner.retire()

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
        workers, self.workers = self.workers, []
        with self.idle_lock:
            self.idle.clear()
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                if worker.popen.stdin is not None:
                    worker.popen.stdin.close()  # all at once: they end side by side
        for worker in workers:
            worker.close()
        if self.server is not None:
            self.server.close()
            self.server = None
