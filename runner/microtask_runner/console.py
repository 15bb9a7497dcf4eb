"""The runner's stdout and stderr: microtasks' output, delimiter lines, log lines, and a copy.

Everything the runner writes goes through ``CONSOLE``, so that the log copy in the result store
gets all of it, in the order the pod log gets it:

* command mode: the runner reads its child's two pipes and writes the data here;
* Python mode, with a log copy: ``CONSOLE.capture()`` puts pipes under file descriptors 1 and 2
  themselves, and a thread passes what arrives on to the real stdout and stderr, and to the
  copy. Output of C extensions and of child processes is kept that way too.

Lines of the runner's own (delimiters, ``microtask-runner: ...``) first take in what is
waiting in those pipes, so a microtask's output always lands between its delimiters.
File descriptors are process-wide, hence one console per process.

With a capture, the delimiter lines of microtasks that printed nothing need not be written one
microtask at a time: a write to a pipe has landed in the pipe once it returned, so after a
microtask, flushing Python's streams and one ``poll(0)`` (``Console.quiet``) tell exactly whether
it wrote anything, by print, on the file descriptor, or from a child process. The runner's loop
then keeps those delimiter lines *held* (``Console.hold``) and the console writes them out before
anything else it passes on (captured output, log lines) and whenever the runner syncs
(``Console.release_held``): every microtask's output still lands between its own delimiters.

``Console.watch`` tells the same without a system call per microtask: the pipes' read ends send
SIGIO to this process when anything is written into them (``O_ASYNC``), whoever writes (this
process, C code, a child process), and the handler sets a flag; Python's two streams get a
``write`` of their own (an instance attribute over the class's method, the text layer's and the
binary buffer's) that sets the same flag before writing. The kernel delivers the signal to the
main thread (the capture thread blocks it from birth, see ``_Capture.start``) on its way out of the
system call that wrote or waited, and Python runs the handler at the next call that returns
there, so the flag is set before the microtask's function has returned. Writes that nobody waits
for (a process left running) are seen whenever they come, as with ``poll``.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
from collections.abc import Callable

__all__ = ["CONSOLE", "LOG_PREFIX", "Console", "log"]

LOG_PREFIX = "microtask-runner: "
_STDOUT = 1
_STDERR = 2
_CHUNK = 65536
#: How long a line without its end waits for the rest before it is passed on as it is.
_PARTIAL_MS = 50


#: idents of the running capture threads
_CAPTURE_THREADS: set[int] = set()


def _flush_python_streams() -> None:
    if _CAPTURE_THREADS and _thread.get_ident() in _CAPTURE_THREADS:
        # The capture thread must never write into the pipes it alone empties.
        return
    # Around every delimiter line: plain try blocks, which cost nothing when nothing fails.
    try:  # noqa: SIM105
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:  # noqa: SIM105
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    try:
        written = os.write(fd, data)
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(fd, view) :]
    except OSError:  # a closed stdout must not stop the shard
        pass


def _writev_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """``_write_all`` of the pieces one after the other, in one system call mostly."""
    for at in range(0, len(pieces), _IOV_MAX):
        batch = pieces[at : at + _IOV_MAX]
        try:
            written = os.writev(fd, batch)
        except OSError:  # a closed stdout must not stop the shard
            return
        if written < sum(len(piece) for piece in batch):
            _write_all(fd, b"".join(batch)[written:])


#: Pieces per ``writev`` (the least IOV_MAX of the systems Python runs on is 16; Linux's 1024).
_IOV_MAX = 512 if sys.platform == "linux" else 16


class Console:
    """Writes to stdout and stderr, with a copy of everything to ``copy`` when it is set."""

    def __init__(self) -> None:
        #: Orders all output and the store's writes: one reentrant lock, so no lock order.
        # _thread's lock is threading's; threading itself is not needed.
        self.lock = _thread.RLock()
        self._copy: Callable[[bytes], None] | None = None
        #: stream (1 or 2) -> the descriptor its data really goes to
        self._targets = {_STDOUT: _STDOUT, _STDERR: _STDERR}
        self._capture: _Capture | None = None
        #: the delimiter lines held back (``hold``): returns them (in pieces) and forgets them
        self._held: Callable[[], list[bytes | memoryview]] | None = None

    @property
    def captured(self) -> bool:
        """Whether fds 1 and 2 are captured now (``quiet`` can tell output apart)."""
        return self._capture is not None

    def hold(self, take: Callable[[], list[bytes | memoryview]] | None) -> None:
        """From now on, ``take()`` (under the lock) gives delimiter lines held back so far, in
        pieces to write one after the other.

        They go out before any other output, and at ``release_held``. None: nothing is held
        any more (after a last ``release_held``).
        """
        with self.lock:
            self._held = take

    def release_held(self) -> None:
        """Write out the held delimiter lines now."""
        with self.lock:
            self._emit_held()

    def _emit_held(self) -> None:
        take = self._held
        if take is not None:
            pieces = take()
            if pieces:
                _writev_all(self._targets[_STDOUT], pieces)
                if self._copy is not None:
                    self._copy(b"".join(pieces))

    def quiet(self) -> bool:
        """After a microtask: True if it wrote nothing to the captured fds (or their pipes).

        Python's streams are flushed first, so their buffers count too. Needs a capture
        (``captured``). Not under the lock: the capture thread is ``busy`` from before it
        reads a pipe until it has passed the data on, so data it took is seen either way.
        """
        try:  # noqa: SIM105 (after every microtask: no context manager)
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:  # noqa: SIM105
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        capture = self._capture
        if capture is None:
            return False
        try:
            if capture.ready.poll(0):
                return False
        except OSError:
            return False
        return not (capture.busy or capture.partial)

    def watch(self) -> list[bool] | None:
        """Start watching for output (see the module doc); the flag, set when anything was
        written since it was last cleared. None when that cannot be done here (no capture, not
        the main thread, no SIGIO, streams that take no attribute): ``quiet`` then."""
        capture = self._capture
        if capture is None:
            return None
        if capture.watching is None and not capture.unwatched:
            capture.watching = capture.watch()
            capture.unwatched = capture.watching is None
        return capture.watching

    def unwatch(self) -> None:
        """Stop watching (idempotent); the streams get their own ``write`` back."""
        if self._capture is not None:
            self._capture.unwatch()

    def take_in(self) -> None:
        """Pass on what the captured pipes hold now (held delimiter lines first)."""
        with self.lock:
            if self._capture is not None:
                self._capture.drain()
            self._emit_held()

    def set_copy(self, copy: Callable[[bytes], None] | None) -> None:
        """Send a copy of all output to ``copy`` from now on (None: no more copies)."""
        with self.lock:
            self._copy = copy

    def write(self, stream: int, data: bytes) -> None:
        """Pass data on to stdout (1) or stderr (2), and to the copy."""
        with self.lock:
            if self._capture is not None:
                self._capture.drain()
            self.emit(stream, data)

    def emit(self, stream: int, data: bytes) -> None:
        """``write`` without taking in captured output first (the lock is held)."""
        if self._held is not None:
            self._emit_held()
        _write_all(self._targets[stream], data)
        if self._copy is not None:
            self._copy(data)

    def line(self, text: str) -> None:
        """A whole line on stdout, after everything printed before it."""
        _flush_python_streams()
        self.write(_STDOUT, text.encode("utf-8", "backslashreplace") + b"\n")

    def lines(self, data: bytes) -> None:
        """Whole lines (bytes) on stdout, after everything printed before them.

        The runner's delimiter lines, before and after every microtask: kept cheap. Never
        called by the capture thread, so the flushes need no check.
        """
        try:  # noqa: SIM105 (before every microtask: no context manager)
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:  # noqa: SIM105
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        if self._capture is None and self._copy is None:
            # No capture thread and no copy: only this thread writes, no lock needed.
            _write_all(self._targets[_STDOUT], data)
            return
        self.write(_STDOUT, data)

    def log(self, message: str) -> None:
        """One ``microtask-runner: ...`` line on stderr; never fails the runner."""
        _flush_python_streams()
        self.write(_STDERR, (LOG_PREFIX + message + "\n").encode("utf-8", "backslashreplace"))

    # ------------------------------------------------------------- capture

    def capture(self) -> None:
        """Take over file descriptors 1 and 2 (see the module doc); undone by ``release``."""
        with self.lock:
            if self._capture is not None:
                return
            _flush_python_streams()
            self._capture = _Capture(self)
            self._targets = dict(self._capture.saved)
        self._capture.start()

    def release(self) -> None:
        """Give file descriptors 1 and 2 back, after passing on what they still hold."""
        capture = self._capture
        if capture is None:
            return
        capture.unwatch()
        _flush_python_streams()
        with self.lock:
            capture.drain()
            self._emit_held()
            capture.restore()
            self._targets = {_STDOUT: _STDOUT, _STDERR: _STDERR}
            self._capture = None
        capture.stop()


class _Capture:
    """Pipes under fds 1 and 2, read by a thread (under the console's lock) and passed on."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.saved: dict[int, int] = {}
        self.pipes: dict[int, int] = {}  # read end -> stream
        self.partial: dict[int, bytes] = {}  # stream -> the start of a line not yet ended
        try:
            for stream in (_STDOUT, _STDERR):
                self.saved[stream] = os.dup(stream)
                read, write = os.pipe()
                os.set_blocking(read, False)
                self.pipes[read] = stream
                os.dup2(write, stream)  # inheritable: child processes write here too
                os.close(write)
        except OSError:
            self.restore()
            self._close()
            raise
        self.wake_r, self.wake_w = os.pipe()
        #: ``watch``'s flag while watching; ``unwatched`` once it stopped or could not start
        self.watching: list[bool] | None = None
        self.unwatched = False
        self._unwatch: list[Callable[[], object]] = []
        self.stopping = False
        #: True from before the thread reads a pipe until it has passed the data on
        self.busy = False
        import select

        # Which pipes hold data, in one system call: drained before every delimiter line.
        self.ready = select.poll()
        for read in self.pipes:
            self.ready.register(read, select.POLLIN)

        # The thread is a bare ``_thread`` one: ``threading.Thread`` would cost an import and a
        # wait for the thread to start, for every shard.

    def start(self) -> None:
        # SIGIO is for the main thread (see the module doc): the thread is born blocking it (a
        # new thread takes its creator's mask), so not even its first moments can take one.
        try:
            import signal

            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
        except (ImportError, AttributeError, OSError, ValueError):
            blocked = None
        try:
            _thread.start_new_thread(self._thread, ())
        finally:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def watch(self) -> list[bool] | None:
        """Set up the watch (``Console.watch``); None where it cannot be."""
        try:
            import fcntl
            import signal
        except ImportError:
            return None
        sigio = getattr(signal, "SIGIO", None)
        if sigio is None:
            return None
        flag = [False]

        def wrote(signum: int, frame: object) -> None:
            flag[0] = True

        undo = self._unwatch
        try:
            previous = signal.signal(sigio, wrote)
            undo.append(lambda: signal.signal(sigio, previous))
            # Restarted, not interrupted: the signal must not surface as EINTR in C code.
            signal.siginterrupt(sigio, False)
            for stream in (sys.stdout, sys.stderr):
                for layer in (stream, getattr(stream, "buffer", None)):
                    if layer is not None and not _hook(layer, flag, undo):
                        raise OSError("a stream takes no write of ours")
            for read in self.pipes:
                flags = fcntl.fcntl(read, fcntl.F_GETFL)
                undo.append(_restore_flags(read, flags))
                fcntl.fcntl(read, fcntl.F_SETOWN, os.getpid())
                fcntl.fcntl(read, fcntl.F_SETFL, flags | os.O_ASYNC)
        except (OSError, ValueError, TypeError, AttributeError):
            self.unwatch()
            return None
        return flag

    def unwatch(self) -> None:
        # In reverse: the pipes stop signalling before the handler goes.
        undo, self._unwatch = self._unwatch, []
        for step in reversed(undo):
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                step()
        if self.watching is not None:
            self.watching = None
            self.unwatched = True

    def _thread(self) -> None:
        ident = _thread.get_ident()
        _CAPTURE_THREADS.add(ident)
        try:
            self._run()
        finally:
            _CAPTURE_THREADS.discard(ident)
            with self.console.lock:
                if self.stopping:  # else (a bug of ours) leave them to the process's end
                    self._close()
                    for fd in (self.wake_r, self.wake_w):
                        with contextlib.suppress(OSError):
                            os.close(fd)

    def drain(self) -> None:
        """Pass on whatever the pipes hold now (the console's lock is held)."""
        try:
            ready = [fd for fd, _ in self.ready.poll(0) if fd in self.pipes]
        except OSError:
            ready = list(self.pipes)
        for read in ready:
            self._pump(read, until_empty=True)
            if read not in self.pipes:
                self.ready.unregister(read)
        self._flush_partial()

    def _pump(self, read: int, *, until_empty: bool) -> None:
        stream = self.pipes[read]
        while True:
            try:
                data = os.read(read, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # Every writer is gone (only after restore): nothing more will come.
                del self.pipes[read]
                with contextlib.suppress(OSError):
                    os.close(read)  # no longer in ``pipes``: ``_close`` would miss it
                self._flush_partial()
                return
            self._pass_on(stream, data)
            if not until_empty:
                return

    def _pass_on(self, stream: int, data: bytes) -> None:
        # Whole lines only, so a line written in pieces on one stream is not cut in two by
        # the other stream's output wherever the two are merged (the log copy, a terminal).
        data = self.partial.pop(stream, b"") + data
        cut = data.rfind(b"\n") + 1
        if len(data) - cut >= _CHUNK:
            cut = len(data)
        if cut:
            self.console.emit(stream, data[:cut])
        if cut < len(data):
            self.partial[stream] = data[cut:]

    def _flush_partial(self) -> None:
        for stream, data in self.partial.items():
            self.console.emit(stream, data)
        self.partial.clear()

    def _run(self) -> None:
        import select  # only with a capture

        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        for read in self.pipes:
            poller.register(read, select.POLLIN)
        while True:
            # A line left open is passed on as it is once its stream has been quiet a while.
            events = poller.poll(_PARTIAL_MS if self.partial else None)
            # Before the read (see Console.quiet): the main thread must not take a pipe
            # emptied here, but not passed on yet, for a microtask that printed nothing.
            self.busy = True
            try:
                with self.console.lock:
                    if self.stopping:
                        return  # release() drained the pipes under the lock
                    if not events:
                        self._flush_partial()
                    for fd, _ in events:
                        if fd in self.pipes:
                            self._pump(fd, until_empty=False)
                            if fd not in self.pipes:
                                poller.unregister(fd)
            finally:
                self.busy = False

    def restore(self) -> None:
        """Put the original descriptors back under 1 and 2 (the console's lock is held)."""
        for stream, fd in self.saved.items():
            with contextlib.suppress(OSError):
                os.dup2(fd, stream)

    def stop(self) -> None:
        with self.console.lock:
            self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"!")
        # No wait for the thread: release() passed everything on, and the thread closes the
        # descriptors itself when it sees ``stopping`` (waiting took milliseconds per shard).

    def _close(self) -> None:
        # A process the microtask left behind may still hold a write end: it gets EPIPE now.
        for fd in [*self.pipes, *self.saved.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipes.clear()
        self.saved.clear()


def _restore_flags(fd: int, flags: int) -> Callable[[], object]:
    import fcntl

    return lambda: fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _hook(layer: object, flag: list[bool], undo: list[Callable[[], object]]) -> bool:
    """Give ``layer`` a ``write`` that sets ``flag`` first (False: it takes no attribute)."""
    if "write" in getattr(layer, "__dict__", {}):
        return False  # someone else's already: leave it alone
    original = layer.write  # type: ignore[attr-defined]

    def write(data: object) -> object:
        flag[0] = True
        return original(data)

    try:
        layer.write = write  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False
    undo.append(lambda: layer.__dict__.pop("write", None))
    return True


CONSOLE = Console()


def log(message: str) -> None:
    """One line on stderr (the pod log) and in the log copy; never fails the runner."""
    CONSOLE.log(message)
