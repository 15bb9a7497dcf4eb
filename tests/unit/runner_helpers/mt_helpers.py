"""Functions for the runner's Python-mode tests (``MICROTASK_CALLABLE=mt_helpers:...``)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any


def _record(index: int, item: Any) -> None:
    path = os.environ.get("HELPER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps([index, item]) + "\n")


def ok(index: int, item: Any) -> None:
    """Succeeds, writing down what it was given."""
    _record(index, item)


def flaky(index: int, item: Any) -> None:
    """Odd indexes raise."""
    _record(index, item)
    if index % 2:
        raise ValueError(f"odd index {index}")


def exits(index: int, item: Any) -> None:
    """Raises SystemExit(item)."""
    raise SystemExit(item)


def sleepy(index: int, item: Any) -> None:
    """Index 1 takes far too long, and swallows ordinary exceptions while doing so."""
    _record(index, item)
    if index == 1:
        with contextlib.suppress(Exception):
            time.sleep(30)


def slow_from_two(index: int, item: Any) -> None:
    """Indexes from 2 on take long: a window to signal the runner mid-run."""
    _record(index, item)
    if index >= 2:
        time.sleep(30)


class Worker:
    """A callable reached by a dotted path (mt_helpers:Worker.run)."""

    @staticmethod
    def run(index: int, item: Any) -> None:
        _record(index, item)


not_callable = 42


def busy_at_first(index: int, item: Any) -> None:
    """Every fourth index (1, 5, 9...) fails its first attempt; index 2 fails every attempt."""
    attempt = os.environ.get("MICROTASK_ATTEMPT", "1")
    _record(index, attempt)
    if index == 2 or (index % 4 == 1 and attempt == "1"):
        raise RuntimeError(f"busy: index {index}, attempt {attempt}")
