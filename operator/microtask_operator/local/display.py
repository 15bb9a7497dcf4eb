"""What `microtask run` shows a person: messages, live progress, then a summary.

Everything goes to stderr, so `-o json` on stdout stays machine-readable. On a terminal the
progress is a rich bar and the summary a table; elsewhere (a CI log, a pipe) the progress is one
plain line at a steady interval and the summary plain `key  value` lines, never wrapped at 80
columns and never with markup printed literally.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .executor import Snapshot

#: Plain progress lines, when stderr is not a terminal, every this many seconds by default.
DEFAULT_PROGRESS_INTERVAL = 10.0


class Ui:
    """Messages for the person running the command, on stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(
            file=stream or sys.stderr, soft_wrap=True, highlight=False, emoji=False
        )

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def _say(self, label: str, style: str, message: str) -> None:
        self.console.print(Text.assemble((label, style), message), soft_wrap=True)

    def error(self, message: str) -> None:
        self._say("error: ", "bold red", message)

    def problem(self, message: str) -> None:
        """A validation problem: `FILE: doc N (name): field: message`, as `validate` prints it."""
        self._say("invalid: ", "bold red", message)

    def warning(self, message: str) -> None:
        self._say("warning: ", "bold yellow", message)

    def note(self, message: str) -> None:
        self._say("note: ", "dim", message)

    def line(self, message: str) -> None:
        self.console.print(Text(message), soft_wrap=True)


def duration(seconds: float) -> str:
    """`1m13s`, `2h05m10s`, `9s`."""
    if not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressView:
    """Progress of one job over the whole job: `base` counts come from earlier runs."""

    def __init__(
        self,
        name: str,
        ui: Ui,
        *,
        total: int,
        base_succeeded: int = 0,
        base_failed: int = 0,
        interval: float = DEFAULT_PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.ui = ui
        self.total = total
        self.base_succeeded = base_succeeded
        self.base_failed = base_failed
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        if self.ui.interactive:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("[cyan]{task.fields[rate]}/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.ui.console,
                transient=False,
                refresh_per_second=8,
            )
            done = self.base_succeeded + self.base_failed
            self.task = self.bar.add_task(
                self.name, total=self.total, completed=done, counts="", rate="0"
            )
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def figures(self, snapshot: Snapshot) -> tuple[int, int, float, float]:
        """(succeeded, failed) over the whole job, this run's rate (/s) and the ETA (s)."""
        elapsed = max(1e-9, self.clock() - self.started)
        done_here = snapshot.succeeded + snapshot.failed
        rate = done_here / elapsed
        left = max(0, snapshot.total - done_here)
        eta = left / rate if rate > 0 else math.inf
        return (
            self.base_succeeded + snapshot.succeeded,
            self.base_failed + snapshot.failed,
            rate,
            eta,
        )

    def line(self, snapshot: Snapshot) -> str:
        """`primes: 120/1000 succeeded, 3 failed, 8 running, 12.0/s, ETA 1m13s`."""
        succeeded, failed, rate, eta = self.figures(snapshot)
        return (
            f"{self.name}: {succeeded}/{self.total} succeeded, {failed} failed, "
            f"{snapshot.running} running, {rate:,.1f}/s, ETA {duration(eta)}"
        )

    def update(self, snapshot: Snapshot) -> None:
        if self.bar is not None and self.task is not None:
            succeeded, failed, rate, _ = self.figures(snapshot)
            counts = (
                f"[green]✓ {succeeded}[/] [red]✗ {failed}[/] "
                f"[yellow]↻ {snapshot.queued}[/] ▶ {snapshot.running}"
            )
            self.bar.update(
                self.task, completed=succeeded + failed, counts=counts, rate=f"{rate:,.1f}"
            )
            return
        if self.interval <= 0:
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.ui.line(self.line(snapshot))


# -- the summary ------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def summary_rows(
    summary: dict[str, Any], *, shards: int, examples: dict[int, str], finished_here: int
) -> list[tuple[str, str]]:
    """(label, value) rows of a RunSummary for people; nothing failure-looking when all went well.

    `finished_here` is what this run brought to an outcome (for its throughput).
    """
    total = summary["total"]
    failed = summary["failed"]
    rows: list[tuple[str, str]] = [
        ("microtasks", f"{total:,}"),
        ("succeeded", f"{summary['succeeded']:,}"),
    ]
    retried = summary.get("succeededAfterRetry") or 0
    if retried:
        rows.append(("retried, then succeeded", _plural(retried, "microtask")))
    if failed:
        rows.append(("failed", f"{failed:,}  (indexes {_bounded(summary['failedIndexes'])})"))
    not_run = summary.get("notRun") or 0
    if not_run:
        why = "interrupted" if summary["phase"] == "Interrupted" else "the job stopped early"
        rows.append(("not run", f"{not_run:,}  ({why})"))
    kinds = summary.get("failureSummary") or []
    if failed or summary["phase"] == "Failed":
        for kind in kinds:
            rows.append((f"  {kind.get('reason') or 'failure'}", _failure_kind(kind)))
        if not kinds:
            for code, text in sorted(examples.items()):
                rows.append((f"  exit {code}", text[:300]))
    elif retried and kinds:
        sample = kinds[0]
        if sample.get("message"):
            rows.append(("  why retried", f"{sample.get('reason')}: {_message(sample)}"))
    rows.append(("attempts", f"{summary['attempts']:,}  ({_plural(shards, 'shard')})"))
    seconds = summary["seconds"]
    rate = finished_here / seconds if seconds > 0 else 0.0
    rows.append(("wall time", f"{duration(seconds)}  ({seconds:.2f} s, {rate:,.1f} microtasks/s)"))
    resources = summary.get("resources") or {}
    cpu = resources.get("cpuSeconds")
    if cpu is not None:
        wasted = resources.get("wastedCpuSeconds") or 0.0
        share = f", {100 * wasted / cpu:.0f}% wasted" if cpu > 0 and wasted > 0 else ""
        rows.append(("CPU time", f"{cpu:,.1f} CPU-seconds{share}"))
    rows.append(("output", summary["output"]))
    return rows


