"""A warm runner: one process that has imported the runner once and forks a child per shard.

Starting ``python -m microtask_runner`` costs an interpreter and the runner's imports for every
shard; at one microtask per shard that is nearly all the time a shard takes. ``microtask run``
starts this server once instead (``python -m microtask_runner.forkserver``, with the job's
environment and working directory) and asks it for each shard's runner:

    request (stdin, one JSON line):  {"argv": [...], "env": {...}, "cwd": "...", "log": "..."}
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

When its stdin closes (the executor is gone, however it ended), the server asks its remaining
children to stop (SIGTERM to their groups: each runner stops its microtask and writes its final
report) and exits, so no shard outlives ``microtask run`` by much.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from . import cli
from .execute import EXIT_RUNNER_ERROR

__all__ = ["main", "serve"]

_CHUNK = 1 << 16


def _reply(line: str) -> None:
    data = (line + "\n").encode("utf-8", "backslashreplace")
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _run_child(request: dict[str, Any]) -> int:
    """In the forked child: become the shard's runner; returns its exit code."""
    # A group of its own (the server does the same from its side, so a signal sent to the group
    # as soon as the pid is known cannot miss); the server's session has no terminal already.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # A new interpreter's dispositions: the server's SIGCHLD handler and wake-up fd are its own.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    # Over the server's request and reply pipes: the child holds neither once these are done.
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 256)
    os.chdir(str(request["cwd"]))
    env = {str(k): str(v) for k, v in dict(request["env"]).items()}
    os.environ.clear()
    os.environ.update(env)
    argv = [str(a) for a in request["argv"]]
    sys.argv = ["microtask-runner", *argv]
    # Like `python -m` in the shard's folder: its modules come first on the import path, and
    # what the server's finders cached about folders may be older than the shard's files.
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    return cli.main(argv)


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

    def spawn(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            _reply(f"failed bad request: {exc}")
            return
        # The child waits for a go from the server, given once the executor has its pid: a
        # server dying in between (no go, the pipe closes) leaves no runner the executor does
        # not know of, and that it would run again elsewhere.
        go_r, go_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(go_r)
            os.close(go_w)
            _reply(f"failed cannot fork: {exc.strerror or exc}")
            return
        if pid == 0:
            os.close(go_w)
            if not os.read(go_r, 1):
                os._exit(EXIT_RUNNER_ERROR)
            os.close(go_r)
            _child(request)
        os.close(go_r)
        try:
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            self.children.add(pid)
            # Always before this child's "exit": the executor learns the pid first.
            _reply(f"spawned {pid}")
            os.write(go_w, b"!")
        finally:
            os.close(go_w)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
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
        for pid in self.children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)


def serve() -> int:
    """The server's loop, over stdin and stdout (see the module doc)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_DFL) so SIGCHLD writes to the wake-up fd and ends the select.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    server = _Server()
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    # What the server imported stays shared with every child instead of being copied on write.
    gc.freeze()
    _reply(f"ready {os.getpid()}")
    try:
        while True:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 512):
                            pass
                elif not server.read():
                    return 0
            server.reap()
    finally:
        # Nobody is left to tell (or the server failed): the runners must not run on unseen.
        server.stop_children()


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    try:
        return serve()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # the executor is gone


if __name__ == "__main__":
    raise SystemExit(main())
