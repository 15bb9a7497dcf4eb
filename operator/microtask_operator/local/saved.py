"""The saved state of a local run (`run.json`): what it holds, what is left, how runs merge.

    job           the MicrotaskJob's name
    file          the job file, absolute
    specDigest    sha256 of the spec's canonical JSON (and of the ConfigMap items it uses)
    universe      the microtasks of the whole job as an index set; null: 0..total-1
    status        the last decision's status (after a --resume or rerun: merged with the earlier)
    nextShard     the next shard id: a later run starts there, so log and record names never clash
    finished      the job ended (Succeeded or Failed)
    interrupted   a signal stopped the run; `--resume` continues it
    startedAt     when the job's first run started (RFC 3339)
    endedAt       when its last run ended; null while one runs

A `--resume` runs what neither succeeded nor failed for good; `rerun --failed` runs everything that
did not succeed. Either starts a fresh core over those indexes (its universe) and merges its
outcome into the saved status, so the folder always describes one job.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from microtask_runner.indexset import IndexSet

from ..api.model import MicrotaskJob
from ..core.types import RetryPolicy
from .rundir import RunDirError

SUCCEEDED = "Succeeded"
FAILED = "Failed"
MAX_FAILURE_KINDS = 10


class Mode(StrEnum):
    """What a run of a job file runs."""

    FRESH = "fresh"  # the whole job, into a cleared folder
    RESUME = "resume"  # what has no outcome yet (--resume)
    FAILED = "failed"  # what did not succeed (rerun --failed)


def spec_digest(job: MicrotaskJob, config_map_data: Mapping[str, str] | None = None) -> str:
    """sha256 of the spec's canonical JSON, with the ConfigMap items it reads, if any."""
    document: dict[str, Any] = {
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    }
    ref = job.spec.items.config_map_ref
    if ref is not None and config_map_data is not None:
        document["items"] = config_map_data.get(ref.key)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def failure_allowance(policy: RetryPolicy, total: int) -> int:
    """Permanent failures a job of `total` microtasks tolerates (the larger allowance wins)."""
    allowed = policy.max_failed_microtasks
    if policy.max_failed_fraction is not None:
        allowed = max(allowed, math.floor(policy.max_failed_fraction * total))
    return allowed


def indexes_of(status: Mapping[str, Any], key: str) -> IndexSet:
    value = status.get(key)
    return IndexSet.from_compact(str(value)) if value else IndexSet.EMPTY


@dataclass(frozen=True)
class SavedRun:
    """run.json, read back and checked."""

    job: str
    file: str
    digest: str
    universe: IndexSet | None
    status: dict[str, Any]
    next_shard: int
    finished: bool
    interrupted: bool
    started_at: str | None

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: str) -> SavedRun:
        try:
            universe_text = state.get("universe")
            status = state.get("status") or {}
            if not isinstance(status, dict):
                raise TypeError("status is not an object")
            saved = cls(
                job=str(state["job"]),
                file=str(state.get("file") or ""),
                digest=str(state["specDigest"]),
                universe=IndexSet.from_compact(universe_text) if universe_text else None,
                status=status,
                next_shard=int(state.get("nextShard") or 0),
                finished=bool(state.get("finished")),
                interrupted=bool(state.get("interrupted")),
                started_at=state.get("startedAt"),
            )
            # The index sets must read back too, before anything relies on them.
            indexes_of(status, "succeededIndexes")
            indexes_of(status, "failedIndexes")
        except (KeyError, TypeError, ValueError) as error:
            raise RunDirError(f"{where} cannot be read back: {error}") from None
        return saved

    @property
    def total(self) -> int:
        if self.universe is not None:
            return len(self.universe)
        return int(self.status.get("total") or 0)

    def whole(self) -> IndexSet:
        """Every microtask of the job."""
        return self.universe if self.universe is not None else IndexSet.from_range(0, self.total)

    @property
    def succeeded(self) -> IndexSet:
        return indexes_of(self.status, "succeededIndexes")

    @property
    def failed(self) -> IndexSet:
        return indexes_of(self.status, "failedIndexes")

    def remaining(self, mode: Mode) -> IndexSet:
        """What a --resume (no outcome yet) or a rerun --failed (not succeeded) runs."""
        left = self.whole() - self.succeeded
        if mode == Mode.RESUME:
            left = left - self.failed
        return left


