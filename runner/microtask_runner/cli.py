"""The ``microtask-runner`` command: run a shard's microtasks inside a pod.

    microtask-runner [options] [--] COMMAND [ARGS...]

Inputs come from environment variables set by the operator; the flags of the
same meaning override them (handy when running it by hand):

    MICROTASK_INDEXES          --indexes   index set to run (required)
    MICROTASK_ITEMS            --items     JSON item source (see items.py)
    MICROTASK_TIMEOUT_SECONDS  --timeout   per-microtask timeout (exit code 124)
    MICROTASK_CALLABLE         --callable  module:function, called in-process
    MICROTASK_REPORT_PATH      --report    report file (default /dev/termination-log)

Who runs, for the delimiter lines and the result records (environment only):

    MICROTASK_JOB, MICROTASK_SHARD, MICROTASK_ATTEMPT (default 1),
    MICROTASK_POOL, MICROTASK_NODE
    MICROTASK_OUTPUT_URL       the result store: a directory or s3://bucket/prefix
    MICROTASK_LOG_COPY         "false": no copy of the shard's log in the store

Exit codes: 0 all microtasks succeeded, 10 some failed, 2 the runner could not
work (the report says why in runner_error), 128+N stopped by signal N.
"""

from __future__ import annotations

import importlib
import math
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence

from . import __version__
from .console import CONSOLE
from .contract import (
    ENV_ATTEMPT,
    ENV_CALLABLE,
    ENV_INDEXES,
    ENV_ITEMS,
    ENV_JOB,
    ENV_LOG_COPY,
    ENV_NO_RETRY_EXIT_CODES,
    ENV_NODE,
    ENV_OUTPUT_URL,
    ENV_POOL,
    ENV_REPORT_PATH,
    ENV_RESULT_FILE,
    ENV_RETRY_AFTER_SECONDS,
    ENV_SHARD,
    ENV_TIMEOUT_SECONDS,
    log_name,
    parse_records_name,
    records_name,
)
from .execute import (
    EXIT_CANNOT_RUN,
    EXIT_NOT_FOUND,
    EXIT_RUNNER_ERROR,
    INDEX_TOKEN,
    ITEM_TOKEN,
    CommandExecutor,
    Executor,
    Outcomes,
    Progress,
    PythonExecutor,
    ReportFile,
    Retry,
    Signals,
    fail_shard,
    log,
    run_shard,
)
from .indexset import IndexSet
from .items import ItemSource, load_items
from .output import SinkUnavailable, open_sink
from .records import ResultStore, ShardInfo
from .report import Report
from .results import ResultFiles
from .values import Value

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_REPORT_PATH", "Config", "RunnerError", "load_callable", "load_config", "main"]

DEFAULT_REPORT_PATH = "/dev/termination-log"

#: option -> environment variable of the same meaning
_SETTINGS = {
    "indexes": ENV_INDEXES,
    "items": ENV_ITEMS,
    "timeout": ENV_TIMEOUT_SECONDS,
    "callable": ENV_CALLABLE,
    "report": ENV_REPORT_PATH,
    "retry_after": ENV_RETRY_AFTER_SECONDS,
    "no_retry": ENV_NO_RETRY_EXIT_CODES,
}
_VALUE_OPTIONS = {f"--{name.replace('_', '-')}" for name in _SETTINGS}


class RunnerError(ValueError):
    """The runner cannot work with what it was given (exit code 2)."""


class _UsageError(RunnerError):
    pass


