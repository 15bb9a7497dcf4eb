"""What `microtask run` shows a person: a live progress bar, then a summary table.

Both go to stderr so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

from typing import Any

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

from ..core.planner import Decision, Deltas


class ProgressDisplay:
    """A rich progress bar over microtasks ended (succeeded or failed for good)."""

    def __init__(self, name: str, total: int, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("[cyan]{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        self.task: TaskID = self.progress.add_task(name, total=total, counts="", rate="0")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, decision: Decision, deltas: Deltas) -> None:
        del deltas
        status = decision.status
        done = status["succeeded"] + status["failed"]
        task = self.progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        counts = (
            f"[green]✓ {status['succeeded']}[/] [red]✗ {status['failed']}[/] "
            f"[yellow]↻ {status['queued']}[/] ▶ {status['running']}"
        )
        self.progress.update(self.task, completed=done, counts=counts, rate=f"{rate:,.1f}")


def summary_table(
    name: str,
    status: dict[str, Any],
    *,
    seconds: float,
    shards: int,
    retried: int,
    failure_examples: dict[int, str],
    log_dir: str,
) -> Table:
    table = Table(title=f"MicrotaskJob {name}: {status['phase']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    total = status["total"]
    rate = (status["succeeded"] + status["failed"]) / seconds if seconds > 0 else 0.0
    rows = [
        ("microtasks", f"{total:,}"),
        ("succeeded", f"{status['succeeded']:,}"),
        (
            "failed",
            f"{status['failed']:,}"
            + (f"  ({status['failedIndexes']})" if status["failed"] else ""),
        ),
        ("retried", f"{retried:,} microtask retries"),
        ("attempts", f"{status['attempts']:,}"),
        ("shards", f"{shards:,}"),
        ("wall time", f"{seconds:.2f} s"),
        ("throughput", f"{rate:,.1f} microtasks/s"),
    ]
    rebalances = status.get("rebalances") or {}
    if rebalances:
        rows.append(("rebalanced", ", ".join(f"{k}={v}" for k, v in sorted(rebalances.items()))))
    for code, text in sorted(failure_examples.items()):
        rows.append((f"exit {code}", text[:200]))
    rows.append(("logs", log_dir))
    for key, value in rows:
        table.add_row(key, value)
    return table
