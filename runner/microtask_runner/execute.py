"""Running a shard's microtasks one after another, keeping the report up to date.

Two executors share one loop: a command per microtask (any language, its own
process group so a timeout kills everything it started) and a Python function
called in-process (no interpreter start per microtask). Before every microtask
the report names it as the one running (``progress.py``): if the pod dies, the
operator knows which microtask to charge and which outcomes are already safe.

Each microtask's output is framed by delimiter lines on stdout (``contract.begin_line``,
``contract.end_line``), and with a result store each finished microtask leaves a record there
(``records.py``). While microtasks are slow, records go to the store and the report claims them
before the next microtask starts; once microtasks come fast (``_QUICK_STREAK`` in a row shorter
than ``_QUICK_SECONDS``), that happens every ``_SYNC_SECONDS`` instead, so a short microtask
costs no more than a memory store in the report and one write of its delimiter lines.

In Python mode without a timeout, such a streak runs in a loop of its own (``streak`` in
``run_shard``): the report's ``cur`` moves by its last digit, the streak's successes go to the
store as one *span* record per sync (``RecordFormat.quick_span``), and with fds 1 and 2 captured
(``console.py``) the delimiter lines of microtasks that printed nothing are held back and written
at the next sync, or before any output; whether a microtask printed is a flag that SIGIO and
Python's streams set (``Console.watch``), or else a flush and a ``poll``. Anything unusual (a
failure, a slow microtask, a return value to keep, a signal, the end of a range of indexes) goes
back to the general loop.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stubs: signal without enums)
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from .console import CONSOLE, LOG_PREFIX, log
from .contract import (
    DELIMITER_PREFIX,
    ENV_ATTEMPT,
    ENV_INDEX,
    ENV_ITEM,
    ENV_RESULT_FILE,
    MAX_RECORD_ERROR_CHARS,
    begin_line,
    end_line,
    records_name,
    retries_in_pod,
)
from .indexset import IndexSet
from .items import ItemSource, item_text
from .progress import Outcomes, Progress, ReportFile
from .records import RecordFormat, ResultStore, ShardInfo
from .report import LIVE_NUMBER_CHARS as _NUMBER_CHARS
from .results import Finished, ResultFiles, encode_value, tail

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Protocol
else:
    Protocol = object  # the protocol below only matters to type checkers

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_RUNNER_ERROR",
    "EXIT_TIMEOUT",
    "LOG_PREFIX",
    "CommandExecutor",
    "Finished",
    "Outcomes",
    "Progress",
    "PythonExecutor",
    "ReportFile",
    "Retry",
    "Signals",
    "fail_shard",
    "log",
    "run_shard",
]

EXIT_OK = 0
#: Some microtasks failed (their outcomes are in the report).
EXIT_FAILED = 10
#: The runner could not work at all (bad input); the report has runner_error.
EXIT_RUNNER_ERROR = 2
#: A microtask that ran out of time, as GNU timeout reports it.
EXIT_TIMEOUT = 124
#: Command not found / not executable, as shells report them.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126

#: A timed-out command gets SIGTERM, then SIGKILL after this grace period.
KILL_GRACE_SECONDS = 2.0
#: Bytes of a command's stderr kept for the error texts (a record's is the longer).
_TAIL_BYTES = 4 * MAX_RECORD_ERROR_CHARS
#: Characters of that tail in the report's error text.
_ERROR_TAIL_CHARS = 800
#: Microtasks shorter than this are quick; after this many quick ones in a row, records and
#: claims are batched (at most this many seconds apart) instead of written before each one. A
#: sync (records pushed, the report encoded and written) costs tens of microseconds: under 1%
#: of a microtask this long.
_QUICK_SECONDS = 0.005
_QUICK_STREAK = 4
_SYNC_SECONDS = 0.02
#: ... or when this many bytes of records wait.
_SYNC_BYTES = 64 * 1024
#: ... or (Python mode's streaks, whose records are spans) after this many microtasks, which
#: bounds the delimiter lines held back.
_SYNC_COUNT = 1 << 16
#: Held delimiter lines are written a block of indexes at a time (``_Held``).
_BLOCK_DIGITS = 3
_BLOCK = 10**_BLOCK_DIGITS

INDEX_TOKEN = "$(MICROTASK_INDEX)"
ITEM_TOKEN = "$(MICROTASK_ITEM)"


def _first_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ------------------------------------------------------------------- signals


class Interrupted(BaseException):
    """Raised inside a Python-mode microtask when the runner is told to stop."""


class MicrotaskTimeout(BaseException):
    """Raised inside a Python-mode microtask when its time is up.

    BaseException, like KeyboardInterrupt, so ``except Exception`` in user code
    does not swallow it.
    """


class Signals:
    """SIGTERM/SIGINT handling: forward to the running child, stop after it.

    A self-pipe wakes the command executor's poll loop, so the report is
    rewritten at once even if the child takes its time to exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.child_pgid: int | None = None
        #: Python mode: raise into the running function instead of waiting.
        self.in_call = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._previous: dict[int, Any] = {}
        #: SIGALRM is ours: Python-mode timeouts can use the interval timer.
        self.can_time_out = False

    def install(self) -> None:
        """Install the handlers (only possible in the main thread)."""
        try:
            # ``_signal``: ``signal.signal`` converts to and from enums, per call and per shard.
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = _signal.signal(signum, self._on_stop)
            self._previous[signal.SIGALRM] = _signal.signal(signal.SIGALRM, self._on_alarm)
            self.can_time_out = True
        except ValueError:
            # Not the main thread (embedded use): no signal handling.
            pass

    def restore(self) -> None:
        """Put back the previous handlers and close the pipe."""
        if signal.SIGALRM in self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            _signal.signal(signum, handler)
        self._previous.clear()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.child_pgid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.child_pgid, signum)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"!")
        if self.in_call:
            self.in_call = False
            raise Interrupted(signum)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.in_call:
            self.in_call = False
            raise MicrotaskTimeout()


