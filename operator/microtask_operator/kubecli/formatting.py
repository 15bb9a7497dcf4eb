"""What the cluster commands print: kubectl-style tables, ages, rates, ETAs, failure lines.

Pure functions of MicrotaskJob bodies (as the API server returns them) and `now`, so every
format is pinned by unit tests without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.conditions import TERMINAL_PHASES, ConditionReason, ConditionType, Phase
from ..core.timefmt import from_rfc3339

NONE = "<none>"
#: kubectl's tabwriter: columns padded to the widest cell, three spaces apart.
COLUMN_GAP = 3

COLUMNS = ("NAME", "PHASE", "PROGRESS", "FAILED", "RUNNING", "RATE", "ETA", "AGE")
WIDE_COLUMNS = (*COLUMNS, "ATTEMPTS", "RETRIED-OK", "CPU-S", "OUTPUT")

#: (type, status) pairs that say nothing the phase does not already say.
PLAIN_CONDITIONS = frozenset(
    {
        (ConditionType.READY, "True"),
        (ConditionType.COMPLETE, "False"),
        (ConditionType.FAILED, "False"),
        (ConditionType.INVALID, "False"),
        (ConditionType.SUSPENDED, "False"),
        (ConditionType.WAITING_FOR_DEPENDENCIES, "False"),
    }
)
#: A Complete=True condition is plain unless it carries one of these reasons.
_NOTABLE_COMPLETE_REASONS = frozenset({ConditionReason.SUCCEEDED_WITH_FAILURES})


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (AGE columns): `45s`, `3m20s`, `25m`, `5h10m`, `3d4h`, `2y`."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time of the API (`2024-05-01T10:00:00Z`) as epoch seconds; None if absent."""
    if not value:
        return None
    try:
        return from_rfc3339(str(value))
    except ValueError:
        return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Progress:
    """The counters of a MicrotaskJob's status, and what follows from them."""

    phase: str | None
    total: int | None
    succeeded: int
    failed: int
    running: int
    queued: int
    not_run: int | None
    attempts: int | None
    succeeded_after_retry: int | None
    started: float | None
    completed: float | None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Progress:
        status = body.get("status") or {}
        return cls(
            phase=str(status["phase"]) if status.get("phase") else None,
            total=_count(status.get("total")),
            succeeded=_count(status.get("succeeded")) or 0,
            failed=_count(status.get("failed")) or 0,
            running=_count(status.get("running")) or 0,
            queued=_count(status.get("queued")) or 0,
            not_run=_count(status.get("notRun")),
            attempts=_count(status.get("attempts")),
            succeeded_after_retry=_count(status.get("succeededAfterRetry")),
            started=parse_time(status.get("startTime")),
            completed=parse_time(status.get("completionTime")),
        )

    @property
    def ended(self) -> int:
        """Microtasks that will not run again: succeeded, or failed for good."""
        return self.succeeded + self.failed

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def unfinished(self) -> int:
        """Microtasks that did not succeed (failed, or never ran); what a rerun would run."""
        if self.total is None:
            return self.failed
        return max(self.total - self.succeeded, 0)

    def elapsed(self, now: float) -> float | None:
        """Seconds since the first shard started (until completion, once finished)."""
        if self.started is None:
            return None
        end = self.completed if self.completed is not None and self.finished else now
        return max(end - self.started, 0.0)

    def rate(self, now: float) -> float | None:
        """Microtasks ended per second since startTime; None before the start."""
        elapsed = self.elapsed(now)
        if elapsed is None:
            return None
        if elapsed <= 0:
            return 0.0
        return self.ended / elapsed

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far; None when finished, held, or not yet measurable."""
        if self.finished or self.phase not in (Phase.RUNNING, Phase.PENDING):
            return None
        if self.total is None:
            return None
        remaining = self.total - self.ended
        rate = self.rate(now)
        if remaining <= 0:
            return 0.0
        if not rate:
            return None
        return remaining / rate

    def progress_text(self) -> str:
        """`420/1000`: succeeded of total (as kubectl's COMPLETIONS of a Job)."""
        if self.total is None:
            return "-"
        return f"{self.succeeded}/{self.total}"


def format_rate(rate: float | None) -> str:
    """`12.3/s`; `-` before the start."""
    if rate is None:
        return "-"
    if rate >= 100:
        return f"{rate:,.0f}/s"
    if rate >= 10:
        return f"{rate:.1f}/s"
    if rate > 0:
        return f"{rate:.2f}/s"
    return "0/s"


def format_eta(seconds: float | None) -> str:
    """`4m10s` (kubectl's duration style); `-` when there is none."""
    if seconds is None:
        return "-"
    return human_duration(round(seconds))


def format_seconds(value: Any) -> str:
    """CPU-seconds and the like: `0.5`, `12`, `1,234`; `-` when absent."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like kubectl's printer (the last one unpadded), one line per row."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)]
        out.append((" " * COLUMN_GAP).join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def job_row(body: Mapping[str, Any], now: float, *, wide: bool = False) -> list[str]:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    progress = Progress.of(body)
    created = parse_time(meta.get("creationTimestamp"))
    row = [
        str(meta.get("name") or ""),
        progress.phase or NONE,
        progress.progress_text(),
        str(progress.failed),
        str(progress.running),
        format_rate(progress.rate(now)),
        format_eta(progress.eta(now)),
        human_duration(now - created) if created is not None else NONE,
    ]
    if wide:
        resources = status.get("resources") or {}
        output = status.get("output") or {}
        row += [
            str(progress.attempts) if progress.attempts is not None else "-",
            str(progress.succeeded_after_retry)
            if progress.succeeded_after_retry is not None
            else "-",
            format_seconds(resources.get("cpuSeconds")),
            str(output.get("url") or NONE),
        ]
    return row


def job_table(
    bodies: Sequence[Mapping[str, Any]],
    now: float,
    *,
    wide: bool = False,
    all_namespaces: bool = False,
) -> str:
    """The table of `microtask get`, sorted by namespace and name."""
    headers = list(WIDE_COLUMNS if wide else COLUMNS)
    ordered = sorted(
        bodies,
        key=lambda b: ((b.get("metadata") or {}).get("namespace") or "", _name(b)),
    )
    rows = []
    for body in ordered:
        row = job_row(body, now, wide=wide)
        if all_namespaces:
            row.insert(0, str((body.get("metadata") or {}).get("namespace") or ""))
        rows.append(row)
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    return render_table(headers, rows)


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _short(text: Any, limit: int) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def failure_text(kind: Mapping[str, Any]) -> str:
    """One failureSummary row: `exit 3: 12 attempts, 2 microtasks failed, e.g. #14: boom`."""
    parts = [_plural(int(kind.get("attempts") or 0), "failed attempt")]
    if kind.get("microtasks"):
        parts.append(_plural(int(kind["microtasks"]), "microtask") + " failed for good")
    text = f"{kind.get('reason') or 'failure'}: {', '.join(parts)}"
    if kind.get("sampleIndex") is not None:
        text += f"; e.g. microtask {kind['sampleIndex']}"
        if kind.get("message"):
            text += f": {_short(kind['message'], 200)}"
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def failure_key(kind: Mapping[str, Any]) -> str:
    """What tells two failureSummary rows apart."""
    return f"{kind.get('exitCode')}|{kind.get('reason')}"


def unusual_conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conditions worth a line: those that are not in their everyday state."""
    finished = status.get("phase") in TERMINAL_PHASES
    found = []
    for condition in status.get("conditions") or []:
        if not isinstance(condition, Mapping):
            continue
        pair = (condition.get("type"), condition.get("status"))
        if pair in PLAIN_CONDITIONS:
            continue
        if finished and pair == (ConditionType.READY, "False"):
            continue  # a finished job is no longer "ready": the phase says it all
        if (
            pair == (ConditionType.COMPLETE, "True")
            and condition.get("reason") not in _NOTABLE_COMPLETE_REASONS
        ):
            continue
        found.append(condition)
    return found


def condition_true(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition `kind` when its status is True."""
    for condition in status.get("conditions") or []:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == kind
            and condition.get("status") == "True"
        ):
            return condition
    return None


def job_details(body: Mapping[str, Any]) -> list[str]:
    """What `microtask get NAME` prints below the table: message, failures, conditions."""
    status = body.get("status") or {}
    if not status:
        return [
            "Message:     no status yet: the operator writes one within seconds of creation "
            "(is it running, and watching this namespace?)"
        ]
    lines = []
    if status.get("message"):
        lines.append(f"Message:     {_short(status['message'], 300)}")
    source = status.get("source") or {}
    if source.get("job"):
        lines.append(f"Rerun of:    {source['job']} (indexes {_short(source.get('indexes'), 80)})")
    output = status.get("output") or {}
    if output.get("url"):
        lines.append(f"Output:      {output['url']}")
    kinds = [k for k in status.get("failureSummary") or [] if isinstance(k, Mapping)]
    if kinds:
        lines.append("Failures:")
        table = render_table(
            ("KIND", "ATTEMPTS", "MICROTASKS", "SAMPLE", "MESSAGE"),
            [
                (
                    _short(k.get("reason") or "-", 40),
                    str(k.get("attempts", 0)),
                    str(k.get("microtasks", 0)),
                    str(k.get("sampleIndex", "-")),
                    _short(k.get("message") or "", 100),
                )
                for k in kinds
            ],
        )
        lines += [f"  {line}" for line in table.splitlines()]
    unusual = unusual_conditions(status)
    if unusual:
        lines.append("Conditions:")
        table = render_table(
            ("TYPE", "STATUS", "REASON", "MESSAGE"),
            [
                (
                    str(c.get("type") or ""),
                    str(c.get("status") or ""),
                    str(c.get("reason") or ""),
                    _short(c.get("message") or "", 160),
                )
                for c in unusual
            ],
        )
        lines += [f"  {line}" for line in table.splitlines()]
    return lines


def status_line(name: str, body: Mapping[str, Any], now: float) -> str:
    """One line of progress: `big: Running 420/1000, 3 failed, 40 running; 12.3/s, ETA 47s`."""
    progress = Progress.of(body)
    if progress.phase is None:
        return f"{name}: waiting for the operator to pick it up"
    parts = [f"{progress.phase} {progress.progress_text()} succeeded"]
    if progress.failed:
        parts.append(f"{progress.failed} failed")
    if progress.running:
        parts.append(f"{progress.running} running")
    if progress.queued:
        parts.append(f"{progress.queued} queued")
    text = f"{name}: {', '.join(parts)}"
    rate = progress.rate(now)
    if rate is not None:
        text += f"; {format_rate(rate)}"
        eta = progress.eta(now)
        if eta is not None:
            text += f", ETA {format_eta(eta)}"
    return text