_HELP = f"""\
usage: microtask-runner [options] [--] COMMAND [ARGS...]

Run the microtasks of one shard, one after another, and report their outcomes in a
termination-message file. Every option defaults to the environment variable in brackets.

options:
  -h, --help           show this help message and exit
  --indexes INDEXES    index set to run, e.g. 0-99,120 [{ENV_INDEXES}]
  --items ITEMS        JSON item source [{ENV_ITEMS}]
  --timeout TIMEOUT    per-microtask timeout in seconds [{ENV_TIMEOUT_SECONDS}]
  --callable CALLABLE  module:function to call in-process [{ENV_CALLABLE}]
  --report REPORT      report file [{ENV_REPORT_PATH}, default {DEFAULT_REPORT_PATH}]
  --retry-after SECONDS
                       run each failed microtask once more, this long after it failed, at
                       the end of the shard (when no more failed than succeeded)
                       [{ENV_RETRY_AFTER_SECONDS}; default: no retries]
  --no-retry CODES     comma-separated exit codes never retried [{ENV_NO_RETRY_EXIT_CODES}]
  --version            show program's version number and exit
"""


class _Options:
    """The options given on the command line (None: not given)."""

    def __init__(self) -> None:
        self.indexes: str | None = None
        self.items: str | None = None
        self.timeout: str | None = None
        self.callable: str | None = None
        self.report: str | None = None
        self.retry_after: str | None = None
        self.no_retry: str | None = None


class _Exit(Exception):
    """--help or --version: print this and exit with 0."""


