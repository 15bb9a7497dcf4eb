"""The ``microtask-runner`` command: run a shard's microtasks inside a pod.

    microtask-runner [options] [--] COMMAND [ARGS...]

Inputs come from environment variables set by the operator; the flags of the
same meaning override them (handy when running it by hand):

    MICROTASK_INDEXES          --indexes   index set to run (required)
    MICROTASK_ITEMS            --items     JSON item source (see items.py)
    MICROTASK_TIMEOUT_SECONDS  --timeout   per-microtask timeout (exit code 124)
    MICROTASK_CALLABLE         --callable  module:function, called in-process
    MICROTASK_REPORT_PATH      --report    report file (default /dev/termination-log)

Exit codes: 0 all microtasks succeeded, 10 some failed, 2 the runner could not
work (the report says why in runner_error), 128+N stopped by signal N.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .execute import (
    EXIT_RUNNER_ERROR,
    INDEX_TOKEN,
    ITEM_TOKEN,
    CommandExecutor,
    Executor,
    Outcomes,
    Progress,
    PythonExecutor,
    ReportFile,
    Signals,
    log,
    run_shard,
)
from .indexset import IndexSet
from .items import ItemSource, load_items
from .report import Report

__all__ = ["DEFAULT_REPORT_PATH", "Config", "RunnerError", "load_callable", "load_config", "main"]

DEFAULT_REPORT_PATH = "/dev/termination-log"

#: option -> environment variable of the same meaning
_SETTINGS = {
    "indexes": "MICROTASK_INDEXES",
    "items": "MICROTASK_ITEMS",
    "timeout": "MICROTASK_TIMEOUT_SECONDS",
    "callable": "MICROTASK_CALLABLE",
    "report": "MICROTASK_REPORT_PATH",
}
_VALUE_OPTIONS = {f"--{name}" for name in _SETTINGS}


class RunnerError(ValueError):
    """The runner cannot work with what it was given (exit code 2)."""


class _UsageError(RunnerError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit(2)
        raise _UsageError(f"usage: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="microtask-runner",
        usage="microtask-runner [options] [--] COMMAND [ARGS...]",
        description=(
            "Run the microtasks of one shard, one after another, and report their "
            "outcomes in a termination-message file. Every option defaults to the "
            "environment variable in brackets."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--indexes", help="index set to run, e.g. 0-99,120 [MICROTASK_INDEXES]")
    parser.add_argument("--items", help="JSON item source [MICROTASK_ITEMS]")
    parser.add_argument(
        "--timeout", help="per-microtask timeout in seconds [MICROTASK_TIMEOUT_SECONDS]"
    )
    parser.add_argument(
        "--callable", help="module:function to call in-process [MICROTASK_CALLABLE]"
    )
    parser.add_argument(
        "--report", help=f"report file [MICROTASK_REPORT_PATH, default {DEFAULT_REPORT_PATH}]"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Options before the command; the command starts at ``--`` or the first non-option.

    Done by hand because argparse would take the command's own options
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


@dataclass(frozen=True)
class Config:
    """Everything the runner was asked to do, checked."""

    indexes: IndexSet
    items: ItemSource
    timeout: float | None
    callable: str | None
    command: tuple[str, ...]


def _setting(options: argparse.Namespace, env: Mapping[str, str], name: str) -> tuple[str, str]:
    """(value or "", where it came from) for the option ``name``."""
    value = getattr(options, name)
    if value is not None:
        return value, f"--{name}"
    variable = _SETTINGS[name]
    return env.get(variable, ""), variable


def load_config(
    options: argparse.Namespace, command: Sequence[str], env: Mapping[str, str]
) -> Config:
    """Check the inputs; raises RunnerError with a message naming the bad setting."""
    text, source = _setting(options, env, "indexes")
    if "MICROTASK_INDEXES" not in env and options.indexes is None:
        raise RunnerError("MICROTASK_INDEXES is not set: no index set to run (or use --indexes)")
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
    if command:
        _check_command(command[0], env)
    return Config(indexes, items, timeout, function or None, tuple(command))


def _check_command(program: str, env: Mapping[str, str]) -> None:
    """Fail the whole shard up front when the program does not exist at all."""
    if INDEX_TOKEN in program or ITEM_TOKEN in program:
        return  # depends on the microtask
    if "/" in program:
        if not os.path.exists(program):
            raise RunnerError(f"command not found: {program}")
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise RunnerError(f"command not found: {program} (searched PATH)")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the shard described by the arguments and environment; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    option_args, command = _split_argv(args)
    try:
        options = _parser().parse_args(option_args)
    except _UsageError as exc:
        path = env.get("MICROTASK_REPORT_PATH") or DEFAULT_REPORT_PATH
        file = ReportFile(path)
        try:
            return _runner_error(file, str(exc))
        finally:
            file.close()
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0

    report_path, _ = _setting(options, env, "report")
    file = ReportFile(report_path or DEFAULT_REPORT_PATH)
    signals: Signals | None = None
    try:
        try:
            config = load_config(options, command, env)
            function = load_callable(config.callable) if config.callable else None
        except RunnerError as exc:
            return _runner_error(file, str(exc))

        signals = Signals()
        signals.install()
        outcomes = Outcomes()
        progress = Progress(outcomes, file)
        executor: Executor
        if function is not None:
            executor = PythonExecutor(function, config.timeout, signals)
        else:
            executor = CommandExecutor(
                config.command,
                env,
                config.timeout,
                signals,
                # On SIGTERM, say at once that nothing is running any more: the
                # interrupted microtask must not be charged even if the child
                # outlives the grace period.
                on_signal=lambda: progress.write(current=None, final=True),
            )
        try:
            return run_shard(
                indexes=config.indexes,
                items=config.items,
                executor=executor,
                outcomes=outcomes,
                progress=progress,
                signals=signals,
            )
        except Exception as exc:
            # A bug of ours: keep what was achieved, and say what happened.
            traceback.print_exc()
            message = f"runner failed: {type(exc).__name__}: {exc}"
            log(message)
            file.write(outcomes.report(current=None, runner_error=message).encode())
            return EXIT_RUNNER_ERROR
    finally:
        if signals is not None:
            signals.restore()
        file.close()
