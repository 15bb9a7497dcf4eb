"""A warm runner: one process that has imported the runner once and forks a child per shard.

Starting ``python -m microtask_runner`` costs an interpreter and the runner's imports for every
shard; at one microtask per shard that is nearly all the time a shard takes. ``microtask run``
starts this server once instead (``python -m microtask_runner.forkserver``, with the job's
environment and working directory) and asks it for each shard's runner:

    request (stdin, one JSON line):  {"argv": [...], "env": {...}, "cwd": "...", "log": "..."}
                                     "env" holds only the variables that differ from the
                                     server's environment (what it was started with), and
                                     "unset" (optional) lists those to remove
    replies (stdout, one line each): "ready PID" once, then "spawned PID" (or "failed MESSAGE")
                                     per request, and "exit PID CODE" when a child ends
                                     (CODE as subprocess reports it: -N for signal N)

Each child is a fresh fork of a server that has never run a shard, so nothing one shard does (its
environment, working directory, signal handlers, captured file descriptors, imported user
modules) reaches the next. The child takes a process group of its own (in the server's session,
which has no terminal), puts its stdin on /dev/null and its stdout and stderr on the shard's log,
takes the shard's environment and working directory, restores the signal dispositions a new
interpreter has, and runs ``cli.main`` as the command would. The server only reaps its children
and passes their exit codes on.

The next request's child is forked ahead, while the server waits (``_Server.prepare``): it takes
its group, its dispositions and /dev/null at once, then waits for its request on a pipe of its
own, so a request costs the server a reply and a write instead of a fork while the executor
waits. The request reaches the child only after the reply that gives the executor its pid; a
child whose server dies or ends first gets none and exits without running anything.

The server imports and compiles once what every child needs (``_warm``; nothing of the user's).
With ``--pycache DIR`` and bytecode writing off (``PYTHONDONTWRITEBYTECODE``), the children
share compiled modules in DIR (``sys.pycache_prefix``), so the user's module is compiled once
per run instead of once per shard.

Where bytecode is not written, a server or worker would also compile the runner itself (and the
standard modules it imports) at every start, which takes longer than all the rest of its start.
Started as ``python -X pycache_prefix=CACHE -m microtask_runner.forkserver --compiled CACHE ...``
it reads them compiled from CACHE, a folder kept across runs: whatever it had to compile there
(the first time, or after an upgrade) it writes to CACHE once it is up (``_keep_compiled``). A
server then stops using CACHE, before ``--pycache`` applies: the children compile the user's
modules into the run's folder as before.

When its stdin closes (the executor is gone, however it ended), the server asks its remaining
children to stop (SIGTERM to their groups: each runner stops its microtask and writes its final
report) and exits, so no shard outlives ``microtask run`` by much.

A persistent worker (``python -m microtask_runner.forkserver --worker``) goes one step further for
command mode, where a shard runs nothing of the user's in the runner's own process: it runs shard
after shard itself, so a shard costs neither a fork nor the imports a fresh child would redo.
Python mode uses it too when the user asks to reuse processes (`microtask run
--reuse-processes`): the user's module is then imported by the first shard and kept, as in a
multiprocessing.Pool worker.

    request (stdin, one JSON line):  as above, but "env" and "unset" are against the worker's
                                     environment now (what it was started with, then the
                                     previous shard's)
    replies (stdout, one line each): "ready PID" once, then "done CODE" per shard (CODE as the
                                     runner's exit code)

The worker is the leader of its own process group, so the executor signals and kills it as it
would a runner of one shard. Per shard it takes the shard's environment, working directory and
arguments, puts its stdout and stderr on the shard's log (and back on /dev/null and its own
stderr afterwards), and calls ``cli.main``; every runner resource (report file, records, signal
handlers, the results spool's files) is opened and released inside that call. Between shards a
SIGTERM ends the worker (the default disposition); a shard stopped by a signal is the worker's
last. When its stdin closes the worker exits, at once if idle, else by stopping its shard as a
SIGTERM would.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stubs: signal without enums)
import atexit
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from . import cli, contract, execute
from .execute import EXIT_RUNNER_ERROR

__all__ = ["main", "serve"]

_CHUNK = 1 << 16


def _reply(line: str) -> None:
    data = (line + "\n").encode("utf-8", "backslashreplace")
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _prepare_child(keep: int) -> None:
    """In a child forked ahead of its request: what a shard's runner needs whatever the shard.

    ``keep``: the descriptor its request comes through, the only one of the server's it keeps.
    """
    # A group of its own (the server does the same from its side, so a signal sent to the group
    # as soon as the pid is known cannot miss); the server's session has no terminal already.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # A new interpreter's dispositions: the server's SIGCHLD handler and wake-up fd are its own.
    # (``_signal`` directly: ``signal.signal`` converts to and from enums, per call.)
    _signal.set_wakeup_fd(-1)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    _signal.signal(_signal.SIGHUP, _signal.SIG_DFL)
    # Off the server's request and reply pipes at once: a server that dies while this child
    # waits must be seen to die by the executor (its stdout closes).
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    top = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 256
    os.closerange(3, keep)
    os.closerange(keep + 1, max(top, keep + 1))
    # What the server's finders cached about folders may be older than the shard's files. (Done
    # before the request: a finder refreshes at its first use after this, which comes later.)
    importlib.invalidate_caches()


def _run_child(request: dict[str, Any]) -> int:
    """In the forked child, prepared (``_prepare_child``): become the shard's runner; returns
    its exit code."""
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(str(request["cwd"]))
    # The request holds only what differs from the server's environment (the first shard's,
    # mostly the same): a variable set, or even read, costs more here than in the executor.
    for key in request.get("unset", ()):
        os.environ.pop(str(key), None)
    for key, value in dict(request["env"]).items():
        os.environ[str(key)] = str(value)
    argv = [str(a) for a in request["argv"]]
    sys.argv = ["microtask-runner", *argv]
    # Like `python -m` in the shard's folder: its modules come first on the import path.
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    return cli.main(argv)


def _spare(requests: int) -> None:
    """The child forked ahead: prepare, wait for the request, run it; never returns.

    The request is the go: it comes once the executor knows this child's pid. Without one (the
    server died first, or ends), the child exits without running anything, so there is never a
    runner the executor does not know of, and that it would run again elsewhere.
    """
    try:
        _prepare_child(requests)
        data = b""
        while chunk := os.read(requests, _CHUNK):
            data += chunk
        os.close(requests)
        request = json.loads(data) if data else None
    except BaseException:
        os._exit(EXIT_RUNNER_ERROR)
    if not isinstance(request, dict):
        os._exit(EXIT_RUNNER_ERROR)
    _child(request)


def _child(request: dict[str, Any]) -> None:
    """Run the child and exit without ever returning into the server's loop."""
    code = EXIT_RUNNER_ERROR
    try:
        code = _run_child(request)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        # What an interpreter does on its way out, short of returning into the server's loop.
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        shutdown = getattr(sys.modules.get("threading"), "_shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(BaseException):
                shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code & 0xFF)


