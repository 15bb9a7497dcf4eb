"""What one microtask came to (``Finished``), and the result it gives back.

A result is a JSON value of at most ``MAX_RESULT_BYTES``: a Python-mode function's return value,
or what a command wrote to the file named by ``$MICROTASK_OUTPUT`` (JSON if it parses, text
otherwise). A result that breaks these rules fails its microtask, with an error that says so.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .contract import ENV_RESULT_FILE, MAX_RESULT_BYTES
from .values import Value

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Finished", "ResultFiles", "encode_json", "encode_value", "tail"]

_LIMIT_TEXT = "1 MiB" if MAX_RESULT_BYTES == 1024 * 1024 else f"{MAX_RESULT_BYTES} bytes"
_ADVICE = "write large outputs to your own storage and return where they are"


class Finished(Value):
    """The end of one microtask, as the report and its record tell it."""

    _fields = ("code", "error", "detail", "exception", "timed_out", "result")
    #: 0 on success; the failure's exit code otherwise (124 timeout, 1 Python exception, ...)
    code: int
    #: the report's error text, ``index I: ...`` (None on success)
    error: str | None
    #: the record's error text: the longer failure text (stderr tail, traceback), no index
    detail: str | None
    #: Python mode: the type of the exception the function raised
    exception: str | None
    #: ran out of the per-microtask timeout
    timed_out: bool
    #: the result, encoded as compact JSON (None: no result)
    result: str | None

    def __init__(
        self,
        code: int,
        error: str | None = None,
        detail: str | None = None,
        exception: str | None = None,
        timed_out: bool = False,
        result: str | None = None,
    ) -> None:
        self._set(
            code=code,
            error=error,
            detail=detail,
            exception=exception,
            timed_out=timed_out,
            result=result,
        )

    @classmethod
    def failure(cls, index: int, code: int, text: str, **fields: Any) -> Finished:
        """A failure whose report and record texts are the same ``text``."""
        return cls(code, error=f"index {index}: {text}", detail=text, **fields)


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, marked with ``…`` when cut."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def encode_json(value: Any) -> str:
    """Compact JSON on one line, always encodable as UTF-8 (raises TypeError, ValueError)."""
    import json  # only for results: the runner starts without it

    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escape them instead
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text


def _size_text(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    return f"{size:,} bytes"


def _too_big(size: int) -> str:
    size_text = _size_text(size)
    return f"the result is {size_text}, more than the {_LIMIT_TEXT} limit for results; {_ADVICE}"


def encode_value(index: int, value: object) -> Finished:
    """A successful Python-mode call that returned ``value``: its result, or why it fails."""
    if value is None:
        return Finished(0)
    try:
        text = encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return Finished.failure(
            index, 1, f"the return value is not JSON-serialisable: {type(exc).__name__}: {exc}"
        )
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return Finished.failure(index, 1, _too_big(size))
    return Finished(0, result=text)


class ResultFiles:
    """Command mode: a private spool directory, a fresh ``$MICROTASK_OUTPUT`` per microtask.

    The file is not created: a command that gives back nothing leaves no file. The directory is
    made for the shard, or lent by a process that runs shard after shard (``directory``): then
    it is emptied at the end, not removed, and the next shard needs no new one.
    """

    def __init__(self, keep: bool, directory: str | None = None) -> None:
        #: False: results are not kept anywhere (no store), the files are just removed
        self.keep = keep
        self.lent = directory is not None
        if directory is None:
            import tempfile  # only in command mode

            directory = tempfile.mkdtemp(prefix="microtask-results-")
        self.directory = directory

    def path(self, index: int) -> str:
        """The path offered to the microtask ``index``."""
        return os.path.join(self.directory, f"result-{index}")

    def take(self, path: str) -> tuple[str | None, str | None]:
        """(encoded result or None, error text or None) of the file at ``path``; removes it."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if not self.keep:
                return None, None
            return None, f"cannot read the result file ${ENV_RESULT_FILE}: {exc.strerror or exc}"
        try:
            if not self.keep:
                return None, None
            if not stat.S_ISREG(info.st_mode):
                return None, f"${ENV_RESULT_FILE} must be a regular file, not {_kind(info)}"
            if info.st_size > MAX_RESULT_BYTES:
                return None, _too_big(info.st_size)
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_RESULT_BYTES + 1)
            except OSError as exc:
                return None, f"cannot read the result file ${ENV_RESULT_FILE}: {exc.strerror}"
            if len(data) > MAX_RESULT_BYTES:  # it grew: a process left behind is still writing
                return None, _too_big(len(data))
            return _decode_file(data)
        finally:
            _remove(path, info)

    def close(self) -> None:
        """Remove the spool directory and anything left in it (a lent one: what is left)."""
        if self.lent:
            # Usually empty: each result file is removed as it is taken.
            try:
                names = os.listdir(self.directory)
            except OSError:
                return
            for name in names:
                path = os.path.join(self.directory, name)
                with contextlib.suppress(OSError):
                    _remove(path, os.lstat(path))
            return
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


def _decode_file(data: bytes) -> tuple[str | None, str | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (
            f"the result written to ${ENV_RESULT_FILE} is not UTF-8 text "
            f"({exc.reason} at byte {exc.start}); write JSON or text, or write binary "
            f"outputs to your own storage and return where they are"
        )
    import json

    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        value = text[:-1] if text.endswith("\n") else text
    return encode_json(value), None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _kind(info: os.stat_result) -> str:
    if stat.S_ISDIR(info.st_mode):
        return "a directory"
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link"
    return "a special file"


def _remove(path: str, info: os.stat_result) -> None:
    try:
        if stat.S_ISDIR(info.st_mode):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