def _parse_options(args: Sequence[str]) -> _Options:
    """The options before the command, as argparse would read them (it is slow to import).

    Raises _UsageError (with argparse's wording) or _Exit (for --help and --version).
    """
    options = _Options()
    unknown: list[str] = []
    pos = 0
    while pos < len(args):
        token = args[pos]
        pos += 1
        name, equals, value = token.partition("=")
        if name in _VALUE_OPTIONS:
            if not equals:
                if pos >= len(args) or (args[pos].startswith("-") and args[pos] != "-"):
                    raise _UsageError(f"usage: argument {name}: expected one argument")
                value = args[pos]
                pos += 1
            setattr(options, name[2:].replace("-", "_"), value)
        elif token in ("-h", "--help"):
            raise _Exit(_HELP)
        elif token == "--version":
            raise _Exit(f"microtask-runner {__version__}\n")
        else:
            unknown.append(token)
    if unknown:
        raise _UsageError(f"usage: unrecognized arguments: {' '.join(unknown)}")
    return options


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Options before the command; the command starts at ``--`` or the first non-option.

    Done by hand because a parser would take the command's own options
    (``python -u x.py``) for ours.
    """
    pos = 0
    while pos < len(argv):
        token = argv[pos]
        if token == "--":
            return list(argv[:pos]), list(argv[pos + 1 :])
        if not token.startswith("-") or token == "-":
            return list(argv[:pos]), list(argv[pos:])
        pos += 2 if token in _VALUE_OPTIONS else 1
    return list(argv), []


class Config(Value):
    """Everything the runner was asked to do, checked."""

    _fields = (
        "indexes",
        "items",
        "timeout",
        "callable",
        "command",
        "info",
        "output_url",
        "log_copy",
        "unrunnable",
        "retry",
    )
    indexes: IndexSet
    items: ItemSource
    timeout: float | None
    callable: str | None
    command: tuple[str, ...]
    info: ShardInfo
    #: the result store's URL; None: no records
    output_url: str | None
    #: keep a copy of the shard's log in the store
    log_copy: bool
    #: (exit code, error) when the command cannot run at all: every microtask fails with it
    unrunnable: tuple[int, str] | None
    #: the pod's own retries of failed microtasks; None: the operator retries them
    retry: Retry | None

    def __init__(
        self,
        indexes: IndexSet,
        items: ItemSource,
        timeout: float | None,
        callable: str | None,
        command: tuple[str, ...],
        info: ShardInfo | None = None,
        output_url: str | None = None,
        log_copy: bool = True,
        unrunnable: tuple[int, str] | None = None,
        retry: Retry | None = None,
    ) -> None:
        self._set(
            indexes=indexes,
            items=items,
            timeout=timeout,
            callable=callable,
            command=command,
            info=ShardInfo() if info is None else info,
            output_url=output_url,
            log_copy=log_copy,
            unrunnable=unrunnable,
            retry=retry,
        )


def _setting(options: Any, env: Mapping[str, str], name: str) -> tuple[str, str]:
    """(value or "", where it came from) for the option ``name``."""
    value = getattr(options, name)
    if value is not None:
        return value, f"--{name.replace('_', '-')}"
    variable = _SETTINGS[name]
    return env.get(variable, ""), variable


def load_config(options: Any, command: Sequence[str], env: Mapping[str, str]) -> Config:
    """Check the inputs; raises RunnerError with a message naming the bad setting."""
    text, source = _setting(options, env, "indexes")
    if ENV_INDEXES not in env and options.indexes is None:
        raise RunnerError(f"{ENV_INDEXES} is not set: no index set to run (or use --indexes)")
    try:
        indexes = IndexSet.from_compact(text)
    except ValueError as exc:
        raise RunnerError(f"{source}: {exc}") from None

    text, source = _setting(options, env, "items")
    try:
        items = load_items(text)
        items.check(indexes)
    except ValueError as exc:
        raise RunnerError(f"{source}: {exc}") from None

    text, source = _setting(options, env, "timeout")
    timeout: float | None = None
    if text.strip():
        try:
            timeout = float(text)
        except ValueError:
            raise RunnerError(f"{source}: {text!r:.40} is not a number of seconds") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise RunnerError(f"{source}: the timeout must be a positive number of seconds")

    function, source = _setting(options, env, "callable")
    function = function.strip()
    if function and command:
        raise RunnerError(
            f"{source} is set and a command was given ({command[0]}): "
            "give one or the other, not both"
        )
    if not function and not command:
        raise RunnerError("nothing to run: give a command, or a function in MICROTASK_CALLABLE")
    output_url = env.get(ENV_OUTPUT_URL, "").strip() or None
    info = _shard_info(env, indexes, store=output_url is not None)
    return Config(
        indexes,
        items,
        timeout,
        function or None,
        tuple(command),
        info=info,
        output_url=output_url,
        log_copy=env.get(ENV_LOG_COPY, "").strip().lower() != "false",
        unrunnable=_check_command(command[0], env) if command else None,
        retry=_retry(options, env),
    )


def _retry(options: Any, env: Mapping[str, str]) -> Retry | None:
    """The pod's own retries (``--retry-after``, ``--no-retry``), if asked for."""
    text, source = _setting(options, env, "retry_after")
    if not text.strip():
        return None
    try:
        after = float(text)
    except ValueError:
        raise RunnerError(f"{source}: {text!r:.40} is not a number of seconds") from None
    if not (math.isfinite(after) and after >= 0):
        raise RunnerError(f"{source}: the wait must be a non-negative number of seconds")
    text, source = _setting(options, env, "no_retry")
    codes: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not (part.isascii() and part.isdigit() and int(part) <= 255):
            raise RunnerError(f"{source}: {part!r:.40} is not an exit code (0-255)")
        codes.add(int(part))
    return Retry(after, frozenset(codes))


def _shard_info(env: Mapping[str, str], indexes: IndexSet, *, store: bool) -> ShardInfo:
    """Job, shard, attempt, pool and node; job and shard are required with a result store."""
    text = env.get(ENV_ATTEMPT, "").strip()
    attempt = 1
    if text:
        if not (text.isascii() and text.isdigit() and 0 < int(text) < 2**31):
            raise RunnerError(f"{ENV_ATTEMPT}: {text!r:.40} is not a positive integer")
        attempt = int(text)
    job = env.get(ENV_JOB, "").strip() or None
    text = env.get(ENV_SHARD, "").strip()
    shard: int | None = None
    if text:
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise RunnerError(f"{ENV_SHARD}: {text!r:.40} is not a shard number")
        shard = int(text)
    if store:
        where = f"{ENV_OUTPUT_URL} is set"
        if job is None or shard is None:
            missing = " and ".join(v for v, x in ((ENV_JOB, job), (ENV_SHARD, shard)) if x is None)
            raise RunnerError(f"{where}, but {missing} not: records are named after them")
        name = records_name(indexes.first() or 0, job, shard)
        if parse_records_name(name.rpartition("/")[2]) is None:
            raise RunnerError(
                f"{ENV_JOB}: {job!r:.80} cannot name records (lowercase letters, digits, "
                "'-' and '.', starting and ending with a letter or digit)"
            )
    return ShardInfo(
        job=job,
        shard=shard,
        attempt=attempt,
        pool=env.get(ENV_POOL, "").strip() or None,
        node=env.get(ENV_NODE, "").strip() or None,
    )


