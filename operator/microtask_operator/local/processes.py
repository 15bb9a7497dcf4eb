"""Ending a shard's runner and everything it started, so no process outlives `microtask run`.

A runner runs in its own process group (a terminal's Ctrl-C reaches `microtask run` only, which
stops the shards itself), and each microtask's command runs in a group of its own below it. A
signal to the runner's group therefore does not reach the command: the runner forwards SIGTERM
itself, and when it must be killed, the groups below it are found through /proc first (once the
runner is dead, its children belong to init and cannot be traced back).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, from /proc; None when unknown."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or parentheses: cut at the last one.
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None


def groups_below(pid: int) -> set[int]:
    """Process groups of every descendant of `pid` (Linux; empty elsewhere)."""
    if not PROC.is_dir():
        return set()
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            found = _stat(int(entry.name))
            if found is None:
                continue
            parent, group = found
            children.setdefault(parent, []).append(int(entry.name))
            groups[int(entry.name)] = group
    result: set[int] = set()
    pending = list(children.get(pid, ()))
    seen: set[int] = set()
    while pending:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        if child in groups:
            result.add(groups[child])
        pending.extend(children.get(child, ()))
    return result


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def kill_tree(pgid: int) -> None:
    """SIGKILL a runner's process group and every group started below its leader.

    The group is stopped first, so it cannot start anything new while its tree is read.
    """
    signal_group(pgid, signal.SIGSTOP)
    below = groups_below(pgid) - {pgid}
    for group in below:
        signal_group(group, signal.SIGKILL)
    signal_group(pgid, signal.SIGKILL)