class _Server:
    def __init__(self) -> None:
        self.children: set[int] = set()
        self.buffer = b""
        #: The next request's child, forked ahead (``prepare``): its pid and the write end of
        #: the pipe its request goes to.
        self.spare: tuple[int, int] | None = None

    def prepare(self) -> str | None:
        """Fork the next request's child now, while nobody waits for it: a request then costs
        a reply and a write, and the child is already off the server's descriptors.

        Returns why it could not (the request that finds no child forks for itself).
        """
        if self.spare is not None:
            return None
        request_r, request_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(request_r)
            os.close(request_w)
            return exc.strerror or str(exc)
        if pid == 0:
            os.close(request_w)
            _spare(request_r)
        os.close(request_r)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.spare = (pid, request_w)
        return None

    def spawn(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            _reply(f"failed bad request: {exc}")
            return
        error = self.prepare()
        if self.spare is None:
            _reply(f"failed cannot fork: {error}")
            return
        (pid, request_w), self.spare = self.spare, None
        try:
            self.children.add(pid)
            # Always before this child's "exit": the executor learns the pid first, and only
            # then does the child get its request.
            _reply(f"spawned {pid}")
            view = memoryview(line)
            while view:
                view = view[os.write(request_w, view) :]
        except OSError:
            pass  # the child is gone: its exit says so
        finally:
            os.close(request_w)
        self.prepare()

    def reap(self) -> None:
        while self.children or self.spare is not None:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                # Gone before any request: nobody knows of it; the next one is forked anew.
                os.close(self.spare[1])
                self.spare = None
                continue
            self.children.discard(pid)
            _reply(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

    def read(self) -> bool:
        """Take in what stdin holds and serve every whole request; False at its end."""
        data = os.read(0, _CHUNK)
        if not data:
            return False
        self.buffer += data
        while (cut := self.buffer.find(b"\n")) >= 0:
            line, self.buffer = self.buffer[:cut], self.buffer[cut + 1 :]
            if line.strip():
                self.spawn(line)
        return True

    def stop_children(self) -> None:
        if self.spare is not None:
            os.close(self.spare[1])  # no request will come: it exits
            self.spare = None
        for pid in self.children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)


def _share_compiled(folder: str) -> None:
    """Where no bytecode is written (PYTHONDONTWRITEBYTECODE), every child would compile the
    user's modules again: they share compiled modules in ``folder`` instead (a folder of the
    run's own, never the source tree; ``PYTHONPYCACHEPREFIX`` set by the user wins)."""
    if sys.dont_write_bytecode and sys.pycache_prefix is None:
        sys.pycache_prefix = folder
        sys.dont_write_bytecode = False


def _keep_compiled(cache: str) -> None:
    """Write to ``cache`` the compiled form of every module imported so far that it lacks.

    This process was started with ``-X pycache_prefix=CACHE`` and no bytecode writing: the modules
    it found compiled there were read as they were, the others compiled from their source and
    kept in memory only. They are written now, once, so that the next start finds them all.
    """
    if not (sys.dont_write_bytecode and sys.pycache_prefix == cache):
        return
    missing = []
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None)
        cached = getattr(spec, "cached", None)
        if (
            isinstance(origin, str)
            and isinstance(cached, str)
            and origin.endswith(".py")
            and cached.startswith(cache)
            and not os.path.exists(cached)
        ):
            missing.append((origin, cached))
    if not missing:
        return
    import py_compile

    for origin, cached in missing:
        # A cache that cannot be written only means the next start compiles again.
        with contextlib.suppress(Exception):
            py_compile.compile(origin, cfile=cached, doraise=True)