def kept_failures(saved: SavedRun, mode: Mode) -> IndexSet:
    """Earlier permanent failures that this run leaves alone (they still count against the job)."""
    return saved.failed if mode == Mode.RESUME else IndexSet.EMPTY


def merge_status(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    total: int,
    mode: Mode,
    allowance: int,
) -> dict[str, Any]:
    """The status of the whole job after a run over part of it.

    succeeded = old | new; failed = (old - new succeeded) | new failed; counters over the whole
    job. A run that succeeded on its part fails the job when the failures kept from earlier runs
    and its own exceed the job's allowance.
    """
    old_ok, new_ok = indexes_of(old, "succeededIndexes"), indexes_of(new, "succeededIndexes")
    old_failed, new_failed = indexes_of(old, "failedIndexes"), indexes_of(new, "failedIndexes")
    succeeded = old_ok | new_ok
    failed = (old_failed - new_ok) | new_failed
    merged = dict(new)
    merged.update(
        total=total,
        succeeded=len(succeeded),
        failed=len(failed),
        succeededIndexes=succeeded.to_compact(),
        failedIndexes=failed.to_compact(),
    )
    for key in ("attempts", "succeededAfterRetry", "speculativeCopies"):
        if key in old or key in new:
            merged[key] = int(old.get(key) or 0) + int(new.get(key) or 0)
    if "wastedSeconds" in old or "wastedSeconds" in new:
        merged["wastedSeconds"] = round(
            float(old.get("wastedSeconds") or 0) + float(new.get("wastedSeconds") or 0), 3
        )
    rebalances = dict(old.get("rebalances") or {})
    for reason, count in (new.get("rebalances") or {}).items():
        rebalances[reason] = int(rebalances.get(reason, 0)) + int(count)
    merged["rebalances"] = dict(sorted(rebalances.items()))
    merged["resources"] = merge_resources(old.get("resources"), new.get("resources"))
    merged["failureSummary"] = merge_failure_summary(
        old.get("failureSummary") or [], new.get("failureSummary") or [], mode=mode
    )
    if old.get("startTime"):
        merged["startTime"] = old["startTime"]
    if new.get("phase") == SUCCEEDED and len(failed) > allowance:
        merged["phase"] = FAILED
        merged["message"] = (
            f"{len(failed)} microtasks failed permanently (earlier runs included), more than the "
            f"{allowance} tolerated"
        )
        merged["conditions"] = [
            {**c, "status": "True" if c.get("type") == "Failed" else "False"}
            if c.get("type") in ("Failed", "Complete")
            else c
            for c in new.get("conditions") or []
        ]
    elif new.get("phase") in (SUCCEEDED, FAILED):
        merged["message"] = (
            f"{len(succeeded)} of {total} microtasks succeeded"
            + (f", {len(failed)} failed" if failed else "")
            + " (earlier runs included)"
        )
    return merged


def merge_resources(old: Any, new: Any) -> dict[str, float] | None:
    if not isinstance(old, Mapping) and not isinstance(new, Mapping):
        return None
    merged: dict[str, float] = {}
    for part in (old, new):
        if isinstance(part, Mapping):
            for key, value in part.items():
                if isinstance(value, int | float):
                    merged[key] = round(merged.get(key, 0.0) + float(value), 3)
    return merged


def merge_failure_summary(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *, mode: Mode
) -> list[dict[str, Any]]:
    """One entry per kind of failure. Attempts add up; so do microtasks on a --resume (earlier
    failures are kept, new ones are disjoint), while a rerun replaces them (it reran them all)."""
    kinds: dict[tuple[Any, Any], dict[str, Any]] = {}
    for source, entries in (("old", old), ("new", new)):
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            key = (entry.get("exitCode"), entry.get("reason"))
            mine = dict(entry)
            if source == "old" and mode == Mode.FAILED:
                mine.pop("microtasks", None)
            if key not in kinds:
                kinds[key] = mine
                continue
            seen = kinds[key]
            seen["attempts"] = int(seen.get("attempts") or 0) + int(entry.get("attempts") or 0)
            if "microtasks" in mine:
                seen["microtasks"] = int(seen.get("microtasks") or 0) + int(mine["microtasks"])
            if source == "new":
                # The newest sample is the one whose log is easiest to find.
                for field_name in ("sampleIndex", "message"):
                    if field_name in entry:
                        seen[field_name] = entry[field_name]
    ranked = sorted(kinds.values(), key=lambda e: -int(e.get("attempts") or 0))
    return ranked[:MAX_FAILURE_KINDS]
