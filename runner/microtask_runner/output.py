"""Sinks: where the runner's records and log copy go (the result store).

The runner appends bytes to named files of the store, ``records/...jsonl`` and ``logs/...log``
(``contract.records_name`` and ``contract.log_name``), and says when what it appended should be
made durable. A ``Sink`` is that much and no more; ``open_sink`` picks one from the store's URL:

* a path: ``DirectorySink``, files appended to in place (a local directory, a mounted volume);
* ``s3://bucket/prefix``: ``microtask_runner.s3.S3Sink(url, env)``, imported only then,
  because it needs boto3, an optional extra (``pip install 'microtask[s3]'``).

Standard library only, like the rest of the runner.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
from collections.abc import Callable, Mapping

from .contract import ENV_STORE_SYNC

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # Sink only matters to type checkers


__all__ = ["DirectorySink", "Sink", "SinkUnavailable", "open_sink"]

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
S3_INSTALL_HINT = "pip install 'microtask[s3]'"


class SinkUnavailable(ValueError):
    """The store's URL cannot be used by this runner (unknown scheme, malformed, missing extra).

    A configuration error, known before anything runs: the runner reports it as its error.
    """


class Sink(Protocol):
    """Append-only files of a result store, as the runner writes them.

    ``name`` is a path relative to the store's root, made of ``/``-separated parts without
    ``..`` (today ``records/<first index>-<job>-<shard>.jsonl`` and ``logs/<job>-<shard>.log``);
    parent "directories" are the sink's business. One runner writes each name, so a sink needs
    no locking across processes.

    Calls come from one thread at a time (the runner serialises them), in this order: any
    number of ``append`` and ``flush(final=False)``, then ``flush(final=True)``, then
    ``close()``. ``close()`` is also called after a failure, and must not raise then.

    Failures: raise any ``Exception``. The runner then logs one warning and writes nothing more
    to the store for the rest of the shard (records are best-effort; the termination-message
    report stays the operator's source of truth), so a sink retries transient errors itself and
    raises only when it gives up. A sink never writes to stdout or stderr itself: the runner's
    log is what it copies. Construction does no I/O that can fail; it raises
    ``SinkUnavailable`` (or ``ValueError``) for a malformed URL only.
    """

    def append(self, name: str, data: bytes) -> None:
        """Add ``data`` at the end of the file ``name`` (created empty if new).

        Records come as whole JSON lines, one or more per call; the log copy in chunks of any
        size, not necessarily cut at line ends. Appended data must survive as long as possible:
        a sink that buffers (an object store) uploads it on ``flush``.
        """
        ...

    def flush(self, final: bool) -> None:
        """Make what was appended durable.

        Called after microtasks with ``final=False``: a sink whose writes are costly may
        put it off (an object store uploads at most every few seconds, say). Called once with
        ``final=True`` at the end of the shard, also when the runner was told to stop: then
        everything appended must be written before the call returns.
        """
        ...

    def close(self) -> None:
        """Release files, connections and threads; nothing is appended after this."""
        ...


def _check_name(name: str) -> list[str]:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a store file name: {name!r:.80}")
    return parts


class DirectorySink:
    """A result store in a directory: each name is a file below ``root``, appended in place.

    Files are opened once, with ``O_APPEND``, and every ``append`` is one ``write`` that
    reaches the file at once (no buffering here), so a killed runner leaves every record it
    appended. ``flush(final=True)`` also asks the file system to sync, for network volumes
    (unless ``sync`` is false).
    """

    def __init__(self, root: str, *, sync: bool = True) -> None:
        self.root = root
        self.sync = sync
        self._fds: dict[str, int] = {}

    def _open(self, name: str) -> int:
        path = os.path.join(self.root, *_check_name(name))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            # The folder is there but for a store's first shards: no mkdir per shard.
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, flags, 0o644)
        self._fds[name] = fd
        return fd

    def append(self, name: str, data: bytes) -> None:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._open(name)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def flush(self, final: bool) -> None:
        if final and self.sync:
            for fd in self._fds.values():
                try:
                    os.fsync(fd)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EROFS, errno.EOPNOTSUPP):
                        raise  # these say only that this file system cannot sync

    def close(self) -> None:
        fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _syncs(env: Mapping[str, str]) -> bool:
    return env.get(ENV_STORE_SYNC, "").strip().lower() != "false"


def open_sink(url: str, env: Mapping[str, str]) -> Sink:
    """The sink of the store at ``url``: a directory path, or ``s3://bucket/prefix``.

    Raises ``SinkUnavailable`` when this runner cannot write there at all (an unknown scheme,
    S3 without boto3). Nothing is written yet, so an unwritable directory shows only later.
    """
    url = url.strip()
    scheme, sep, _ = url.partition("://")
    if not (sep and scheme[:1].isascii() and scheme[:1].isalpha()) or set(scheme) - _SCHEME_CHARS:
        scheme = ""
    if not scheme:
        if not url:
            raise SinkUnavailable("the result store URL is empty")
        return DirectorySink(os.path.abspath(url), sync=_syncs(env))
    scheme = scheme.lower()
    if scheme == "file":
        return DirectorySink(os.path.abspath(url[len("file://") :] or "/"), sync=_syncs(env))
    if scheme != "s3":
        raise SinkUnavailable(
            f"result store {url!r:.120}: unsupported scheme {scheme}:// "
            "(use a directory path or s3://bucket/prefix)"
        )
    try:
        # Only now: boto3 is an optional extra, and slow to import.
        module = importlib.import_module(".s3", __package__)
    except ImportError as exc:
        raise SinkUnavailable(
            f"result store {url!r:.120}: writing to S3 needs the runner's s3 extra (boto3): "
            f"{S3_INSTALL_HINT} ({type(exc).__name__}: {exc})"
        ) from None
    s3_sink: Callable[[str, Mapping[str, str]], Sink] = module.S3Sink
    try:
        return s3_sink(url, env)
    except ValueError as exc:
        raise SinkUnavailable(f"result store {url!r:.120}: {exc}") from None