def _warm() -> None:
    """Do once here what every child would do for itself: what it imports, the patterns it
    compiles. Nothing of the user's runs here (their module is imported by each child)."""
    import mmap  # noqa: F401 (the live report's map)

    # The quick loop's output watch (``console.py``): a C extension that each child would
    # otherwise load for itself, hundreds of page copies per shard.
    with contextlib.suppress(ImportError):
        import fcntl  # noqa: F401

    contract.warm()
    execute.warm()


def serve(pycache: str | None = None, compiled: str | None = None) -> int:
    """The server's loop, over stdin and stdout (see the module doc).

    ``pycache``: a folder for compiled modules, where bytecode is not written (``--pycache``).
    ``compiled``: the folder this process read the runner compiled from (``--compiled``).
    """
    if compiled:
        _keep_compiled(compiled)
        if sys.pycache_prefix == compiled:
            # The user's modules are compiled as every shard of the run does (``--pycache``).
            sys.pycache_prefix = None
    if pycache:
        _share_compiled(pycache)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_DFL) so SIGCHLD writes to the wake-up fd and ends the select.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    server = _Server()
    # A bare poll: after each fork, every page the server writes is copied (the child shares
    # them all), so its loop makes as few objects as it can.
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    _warm()
    # What the server imported stays shared with every child instead of being copied on write.
    gc.freeze()
    _reply(f"ready {os.getpid()}")
    try:
        server.prepare()
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 512):
                            pass
                elif not server.read():
                    return 0
            server.reap()
    finally:
        # Nobody is left to tell (or the server failed): the runners must not run on unseen.
        server.stop_children()


