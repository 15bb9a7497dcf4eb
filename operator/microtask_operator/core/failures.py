"""Failure kinds and the job's bounded failure summary.

A kind is an exit code the runner reported for a microtask (`exit 3`, `command not found`), or a
pod-level reason when the pod died without a usable report (`OOMKilled`, `DeadlineExceeded`,
`RunnerError`). The summary counts, per kind, the failed attempts and the microtasks that failed
for good, with one sample; it keeps the most frequent kinds only, so the status stays small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

#: Kinds kept in the summary; the one with the fewest attempts goes first.
MAX_KINDS = 10
#: A sample's error text is cut to this many characters.
MAX_MESSAGE_CHARS = 300

EXIT_TIMEOUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_COMMAND_NOT_FOUND = 127
#: Exit codes that say the command cannot run at all: a retry would fail the same way.
COMMAND_NOT_FOUND_CODES = frozenset({EXIT_NOT_EXECUTABLE, EXIT_COMMAND_NOT_FOUND})

# Linux signal numbers (where the pods run), so the words do not depend on the operator's host.
_SIGNALS = {
    1: "HUP",
    2: "INT",
    3: "QUIT",
    4: "ILL",
    5: "TRAP",
    6: "ABRT",
    7: "BUS",
    8: "FPE",
    9: "KILL",
    10: "USR1",
    11: "SEGV",
    12: "USR2",
    13: "PIPE",
    14: "ALRM",
    15: "TERM",
    16: "STKFLT",
    17: "CHLD",
    18: "CONT",
    19: "STOP",
    20: "TSTP",
    21: "TTIN",
    22: "TTOU",
    23: "URG",
    24: "XCPU",
    25: "XFSZ",
    26: "VTALRM",
    27: "PROF",
    28: "WINCH",
    29: "IO",
    30: "PWR",
    31: "SYS",
}
_MAX_SIGNAL = 64


def describe_exit_code(code: int) -> str:
    """What an exit code means, in a few words (also the `reason` label of failure metrics)."""
    if code == EXIT_TIMEOUT:
        return "timeout"
    if code == EXIT_NOT_EXECUTABLE:
        return "not executable"
    if code == EXIT_COMMAND_NOT_FOUND:
        return "command not found"
    if code == 128 + 9:
        return "killed (SIGKILL; out of memory?)"
    signal = code - 128
    if 1 <= signal <= _MAX_SIGNAL:
        name = _SIGNALS.get(signal)
        return f"killed by SIG{name}" if name else f"killed by signal {signal}"
    return f"exit {code}"


def microtasks(count: int) -> str:
    """`1 microtask`, `5 microtasks`."""
    return f"{count} microtask" if count == 1 else f"{count} microtasks"


def cut(text: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """One line of at most `max_chars` characters."""
    line = " ".join(text.split())
    if len(line) <= max_chars:
        return line
    return line[: max_chars - 1] + "…"


@dataclass(frozen=True)
class FailureEntry:
    """One kind of failure, counted across the whole job."""

    exit_code: int | None  # the runner's exit code for the microtask; None for a pod-level reason
    reason: str
    attempts: int  # failed attempts of this kind, retried or not
    microtasks: int  # microtasks that failed permanently with it
    sample_index: int
    message: str = ""

    @property
    def key(self) -> tuple[int | None, str]:
        return (self.exit_code, self.reason)

    def label(self) -> str:
        """`command not found (exit 127)`, `exit 3`, `OOMKilled`."""
        if self.exit_code is None or self.reason == f"exit {self.exit_code}":
            return self.reason
        return f"{self.reason} (exit {self.exit_code})"

    def is_command_not_found(self) -> bool:
        return self.exit_code in COMMAND_NOT_FOUND_CODES


def _order(entry: FailureEntry) -> tuple[int, bool, int, str]:
    return (-entry.attempts, entry.exit_code is None, entry.exit_code or 0, entry.reason)


def record(
    summary: Sequence[FailureEntry],
    *,
    exit_code: int | None,
    reason: str,
    attempts: int,
    microtasks: int,
    sample_index: int,
    message: str = "",
) -> tuple[FailureEntry, ...]:
    """The summary with one more observation of a kind (the first sample is kept).

    Sorted by attempts (most first; ties by exit code, pod-level reasons last); beyond MAX_KINDS
    the kind with the fewest attempts is dropped.
    """
    if attempts <= 0 and microtasks <= 0:
        return tuple(summary)
    key = (exit_code, reason)
    result = list(summary)
    for i, entry in enumerate(result):
        if entry.key == key:
            result[i] = replace(
                entry,
                attempts=entry.attempts + attempts,
                microtasks=entry.microtasks + microtasks,
                message=entry.message or cut(message),
            )
            break
    else:
        result.append(
            FailureEntry(exit_code, reason, attempts, microtasks, sample_index, cut(message))
        )
    result.sort(key=_order)
    return tuple(result[:MAX_KINDS])


def describe(entry: FailureEntry, *, retried: bool = False) -> str:
    """One sentence about a kind, for status messages and events.

    e.g. `command not found (exit 127) in 5 microtasks, e.g. index 0: command not found: pyhton3
    (searched PATH); not retried (set retry.retryCommandNotFound to retry)`.
    """
    if entry.microtasks:
        what = f"in {microtasks(entry.microtasks)}"
    else:
        what = f"in {entry.attempts} attempt" + ("" if entry.attempts == 1 else "s")
    sample = f"index {entry.sample_index}"
    if entry.message:
        sample += f": {entry.message}"
    text = f"{entry.label()} {what}, e.g. {sample}"
    if entry.is_command_not_found() and not retried:
        text += "; not retried (set retry.retryCommandNotFound to retry)"
    return text


def worst(summary: Iterable[FailureEntry]) -> FailureEntry | None:
    """The kind most to blame for permanent failures: command-not-found first, then by count."""
    permanent = [e for e in summary if e.microtasks > 0]
    if not permanent:
        return None
    return max(permanent, key=lambda e: (e.is_command_not_found(), e.microtasks, e.attempts))


def to_status(summary: Iterable[FailureEntry]) -> list[dict[str, Any]]:
    """`status.failureSummary`: camelCase, `exitCode` only for exit codes, `message` when known."""
    items = []
    for entry in summary:
        item: dict[str, Any] = {}
        if entry.exit_code is not None:
            item["exitCode"] = entry.exit_code
        item.update(
            reason=entry.reason,
            attempts=entry.attempts,
            microtasks=entry.microtasks,
            sampleIndex=entry.sample_index,
        )
        if entry.message:
            item["message"] = entry.message
        items.append(item)
    return items


def from_status(value: Any) -> tuple[FailureEntry, ...]:
    """Read back `to_status`; a status written before the summary existed has none."""
    entries = []
    for item in value or []:
        if not isinstance(item, Mapping):
            raise TypeError(f"failureSummary entry is not an object: {item!r}")
        code = item.get("exitCode")
        entries.append(
            FailureEntry(
                exit_code=None if code is None else int(code),
                reason=str(item["reason"]),
                attempts=int(item.get("attempts", 0)),
                microtasks=int(item.get("microtasks") or 0),
                sample_index=int(item.get("sampleIndex", 0)),
                message=str(item.get("message") or ""),
            )
        )
    entries.sort(key=_order)
    return tuple(entries[:MAX_KINDS])