# ----------------------------------------------------------------- executors


class Executor(Protocol):
    """Runs one microtask: how it ended, or None if the runner was told to stop meanwhile."""

    def run(self, index: int, item: Any) -> Finished | None: ...


class CommandExecutor:
    """A subprocess per microtask, never through a shell.

    Started with ``os.posix_spawn`` where it does what ``subprocess.Popen`` would (see
    ``_spawnable``): a vfork and an exec, as xargs pays, instead of Popen's set-up. With
    ``direct_output`` (nobody needs a copy of the runner's stdout) the command writes to the
    runner's stdout itself; its stderr always comes through a pipe, for the error's tail.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        timeout: float | None,
        signals: Signals,
        on_signal: Callable[[], None],
        results: ResultFiles | None = None,
        direct_output: bool = False,
    ) -> None:
        self.command = list(command)
        # Positions holding a $(...) token; the others are reused as they are.
        self.templated = [
            pos for pos, arg in enumerate(self.command) if INDEX_TOKEN in arg or ITEM_TOKEN in arg
        ]
        self.env = dict(env)
        self.timeout = timeout
        self.signals = signals
        self.on_signal = on_signal
        #: None: no $MICROTASK_OUTPUT (no spool directory could be made)
        self.results = results
        self.use_pidfd = hasattr(os, "pidfd_open")
        self.direct_output = direct_output
        #: posix_spawn may start the commands (False: Popen starts them)
        self.use_spawn = _spawnable()
        #: program -> its path on the command's PATH (None: not found, Popen says why)
        self.paths: dict[str, str | None] = {}
        self.devnull: int | None = None

    def close(self) -> None:
        if self.devnull is not None:
            os.close(self.devnull)
            self.devnull = None

    def _spawn(self, argv: list[str], env: dict[str, str]) -> tuple[_Spawned, _ChildOutput] | None:
        """Start the command with posix_spawn; None where Popen must (a program not found)."""
        program = argv[0]
        path = self.paths.get(program, "")
        if path == "":
            path = self.paths[program] = _find_program(program, env)
        if path is None:
            return None
        if self.devnull is None:
            self.devnull = os.open(os.devnull, os.O_RDONLY)
        read_err, write_err = os.pipe()
        read_out = write_out = -1
        try:
            actions = [(os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, write_err, 2)]
            if not self.direct_output:
                read_out, write_out = os.pipe()
                actions.append((os.POSIX_SPAWN_DUP2, write_out, 1))
            pid = os.posix_spawn(
                path,
                argv,
                env,
                file_actions=actions,
                # Its own session and group, as Popen's start_new_session; the signals Python
                # ignores back to their defaults, as Popen's restore_signals.
                setsid=True,
                setsigdef=_RESTORED_SIGNALS,
            )
        except BaseException:
            for fd in (read_err, read_out):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (write_err, write_out):
                if fd >= 0:
                    os.close(fd)
        streams = {read_err: 2} if read_out < 0 else {read_out: 1, read_err: 2}
        return _Spawned(pid), _ChildOutput(streams)

    def run(self, index: int, item: Any) -> Finished | None:
        import subprocess  # command mode only: Python mode starts without it

        text = item_text(item)
        argv = self.command
        if self.templated:
            argv = list(argv)
            for pos in self.templated:
                argv[pos] = argv[pos].replace(INDEX_TOKEN, str(index)).replace(ITEM_TOKEN, text)
        env = dict(self.env)
        env[ENV_INDEX] = str(index)
        env[ENV_ITEM] = text
        result_path = None
        if self.results is not None:
            result_path = env[ENV_RESULT_FILE] = self.results.path(index)
        else:
            env.pop(ENV_RESULT_FILE, None)  # not one of ours: nobody would read it
        try:
            started: tuple[subprocess.Popen[bytes] | _Spawned, _ChildOutput] | None = None
            if self.use_spawn:
                started = self._spawn(argv, env)
            if started is None:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    # Its own process group: a timeout or SIGTERM reaches everything
                    # the microtask started, and terminal signals do not.
                    start_new_session=True,
                )
                assert popen.stdout is not None and popen.stderr is not None
                files = (popen.stdout, popen.stderr)
                started = popen, _ChildOutput({f.fileno(): n for n, f in enumerate(files, 1)})
            proc, output = started
        except FileNotFoundError:
            return Finished.failure(index, EXIT_NOT_FOUND, f"command not found: {argv[0]}")
        except PermissionError as exc:
            return Finished.failure(index, EXIT_CANNOT_RUN, f"cannot run {argv[0]}: {exc.strerror}")
        except (OSError, ValueError) as exc:
            return Finished.failure(index, EXIT_CANNOT_RUN, f"cannot run {argv[0]}: {exc}")
        self.signals.child_pgid = proc.pid
        if self.signals.received is not None:
            # The signal came while the child was being started.
            _kill_group(proc.pid, self.signals.received)
        try:
            returncode, timed_out, stderr_tail = self._wait(proc, output)
        finally:
            self.signals.child_pgid = None
            result, result_error = (None, None)
            if self.results is not None and result_path is not None:
                result, result_error = self.results.take(result_path)
        if timed_out and returncode != 0:
            code = EXIT_TIMEOUT
        elif returncode < 0:
            code = 128 - returncode  # killed by a signal, as shells report it
        else:
            code = returncode
        if code != 0 and self.signals.received is not None:
            # Stopped by us: not the microtask's failure, so not reported.
            return None
        if code == 0:
            if result_error is not None:
                return Finished.failure(index, 1, result_error)
            return Finished(0, result=result)
        stderr = stderr_tail.decode("utf-8", "replace").strip()
        if timed_out:
            head = f"timed out after {self.timeout:g}s"
        elif returncode < 0:
            head = f"killed by {_signal_name(-returncode)}"
        else:
            head = f"exit code {code}"
        short = f"{head}: {stderr[-_ERROR_TAIL_CHARS:]}" if stderr else head
        long = f"{head}: {tail(stderr, MAX_RECORD_ERROR_CHARS - len(head) - 2)}" if stderr else head
        # A failed command's result is kept if it is a valid one: it may say what went wrong.
        return Finished(
            code, error=f"index {index}: {short}", detail=long, timed_out=timed_out, result=result
        )

    def _wait(
        self, proc: subprocess.Popen[bytes] | _Spawned, output: _ChildOutput
    ) -> tuple[int, bool, bytes]:
        """Pass the output through (keeping stderr's tail) until the child exits or times out."""
        import math
        import select
        import subprocess

        pidfd: int | None = None
        if self.use_pidfd:
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError:
                self.use_pidfd = False  # e.g. an old kernel or a seccomp filter
        poller = select.poll()
        for fd in output.streams:
            poller.register(fd, select.POLLIN)
        poller.register(self.signals.wake_r, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        exited = False
        timed_out = False
        noticed_signal = False
        start = time.monotonic()
        deadline = None if self.timeout is None else start + self.timeout
        kill_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and not timed_out and now >= deadline:
                    timed_out = True
                    _kill_group(proc.pid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE_SECONDS
                if kill_at is not None and now >= kill_at:
                    _kill_group(proc.pid, signal.SIGKILL)
                    kill_at = None
                if self.signals.received is not None and not noticed_signal:
                    noticed_signal = True
                    self.on_signal()
                if exited:
                    break
                limits = [
                    t - now for t in (None if timed_out else deadline, kill_at) if t is not None
                ]
                limit = min(limits) if limits else None
                if pidfd is None and not output.open:
                    # No pidfd to poll: let Popen.wait poll the child (it backs off
                    # from 0.5 ms), in short slices to notice signals and deadlines.
                    try:
                        proc.wait(0.05 if limit is None else max(min(limit, 0.05), 0.0))
                        exited = True
                    except subprocess.TimeoutExpired:
                        pass
                    continue
                ms = -1 if limit is None else max(math.ceil(limit * 1000), 0)
                if pidfd is None:
                    # The pipes may be held open by a grandchild: check the child now and then.
                    ms = 500 if ms < 0 else min(ms, 500)
                for fd, _ in poller.poll(ms):
                    if fd in output.streams:
                        if not output.read(fd):
                            poller.unregister(fd)
                    elif fd == self.signals.wake_r:
                        _drain(self.signals.wake_r)
                    elif fd == pidfd:
                        exited = True
                if pidfd is None and output.open and proc.poll() is not None:
                    exited = True
            # The child is gone; take what it wrote, but do not wait for
            # grandchildren that inherited its pipes.
            output.drain()
            returncode = proc.wait()
            # Whatever the microtask left running in its group (background jobs,
            # a timed-out child's children) must not outlive it: microtasks are
            # independent, and strays would pile up over a shard.
            _kill_group(proc.pid, signal.SIGKILL)
            return returncode, timed_out, bytes(output.tail)
        finally:
            if pidfd is not None:
                os.close(pidfd)
            output.close()
            if proc.returncode is None:
                # Only on an unexpected error: do not leave the child behind.
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()


class _ChildOutput:
    """A child's output pipes, passed on to ours as data comes; keeps stderr's tail."""

    def __init__(self, streams: dict[int, int]) -> None:
        #: every pipe, to close at the end
        self.fds = list(streams)
        #: pipes still open -> the stream (1, 2) their data goes to
        self.streams = dict(streams)
        self.tail = bytearray()

    @property
    def open(self) -> bool:
        return bool(self.streams)

    def read(self, fd: int) -> bool:
        """Pass on one chunk of ``fd`` (ready to read); False at its end."""
        data = os.read(fd, 65536)
        if not data:
            del self.streams[fd]
            return False
        self._pass(fd, data)
        return True

    def drain(self) -> None:
        """Pass on whatever the pipes hold now, without waiting for more."""
        for fd in list(self.streams):
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, 65536):
                    self._pass(fd, data)
            except BlockingIOError:
                pass

    def _pass(self, fd: int, data: bytes) -> None:
        stream = self.streams[fd]
        CONSOLE.write(stream, data)
        if stream == 2:
            self.tail += data
            del self.tail[:-_TAIL_BYTES]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class _Spawned:
    """What ``_wait`` needs of a child started with posix_spawn (``Popen`` has it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                import subprocess

                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return code


#: Python ignores these; a command starts with their defaults, as ``Popen`` restores them.
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _spawnable() -> bool:
    """Whether posix_spawn starts a command as Popen would here.

    Popen closes every descriptor above 2 in the child; posix_spawn closes the
    non-inheritable ones only. Python opens everything non-inheritable, so this holds unless
    the runner was given inheritable descriptors of its own: checked once per process (a
    worker running shard after shard has what it was started with, and opens nothing
    inheritable above 2).
    """
    pid = os.getpid()
    if _SPAWNABLE_IN[0] != pid:
        _SPAWNABLE_IN[:] = [pid, _check_spawnable()]
    return bool(_SPAWNABLE_IN[1])


#: [pid, whether posix_spawn is right there] (``_spawnable``)
_SPAWNABLE_IN: list[int | bool] = [-1, False]


def _check_spawnable() -> bool:
    if not hasattr(os, "posix_spawn") or sys.platform != "linux":
        return False
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return False
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    return False
            except OSError:
                continue  # the listing's own descriptor, closed by now
    return True


def _find_program(program: str, env: Mapping[str, str]) -> str | None:
    """The file exec would run for ``program`` on the command's PATH (None: none found)."""
    if "/" in program:
        return program
    for folder in os.get_exec_path(env):
        path = os.path.join(folder or ".", program)
        try:
            if os.access(path, os.X_OK) and not os.path.isdir(path):
                return path
        except (OSError, ValueError):
            continue
    return None


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


#: The usual end of a microtask, shared (``Finished`` is immutable).
_SUCCEEDED = Finished(0)


class PythonExecutor:
    """Calls ``function(index, item)`` in-process."""

    def __init__(
        self,
        function: Callable[[int, Any], object],
        timeout: float | None,
        signals: Signals,
        keep_results: bool = False,
    ) -> None:
        self.function = function
        self.signals = signals
        #: False: return values are ignored (no result store)
        self.keep_results = keep_results
        self.tracebacks_shown = 0
        self.timeout = timeout
        if timeout is not None and not signals.can_time_out:
            # Without our SIGALRM handler the alarm would kill the process.
            log("per-microtask timeout not enforced: signals are unavailable here")
            self.timeout = None

    def run(self, index: int, item: Any) -> Finished | None:
        signals = self.signals
        timeout = self.timeout
        try:
            signals.in_call = True
            if timeout is not None:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                value = self.function(index, item)
            finally:
                # First thing: a late signal must not raise outside the call.
                signals.in_call = False
                if timeout is not None:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:
            return self.raised(index, exc)
        if value is None or not self.keep_results:
            return _SUCCEEDED
        return encode_value(index, value)

    def raised(self, index: int, exc: BaseException) -> Finished | None:
        """How a microtask that raised ``exc`` ended (None: the runner was told to stop).

        ``exc`` was caught in the frame that called the function: its first traceback entry.
        """
        if isinstance(exc, Interrupted):
            return None
        if isinstance(exc, MicrotaskTimeout):
            return Finished.failure(
                index, EXIT_TIMEOUT, f"timed out after {self.timeout:g}s", timed_out=True
            )
        if isinstance(exc, SystemExit):
            code, message = _system_exit(exc)
            if code == 0:
                return _SUCCEEDED
            return Finished.failure(index, code, f"SystemExit({message})", exception="SystemExit")
        # The traceback without the runner's own frame: all in the record, the first one
        # in the log (one helps debugging; thousands would drown the log).
        import traceback  # only when a microtask fails

        frames = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        formatted = "".join(traceback.format_exception(type(exc), exc, frames))
        if self.tracebacks_shown == 0:
            self.tracebacks_shown += 1
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(formatted)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        formatted = formatted.strip()
        return Finished(
            1,
            error=f"index {index}: {detail}",
            detail=formatted,
            exception=_type_name(type(exc)),
        )


def _type_name(cls: type) -> str:
    """``ValueError`` for builtins, ``module.Class`` for the others."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _system_exit(exc: SystemExit) -> tuple[int, str]:
    """The exit code a SystemExit stands for, as the interpreter would exit."""
    value = exc.code
    if value is None:
        return 0, ""
    if isinstance(value, int) and not isinstance(value, bool):
        # Codes outside 1..255 cannot be exit statuses; call them plain failures.
        return (value if 0 <= value <= 255 else 1), str(value)
    return 1, repr(value)


# ---------------------------------------------------------------------- loop


class _Books:
    """Where a finished microtask goes: its record, the outcomes (so the report), the log.

    The loop keeps the latest run of successes itself and hands it over with ``settle``.
    """

    def __init__(self, outcomes: Outcomes, store: ResultStore | None, info: ShardInfo) -> None:
        self.outcomes = outcomes
        self.store = store
        self.format = RecordFormat(info)
        #: index -> when (``time.monotonic``) its run ended in a failure: its retry waits from then
        self.failed_at: dict[int, float] = {}

    def enter(
        self, index: int, *, start: float, seconds: float, finished: Finished, quiet: bool = False
    ) -> None:
        """A microtask that did not end as a quick success (those the loop enters itself)."""
        if self.store is not None:
            self.store.record(self.format(index, start, seconds, finished))
        if finished.code == 0:
            self.outcomes.add_run(index, index + 1, seconds, seconds)
            return
        self.failed_at[index] = time.monotonic()
        self.outcomes.add(index, finished.code, seconds, finished.error)
        if not quiet:
            log(
                f"index {index} failed (exit {finished.code}, {seconds:.2f}s): "
                f"{_first_line(finished.error or '')}"
            )

    def sync(self) -> None:
        """Records to the store, so that the report may claim their microtasks."""
        # The record first: a report never counts a microtask whose record could be missing.
        if self.store is not None:
            self.store.flush(final=False)


class _Run:
    """Consecutive quick successes the loop counted but did not add to the outcomes yet."""

    def __init__(self) -> None:
        self.start = self.end = 0
        self.total = self.max = 0.0

    def settle(self, outcomes: Outcomes) -> None:
        if self.end > self.start:
            outcomes.add_run(self.start, self.end, self.total, self.max)
        self.start = self.end
        self.total = self.max = 0.0


class _Held:
    """The delimiter lines of a quick streak not written yet (``Console.hold``).

    They are ``end`` of ``first``, ``begin`` of ``first + 1``, ..., ``end`` of ``current - 1``
    and ``begin`` of ``current``: every microtask between ended as a quick success. The loop
    moves ``current`` (one store, read at once by the capture thread); ``take`` runs under the
    console's lock.
    """

    def __init__(self, prefix: str, begin_tail: str, quick_end: str) -> None:
        self.first = self.current = 0
        self.prefix = prefix
        self.begin_tail = begin_tail
        #: "<end tail of a quick success>\n<prefix>"
        self.quick_end = quick_end
        self.end_tail = quick_end[: -len(prefix)]
        self._block: tuple[int, bytes | memoryview] = (-1, b"")

    def take(self) -> list[bytes | memoryview]:
        """The held lines in pieces, in order, and forget them (``Console.hold``).

        The pieces between the first and the last line are views of a block's cached text,
        not copies: a block is written from the buffer it was just made in, while that is
        still in the cache (a write of one big joined buffer costs several times more).
        """
        first, current = self.first, self.current
        if current <= first:
            return []
        self.first = current
        return [
            f"{self.prefix}{first}{self.end_tail}".encode(),
            *self._pairs(first + 1, current),
            f"{self.prefix}{current}{self.begin_tail}".encode(),
        ]

    def _pairs(self, low: int, high: int) -> list[bytes | memoryview]:
        """begin(i) end(i) for i in ``low..high-1``, in pieces."""
        parts: list[bytes | memoryview] = []
        while low < high:
            block = low // _BLOCK
            top = min(high, (block + 1) * _BLOCK)
            if block == 0:  # numbers without the block's leading digits: one by one
                numbers = list(map(str, range(low, top)))
                count = len(numbers)
                pieces = [f"{self.end_tail}{self.prefix}"] * (4 * count)
                pieces[0::4] = numbers
                pieces[1::4] = [f"{self.begin_tail}{self.prefix}"] * count
                pieces[2::4] = numbers
                parts.append(f"{self.prefix}{''.join(pieces)}"[: -len(self.prefix)].encode())
            else:
                cached, text = self._block
                if cached != block:
                    template = block_template(self.prefix, self.begin_tail, self.end_tail)
                    text = memoryview(str(block).encode().join(template))
                    self._block = (block, text)
                size = len(text) // _BLOCK
                parts.append(text[(low - block * _BLOCK) * size : (top - block * _BLOCK) * size])
            low = top
        return parts


_TEMPLATES: dict[tuple[str, str, str], list[bytes]] = {}


def block_template(prefix: str, begin_tail: str, end_tail: str) -> list[bytes]:
    """begin(i) end(i) of the indexes of a block of ``_BLOCK``, in pieces that ``i // _BLOCK``
    joins: one ``join`` per block writes them all (``_Held``), where a format per index costs
    far more. Made once per process (a fork server makes attempt 1's for all its children)."""
    key = (prefix, begin_tail, end_tail)
    template = _TEMPLATES.get(key)
    if template is None:
        numbers = [f"@{j:0{_BLOCK_DIGITS}d}" for j in range(_BLOCK)]
        pieces = [f"{end_tail}{prefix}"] * (4 * _BLOCK)
        pieces[0::4] = numbers
        pieces[1::4] = [f"{begin_tail}{prefix}"] * _BLOCK
        pieces[2::4] = numbers
        text = f"{prefix}{''.join(pieces)}"[: -len(prefix)]
        template = _TEMPLATES[key] = text.encode().split(b"@")
    return template


def warm(attempt: int = 1) -> None:
    """Make what every shard of ``attempt`` would make for itself (see forkserver.py)."""
    block_template(f"{DELIMITER_PREFIX} index=", f" attempt={attempt} begin\n", _end_tail(attempt))


def _end_tail(attempt: int) -> str:
    return f" attempt={attempt} end exit=0 seconds=0.000\n"


def run_shard(
    *,
    indexes: IndexSet,
    items: ItemSource,
    executor: Executor,
    outcomes: Outcomes,
    progress: Progress,
    signals: Signals,
    store: ResultStore | None = None,
    info: ShardInfo | None = None,
    retry: Retry | None = None,
) -> int:
    """Run every microtask of the shard; return the runner's exit code.

    With ``retry``, the failed microtasks then run once more (see ``Retry``).

    The loop is written for speed: a quick no-op microtask costs a few hundred nanoseconds
    of it on top of one write of its delimiter lines (see the module doc). In Python mode
    without a timeout, a streak of quick successes runs in a tighter loop still (``streak``),
    which hands anything unusual back to this one.
    """
    started = time.monotonic()
    info = info or ShardInfo()
    books = _Books(outcomes, store, info)
    log(f"running {len(indexes)} microtasks: {indexes.format_bounded(80) or '(none)'}")
    # The delimiter lines (``contract.begin_line``, ``contract.end_line``), formatted here.
    prefix = f"{DELIMITER_PREFIX} index="
    begin_tail = f" attempt={info.attempt} begin\n"
    end_tail = f" attempt={info.attempt} end exit="
    quick_end_line = f"{end_tail}0 seconds=0.000\n"
    quick_end = f"{quick_end_line}{prefix}"
    clock = time.perf_counter
    to_wall = time.time() - clock()
    lines = CONSOLE.lines
    run = executor.run
    get = items.get
    record = None if store is None else store.record
    record_format = books.format
    quick_record = record_format.quick
    pending = _Run()
    quick = 0  # quick microtasks in a row
    expected = -1  # the index that continues the run of the last one
    synced = -math.inf
    cur_map, cur_at = None, 0
    # The end line of a quick success waits for the next begin line: one write for both.
    ended: int | str | None = None
    held: _Held | None = None
    fast = isinstance(executor, PythonExecutor) and executor.timeout is None
    # In a streak, fds 1 and 2 are captured (if they are not already, for a log copy), so
    # that a quick microtask that printed nothing costs a poll instead of a write of its
    # delimiters. Only then: slower microtasks gain nothing from it. Not on a terminal,
    # where a microtask's own output would no longer be one.
    may_capture = fast and _capturable()
    captured_here = False
    # Python mode's streaks watch for output without a system call per microtask, where they
    # can (``Console.watch``): its flag, or None.
    watch: list[bool] | None = None
    linear = items.linear()

    def streak(last_index: int) -> tuple[int, Finished | None, float, float] | None:
        """Run quick successes from ``it`` until something unusual, the loop's business.

        Entered after ``last_index`` ended as a quick success (its end line not written yet).
        Returns the microtask that ended otherwise (index, how, start, seconds), begun and run
        but not entered anywhere; None once ``it`` is exhausted.
        """
        nonlocal synced, cur_map, cur_at, ended, held, captured_here, may_capture, watch
        assert isinstance(executor, PythonExecutor)
        if held is None and may_capture:
            may_capture = False
            if not CONSOLE.captured:
                try:
                    CONSOLE.capture()
                    captured_here = True
                except OSError:
                    pass
            if CONSOLE.captured:
                held = _Held(prefix, begin_tail, quick_end)
                CONSOLE.hold(held.take)
                watch = CONSOLE.watch()
        function = executor.function
        keep = executor.keep_results
        quiet = CONSOLE.quiet
        take_in = CONSOLE.take_in
        set_current = progress.set_current
        flag = watch
        streams = sys
        out, err = sys.stdout, sys.stderr
        if held is not None:
            # What ``last_index`` printed goes out before its end line, which is held from now.
            quiet()
            with CONSOLE.lock:
                take_in()
                held.first = held.current = last_index
            if flag is not None:
                flag[0] = False
        plain = linear == (0, 1)
        ranged = linear is not None and not plain
        base, step = linear or (0, 1)
        last = accounted = clock()
        # The streak's successes go to the store as span records (``quick_span``).
        records_from = last_index + 1
        records_start = to_wall + last
        sync_at = last + _SYNC_SECONDS
        sync_index = records_from + _SYNC_COUNT
        # Held lines go out a block at a time between syncs (see ``_Held.take``).
        blocks = held is not None
        check_at = min(sync_index, (records_from // _BLOCK + 1) * _BLOCK) if blocks else sync_index
        longest = 0.0
        digit_at = cur_at + _NUMBER_CHARS - 1
        # Up to ``ten_at`` (exclusive) an index differs from the one before in its last digit
        # alone, the character ``index - char_base``; -1: no map, every index is set in full.
        ten_at = -1 if cur_map is None else (last_index // 10 + 1) * 10
        char_base = ten_at - 58

        def settle(end: int) -> None:
            """Hand the streak's successes before ``end`` to the records and the outcomes."""
            nonlocal records_from, records_start, accounted, longest
            if record is not None and end > records_from:
                record(record_format.quick_span(records_from, end - 1, records_start))
            records_from = end
            records_start = to_wall + last
            if end > pending.end:
                pending.end = end
                pending.total += last - accounted
                pending.max = max(pending.max, longest)
            accounted = last
            longest = 0.0

        index = last_index
        for index in it:
            if last >= sync_at or index >= check_at:
                if last >= sync_at or index >= sync_index:
                    settle(index)
                    books.sync()
                    pending.settle(outcomes)
                    progress.write(current=index)
                    cur_map, cur_at = progress.file.current_slot()
                    digit_at = cur_at + _NUMBER_CHARS - 1
                    # The write named ``index`` in full: a digit store until the next ten.
                    ten_at = -1 if cur_map is None else (index // 10 + 1) * 10
                    char_base = ten_at - 58
                    if held is not None:
                        CONSOLE.release_held()
                    synced = clock()
                    sync_at = synced + _SYNC_SECONDS
                    sync_index = index + _SYNC_COUNT
                elif held is not None:
                    CONSOLE.release_held()
                check_at = sync_index
                if blocks:
                    check_at = min(sync_index, (index // _BLOCK + 1) * _BLOCK)
            # The report names the microtask: its last digit is all that changes, mostly.
            if index < ten_at:
                cur_map[digit_at] = index - char_base  # type: ignore[index]
            else:
                set_current(index)
                if cur_map is not None:
                    ten_at = (index // 10 + 1) * 10
                    char_base = ten_at - 58  # ten_at - 10 is "0" (48)
            if held is None:
                lines(f"{prefix}{index - 1}{quick_end}{index}{begin_tail}".encode())
            else:
                held.current = index
            if plain:
                item = index
            elif ranged:
                item = base + index * step
            else:
                item = get(index)
            signals.in_call = True
            try:
                value = function(index, item)
            except BaseException as exc:
                signals.in_call = False
                now = clock()
                settle(index)
                return index, executor.raised(index, exc), last, now - last
            signals.in_call = False
            now = clock()
            seconds = now - last
            if (value is not None and keep) or signals.received is not None:
                settle(index)
                finished = _SUCCEEDED if value is None or not keep else encode_value(index, value)
                return index, finished, last, seconds
            # Only a new longest can be a slow one: mostly one compare per microtask.
            if seconds > longest:
                if seconds >= 0.0005:
                    settle(index)
                    return index, _SUCCEEDED, last, seconds  # a value is kept above
                longest = seconds
            if flag is not None:
                if flag[0] or streams.stdout is not out or streams.stderr is not err:
                    # It printed (or replaced a stream: then no more watching, polls again).
                    quiet()
                    take_in()
                    flag[0] = False
                    if streams.stdout is not out or streams.stderr is not err:
                        CONSOLE.unwatch()
                        flag = watch = None
            elif held is not None and not quiet():
                take_in()  # it printed: its output goes out after its begin line
            last = now
        settle(index + 1)
        ended = index
        return None

    stopped = False
    try:
        for low, high in indexes.ranges:
            it = iter(range(low, high))
            for index in it:
                if signals.received is not None:
                    stopped = True
                    break
                if index != expected:
                    quick = 0  # a gap: the report's run of successes ends, so sync at once
                if (
                    quick < _QUICK_STREAK
                    or clock() - synced >= _SYNC_SECONDS
                    or (store is not None and store.pending_bytes >= _SYNC_BYTES)
                ):
                    books.sync()
                    pending.settle(outcomes)
                    progress.write(current=index)
                    cur_map, cur_at = progress.file.current_slot()
                    synced = clock()
                elif cur_map is not None:
                    cur_map[cur_at : cur_at + _NUMBER_CHARS] = b"%20d" % index
                else:
                    progress.set_current(index)
                item = get(index)
                if ended is None:
                    lines(f"{prefix}{index}{begin_tail}".encode())
                elif type(ended) is int:
                    lines(f"{prefix}{ended}{quick_end}{index}{begin_tail}".encode())
                else:
                    lines(f"{ended}{prefix}{index}{begin_tail}".encode())
                ended = None
                begin = clock()
                finished = run(index, item)
                seconds = clock() - begin
                while True:
                    expected = index + 1
                    if finished is _SUCCEEDED and seconds < 0.0005:
                        # The usual case, kept short: the end line is all index, the record
                        # nearly so.
                        ended = index
                        if record is not None:
                            record(quick_record(index, to_wall + begin))
                        if index != pending.end:
                            pending.settle(outcomes)
                            pending.start = index
                        pending.end = expected
                        pending.total += seconds
                        pending.max = max(pending.max, seconds)
                        quick += 1
                        if (
                            quick < _QUICK_STREAK
                            or not fast
                            or expected >= high
                            or signals.received is not None
                        ):
                            break
                        carried = streak(index)
                        if carried is None:
                            break
                        ended = None
                        index, finished, begin, seconds = carried  # noqa: PLW2901
                        continue
                    if finished is None:
                        # Stopped: its output ends here too, but it has no outcome and no record.
                        stopped_by = signals.received or signal.SIGTERM
                        lines(
                            end_line(index, info.attempt, 128 + stopped_by, seconds).encode()
                            + b"\n"
                        )
                        stopped = True
                        break
                    pending.settle(outcomes)
                    # "%.3f" of anything under half a millisecond (or negative) is 0.000.
                    secs = "0.000" if seconds < 0.0005 else f"{seconds:.3f}"
                    ended = f"{prefix}{index}{end_tail}{finished.code} seconds={secs}\n"
                    if finished.code != 0:
                        lines(ended.encode())  # before the failure's log line
                        ended = None
                    if finished.code != 0:
                        quick = 0
                    elif seconds < _QUICK_SECONDS:
                        quick += 1
                    else:
                        # One slow success among quick ones (preempted, say): it is claimed
                        # before the next microtask, and the streak goes on after that.
                        quick = min(quick, _QUICK_STREAK - 1)
                    books.enter(index, start=to_wall + begin, seconds=seconds, finished=finished)
                    break
                if stopped:
                    break
            if stopped:
                break
        if type(ended) is int:
            lines(f"{prefix}{ended}{quick_end_line}".encode())
        elif isinstance(ended, str):
            lines(ended.encode())
    finally:
        if watch is not None:
            CONSOLE.unwatch()
        if held is not None:
            CONSOLE.release_held()
            CONSOLE.hold(None)
        if captured_here:
            CONSOLE.release()
    pending.settle(outcomes)
    if retry is not None and not stopped and signals.received is None:
        books.sync()
        retry.run(books, items=items, executor=executor, progress=progress, signals=signals)
    books.sync()
    progress.write(current=None, final=True)
    return _conclude(outcomes, indexes, signals, time.monotonic() - started)


class Retry:
    """A pod's own retries: each failed microtask once more, ``after`` seconds after it failed.

    At the end of the shard, when ``contract.retries_in_pod`` allows (no more failed than
    succeeded) and the exit code is not in ``skip``. The second run is the next attempt: its
    delimiter lines and record carry that number, and the report lists the microtask in
    ``retried`` with the code of its first run, so the operator charges both attempts. A retry
    saves the pod start-up a new shard would cost, and the wait behind the rest of the job.
    """

    def __init__(self, after: float, skip: frozenset[int] = frozenset()) -> None:
        self.after = after
        self.skip = skip

    def run(
        self,
        books: _Books,
        *,
        items: ItemSource,
        executor: Executor,
        progress: Progress,
        signals: Signals,
    ) -> None:
        outcomes = books.outcomes
        if not retries_in_pod(outcomes.count - outcomes.failures, outcomes.failures):
            return
        failed_at = books.failed_at
        todo = sorted(
            (failed_at[index], index, code)
            for code, indexes in outcomes.report(None).failed.items()
            if code not in self.skip
            for index in indexes
            if index in failed_at
        )
        if not todo:
            return
        import select  # only now: most shards never get here

        info = books.format.info
        attempt = info.attempt + 1
        again = RecordFormat(
            ShardInfo(
                job=info.job, shard=info.shard, attempt=attempt, pool=info.pool, node=info.node
            )
        )
        store = books.store
        if store is not None and info.job is not None and info.shard is not None:
            # A file of their own: the shard's records file ascends by index.
            store.push()
            first = min(index for _, index, _ in todo)
            store.records = records_name(first, info.job, info.shard, again=attempt)
        log(f"running {len(todo)} failed microtasks again, each {self.after:g}s after it failed")
        # What the microtasks see: the attempt they are.
        os.environ[ENV_ATTEMPT] = str(attempt)
        if isinstance(executor, CommandExecutor):
            executor.env[ENV_ATTEMPT] = str(attempt)
        for ended, index, first in todo:
            progress.write(current=None)
            wait = ended + self.after - time.monotonic()
            while wait > 0 and signals.received is None:
                select.select([signals.wake_r], [], [], wait)
                wait = ended + self.after - time.monotonic()
            if signals.received is not None:
                return
            progress.write(current=index)
            CONSOLE.lines(f"{begin_line(index, attempt)}\n".encode())
            start = time.time()
            begin = time.perf_counter()
            finished = executor.run(index, items.get(index))
            seconds = time.perf_counter() - begin
            if finished is None:
                stopped_by = signals.received or signal.SIGTERM
                CONSOLE.lines(f"{end_line(index, attempt, 128 + stopped_by, seconds)}\n".encode())
                return
            CONSOLE.lines(f"{end_line(index, attempt, finished.code, seconds)}\n".encode())
            if store is not None:
                store.record(again(index, start, seconds, finished))
                books.sync()
            outcomes.retake(index, first, finished.code, seconds, finished.error)
            progress.stale = True
            if finished.code == 0:
                log(f"index {index} succeeded on attempt {attempt} ({seconds:.2f}s)")
            else:
                log(
                    f"index {index} failed again (exit {finished.code}, {seconds:.2f}s): "
                    f"{_first_line(finished.error or '')}"
                )


def _capturable() -> bool:
    """Whether the loop may capture fds 1 and 2: both open, and neither a terminal."""
    try:
        return not (os.isatty(1) or os.isatty(2))
    except OSError:
        return False


def fail_shard(
    *,
    indexes: IndexSet,
    code: int,
    message: str,
    outcomes: Outcomes,
    progress: Progress,
    signals: Signals,
    store: ResultStore | None = None,
    info: ShardInfo | None = None,
) -> int:
    """Report every microtask of the shard failed with ``code`` without running any.

    For a command that cannot run at all: each microtask fails as it would have, with a record
    each, and the operator sees ordinary failures (which it does not retry for 126 and 127).
    """
    started = time.monotonic()
    log(f"{message}: the {len(indexes)} microtasks of this shard fail with exit code {code}")
    books = _Books(outcomes, store, info or ShardInfo())
    for index in indexes:
        failed = Finished.failure(index, code, message)
        books.enter(index, start=time.time(), seconds=0.0, finished=failed, quiet=True)
    books.sync()
    progress.write(current=None, final=True)
    return _conclude(outcomes, indexes, signals, time.monotonic() - started)


def _conclude(outcomes: Outcomes, indexes: IndexSet, signals: Signals, elapsed: float) -> int:
    """Log the summary; the runner's exit code."""
    codes = ", ".join(f"exit {code}: {n}" for code, n in outcomes.codes().items())
    summary = (
        f"{outcomes.count} of {len(indexes)} microtasks run in {elapsed:.2f}s: "
        f"{outcomes.count - outcomes.failures} succeeded, {outcomes.failures} failed"
        + (f" ({codes})" if codes else "")
    )
    if signals.received is not None:
        log(f"stopped by {_signal_name(signals.received)}; {summary}")
        return 128 + signals.received
    log(summary)
    return EXIT_FAILED if outcomes.failures else EXIT_OK