class _Requests:
    """The worker's stdin: whole request lines, read by the worker itself between shards, and
    its end noticed at once, also while a shard runs (a thread waits for the hang-up)."""

    def __init__(self, fd: int) -> None:
        import threading

        self.fd = fd
        self.buffer = b""
        self.lock = threading.Lock()
        self.busy = False
        self.ended = False
        threading.Thread(target=self._watch, daemon=True, name="requests").start()

    def _watch(self) -> None:
        """Wait for the executor to hang up, reading nothing: the requests are the worker's."""
        import select

        poller = select.poll()
        # No event asked for: only the hang-up (or an error) ends the wait, never a request.
        poller.register(self.fd, 0)
        with contextlib.suppress(OSError):
            while not poller.poll():
                pass
        with self.lock:
            self.ended = True
            busy = self.busy
        if busy:
            # The executor is gone: stop the shard as its SIGTERM would (the runner stops the
            # microtask and writes its final report), so it does not run on unseen.
            with contextlib.suppress(OSError):
                os.kill(os.getpid(), signal.SIGTERM)

    def next(self) -> bytes | None:
        """The next request, marked as running; None when the executor is gone."""
        while True:
            while (cut := self.buffer.find(b"\n")) < 0:
                try:
                    data = os.read(self.fd, _CHUNK)
                except OSError:
                    data = b""
                if not data:
                    return None
                self.buffer += data
            line, self.buffer = self.buffer[:cut], self.buffer[cut + 1 :]
            if line.strip():
                break
        with self.lock:
            if self.ended:
                return None
            self.busy = True
        return line

    def idle(self) -> None:
        with self.lock:
            self.busy = False


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _run_in_worker(
    request: dict[str, Any], *, devnull: int, errors: int, spool: str, environment: dict[str, str]
) -> int:
    """One shard in this process, with its own environment, folder and log; its exit code.

    ``environment``: a copy of ``os.environ`` that the worker keeps, changed alongside it, so
    that the runner reads a plain dict (every read of ``os.environ`` decodes its variable).
    """
    code = EXIT_RUNNER_ERROR
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
    finally:
        os.close(log)
    try:
        os.chdir(str(request["cwd"]))
        # The runner changes nothing in the environment: the previous shard's plus the changes
        # is this shard's.
        for key in request.get("unset", ()):
            os.environ.pop(str(key), None)
            environment.pop(str(key), None)
        changes = {str(k): str(v) for k, v in dict(request["env"]).items()}
        os.environ.update(changes)
        environment.update(changes)
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["microtask-runner", *argv]
        code = cli.main(argv, spool=spool, env=environment)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        # Nothing printed later (by this worker or the next shard's set-up) reaches this log.
        _flush_streams()
        os.dup2(devnull, 1)
        os.dup2(errors, 2)
    return code & 0xFF


def work(compiled: str | None = None) -> int:
    """The persistent worker's loop (see the module doc).

    ``compiled``: the folder this process read the runner compiled from (``--compiled``).
    """
    # The request and reply pipes move off 0 and 1 (non-inheritable: no microtask holds them).
    requests = _Requests(os.dup(0))
    replies = os.dup(1)
    errors = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def reply(line: str) -> None:
        view = memoryview((line + "\n").encode("utf-8", "backslashreplace"))
        while view:
            view = view[os.write(replies, view) :]

    # What every command-mode shard needs, imported once (a fresh runner imports it per shard).
    import shutil
    import subprocess  # noqa: F401
    import tempfile

    if compiled:
        _keep_compiled(compiled)
    # One spool for the commands' result files, lent to shard after shard.
    spool = tempfile.mkdtemp(prefix="microtask-results-")
    environment = dict(os.environ)
    try:
        reply(f"ready {os.getpid()}")
        while (line := requests.next()) is not None:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as exc:
                with contextlib.suppress(OSError):
                    os.write(errors, f"bad request: {exc}\n".encode())
                return EXIT_RUNNER_ERROR  # the executor sees the worker die with its shard
            code = _run_in_worker(
                request, devnull=devnull, errors=errors, spool=spool, environment=environment
            )
            requests.idle()
            reply(f"done {code}")
            if code >= 128:
                return 0  # stopped by a signal: the executor is stopping this shard, or all
        return 0
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    compiled: str | None = None
    if len(args) >= 2 and args[0] == "--compiled":
        compiled, args = args[1], args[2:]
    try:
        if args == ["--worker"]:
            return work(compiled)
        if len(args) == 2 and args[0] == "--pycache":
            return serve(args[1], compiled)
        return serve(compiled=compiled)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # the executor is gone


if __name__ == "__main__":
    raise SystemExit(main())