def _check_command(program: str, env: Mapping[str, str]) -> tuple[int, str] | None:
    """(exit code, error) when the program cannot run at all, as a shell would say it.

    Then every microtask of the shard fails with it, each in its own record: a missing
    program is the job's failure, not the pod's, and a retry would not find it either.
    """
    if INDEX_TOKEN in program or ITEM_TOKEN in program:
        return None  # depends on the microtask
    if "/" in program:
        candidates = [program]
        missing = f"command not found: {program}"
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", program) for d in path.split(os.pathsep)]
        missing = f"command not found: {program} (searched PATH)"
    denied = False
    for candidate in candidates:
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and os.access(candidate, os.X_OK):
            return None
        denied = True  # a directory, or a file without execute permission: exec says EACCES
    if denied:
        return EXIT_CANNOT_RUN, f"cannot run {program}: Permission denied"
    return EXIT_NOT_FOUND, missing


def load_callable(spec: str) -> Callable[[int, Any], object]:
    """Import ``module:function`` (the function may be a dotted path: ``mod:Class.method``)."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name.strip() or not attribute.strip():
        raise RunnerError(f"MICROTASK_CALLABLE must look like module:function, not {spec!r:.80}")
    # Like `python -m`: modules in the working directory are importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except (Exception, SystemExit) as exc:
        raise RunnerError(
            f"MICROTASK_CALLABLE: cannot import {module_name.strip()!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RunnerError(
                f"MICROTASK_CALLABLE: {module_name.strip()!r} has no attribute {attribute!r}"
            ) from None
    if not callable(obj):
        raise RunnerError(f"MICROTASK_CALLABLE: {spec} is not callable")
    function: Callable[[int, Any], object] = obj
    return function


def _runner_error(file: ReportFile, message: str) -> int:
    log(f"error: {message}")
    file.write(Report(runner_error=message).encode())
    return EXIT_RUNNER_ERROR


def main(
    argv: Sequence[str] | None = None,
    *,
    spool: str | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the shard described by the arguments and environment; return the exit code.

    ``spool``: a directory for the commands' result files lent by a process that runs shard
    after shard (see forkserver.py); by default the shard makes its own. ``env``: the same
    as ``os.environ``, as a plain copy such a process keeps (cheaper to read); by default
    ``os.environ`` itself.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    option_args, command = _split_argv(args)
    try:
        options = _parse_options(option_args)
    except _Exit as exc:  # --help, --version
        sys.stdout.write(str(exc))
        return 0
    except _UsageError as exc:
        path = env.get(ENV_REPORT_PATH) or DEFAULT_REPORT_PATH
        file = ReportFile(path)
        try:
            return _runner_error(file, str(exc))
        finally:
            file.close()

    report_path, _ = _setting(options, env, "report")
    file = ReportFile(report_path or DEFAULT_REPORT_PATH)
    signals: Signals | None = None
    store: ResultStore | None = None
    results: ResultFiles | None = None
    commands: CommandExecutor | None = None
    try:
        try:
            config = load_config(options, command, env)
            function = load_callable(config.callable) if config.callable else None
            store = _open_store(config, env)
        except RunnerError as exc:
            return _runner_error(file, str(exc))
        if store is not None and store.log is not None:
            CONSOLE.set_copy(store.copy_log)
            if function is not None:
                _capture_output()

        signals = Signals()
        signals.install()
        outcomes = Outcomes()
        progress = Progress(outcomes, file)
        try:
            if config.unrunnable is not None:
                code, message = config.unrunnable
                return fail_shard(
                    indexes=config.indexes,
                    code=code,
                    message=message,
                    outcomes=outcomes,
                    progress=progress,
                    signals=signals,
                    store=store,
                    info=config.info,
                )
            executor: Executor
            if function is not None:
                executor = PythonExecutor(
                    function, config.timeout, signals, keep_results=store is not None
                )
            else:
                results = _result_files(keep=store is not None, spool=spool)
                executor = commands = CommandExecutor(
                    config.command,
                    env,
                    config.timeout,
                    signals,
                    # On SIGTERM, say at once that nothing is running any more: the
                    # interrupted microtask must not be charged even if the child
                    # outlives the grace period.
                    on_signal=lambda: _final_report(progress, store),
                    results=results,
                    # Without a log copy nobody needs the commands' output but our stdout.
                    direct_output=store is None or store.log is None,
                )
            return run_shard(
                indexes=config.indexes,
                items=config.items,
                executor=executor,
                outcomes=outcomes,
                progress=progress,
                signals=signals,
                store=store,
                info=config.info,
                retry=config.retry,
            )
        except Exception as exc:
            # A bug of ours: keep what was achieved, and say what happened.
            import traceback

            traceback.print_exc()
            message = f"runner failed: {type(exc).__name__}: {exc}"
            log(message)
            if store is not None:
                store.push()  # the report below claims every outcome: their records first
            file.write(outcomes.report(current=None, runner_error=message).encode())
            return EXIT_RUNNER_ERROR
    finally:
        CONSOLE.release()
        if store is not None:
            store.close()  # the final flush: also when stopped by a signal
        CONSOLE.set_copy(None)
        if results is not None:
            results.close()
        if commands is not None:
            commands.close()
        if signals is not None:
            signals.restore()
        file.close()


def _final_report(progress: Progress, store: ResultStore | None) -> None:
    """The report of what is finished, with nothing running: the records first."""
    if store is not None:
        store.push()
    progress.write(current=None, final=True)


def _open_store(config: Config, env: Mapping[str, str]) -> ResultStore | None:
    """The result store of ``config``, if any; RunnerError if this runner cannot use it."""
    url = config.output_url
    info = config.info
    if url is None or info.job is None or info.shard is None:
        return None
    try:
        sink = open_sink(url, env)
    except SinkUnavailable as exc:
        raise RunnerError(f"{ENV_OUTPUT_URL}: {exc}") from None
    except Exception as exc:
        log(
            f"warning: cannot open the result store {url}: {type(exc).__name__}: {exc}; "
            "this shard runs without records"
        )
        return None
    return ResultStore(
        sink,
        description=url,
        records=records_name(config.indexes.first() or 0, info.job, info.shard),
        log=log_name(info.job, info.shard) if config.log_copy else None,
        warn=log,
        lock=CONSOLE.lock,
    )


def _capture_output() -> None:
    """Python mode: take over fds 1 and 2, so the log copy has every byte printed."""
    try:
        CONSOLE.capture()
    except OSError as exc:
        log(f"warning: cannot capture the output for the log copy: {exc.strerror or exc}")


def _result_files(*, keep: bool, spool: str | None = None) -> ResultFiles | None:
    """The spool of $MICROTASK_OUTPUT files; None (and a warning) if none can be made."""
    try:
        return ResultFiles(keep, spool)
    except OSError as exc:
        log(
            f"warning: cannot make a directory for results ({exc.strerror or exc}): "
            f"{ENV_RESULT_FILE} is not set, commands cannot give back results"
        )
        return None