def _bounded(text: str, limit: int = 120) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(",", 1)[0]
    return f"{cut},…"


def _failure_kind(kind: dict[str, Any]) -> str:
    parts = [_plural(int(kind.get("attempts") or 0), "failed attempt")]
    if kind.get("microtasks"):
        parts.append(f"{_plural(int(kind['microtasks']), 'microtask')} failed for good")
    text = ", ".join(parts)
    if kind.get("sampleIndex") is not None:
        text += f"; e.g. index {kind['sampleIndex']}"
        if kind.get("message"):
            text += f": {_message(kind)}"
    return text


def _message(kind: dict[str, Any]) -> str:
    """A failure kind's sample message without the `index N: ` it may start with."""
    message = str(kind.get("message") or "")
    prefix = f"index {kind.get('sampleIndex')}: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return message[:300]


def next_commands(summary: dict[str, Any], *, file: str, extra: Sequence[str] = ()) -> list[str]:
    """The exact commands worth typing next."""
    tail = " ".join(shlex.quote(a) for a in (file, *extra))
    commands = [f"microtask results {tail}"]
    sample = next(
        (
            k.get("sampleIndex")
            for k in summary.get("failureSummary") or []
            if k.get("sampleIndex") is not None and k.get("microtasks")
        ),
        None,
    )
    if sample is None and summary["failed"]:
        failed = summary["failedIndexes"]
        first = failed.split(",", 1)[0].split("-", 1)[0]
        sample = int(first) if first.isdigit() else None
    if sample is not None:
        commands.append(f"microtask logs {tail} --index {sample}")
    if summary["phase"] == "Interrupted":
        commands.append(f"microtask run {tail} --resume")
    elif summary["failed"] or summary.get("notRun"):
        commands.append(f"microtask rerun {tail} --failed")
    return commands


def show_summary(
    ui: Ui,
    summary: dict[str, Any],
    *,
    title: str,
    shards: int,
    examples: dict[int, str],
    finished_here: int,
    commands: Sequence[str],
) -> None:
    rows = summary_rows(summary, shards=shards, examples=examples, finished_here=finished_here)
    if ui.interactive:
        table = Table(title=title, show_header=False)
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in rows:
            table.add_row(Text(key), Text(value))
        ui.console.print(table)
    else:
        ui.line(title)
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            ui.line(f"  {key:<{width}}  {value}")
    for command in commands:
        ui.console.print(Text.assemble(("next: ", "bold"), command), soft_wrap=True)
