"""What a rerun takes from the job it reruns, and where a job's records go.

Pure functions over plain objects (a MicrotaskJob as the API server returns it), so every rule is
a table test:

* the result store's root of a job (`status.output.url`): `<s3 url>/<root job>` or
  `volume://<volume | claim:NAME>/<path>/<root job>`. The root job of a rerun is the job it
  reruns, whose store it reuses as is: a job and its reruns write their records into one store,
  and `microtask results` sees one merged job (the records carry their job's name);
* that root as a shard's worker reaches it (MICROTASK_OUTPUT_URL): the URL for S3, a folder under
  `OUTPUT_MOUNT_PATH` for a volume;
* `items.fromJob` resolved against its source: the source must have finished; the rerun works on
  the source's items (the source's own source when it is itself a rerun, so chains work) and on
  the indexes the source did not finish, which keep their numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from microtask_runner.indexset import IndexSet
from pydantic import ValidationError

from microtask_operator.api import indexsets, limits
from microtask_operator.api.items import ItemsError, count_items, largest_shard
from microtask_operator.api.model import (
    OUTPUT_MOUNT_PATH,
    Items,
    MicrotaskJob,
    Output,
    SourceStatus,
    VolumeOutput,
)

__all__ = [
    "CLAIM_PREFIX",
    "ConfigMapNeeded",
    "Rerun",
    "SourceProblem",
    "SourceReason",
    "pod_store_root",
    "rerun_store_url",
    "resolve_rerun",
    "store_url",
]

VOLUME_SCHEME = "volume://"
S3_SCHEME = "s3://"
#: A PersistentVolumeClaim in a volume store's URL: `volume://claim:NAME/...`.
CLAIM_PREFIX = "claim:"
_FINISHED = ("Succeeded", "Failed")


class SourceReason(StrEnum):
    """Condition reasons of a rerun whose source cannot be used yet (or ever)."""

    NOT_FOUND = "SourceNotFound"
    NOT_FINISHED = "SourceNotFinished"
    UNUSABLE = "SourceUnusable"
    #: The event of a rerun that starts (its message: `Rerun.summary`).
    RESOLVED = "SourceResolved"


# --- the result store -------------------------------------------------------------------------


def _volume_id(volume: VolumeOutput) -> str:
    if volume.name is not None:
        return volume.name
    return CLAIM_PREFIX + str(volume.claim_name)


def _join(*parts: str) -> str:
    return "/".join(p for part in parts for p in part.split("/") if p)


def _bucket(url: str) -> str:
    return url[len(S3_SCHEME) :].split("/", 1)[0]


def store_url(output: Output, root_job: str) -> str:
    """The store root of `root_job`'s records through `output`, as `status.output.url` says it."""
    if output.s3 is not None:
        return f"{output.s3.url.rstrip('/')}/{root_job}"
    assert output.volume is not None  # the model holds exactly one
    volume = output.volume
    return VOLUME_SCHEME + _join(_volume_id(volume), volume.path, root_job)


def pod_store_root(output: Output, url: str) -> str | None:
    """MICROTASK_OUTPUT_URL of a worker whose store is `url`, reached through `output`.

    None when `output` cannot reach that store: another kind of store, another bucket, another
    volume or claim.
    """
    if output.s3 is not None:
        if url.startswith(S3_SCHEME) and _bucket(url) == _bucket(output.s3.url):
            return url
        return None
    assert output.volume is not None
    prefix = VOLUME_SCHEME + _volume_id(output.volume) + "/"
    if not url.startswith(prefix):
        return None
    return f"{OUTPUT_MOUNT_PATH}/{_join(url[len(prefix) :])}"


def rerun_store_url(output: Output | None, source_url: str | None, source_job: str) -> str | None:
    """The store root of a rerun of `source_job` (whose store root was `source_url`).

    The source's store as is when the rerun's `output` reaches it; otherwise the rerun's own
    store, under the source's root job name; None without `output` (no records).
    """
    if output is None:
        return None
    if source_url and pod_store_root(output, source_url) is not None:
        return source_url
    root = source_url.rstrip("/").rsplit("/", 1)[-1] if source_url else source_job
    return store_url(output, root or source_job)


# --- items.fromJob ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rerun:
    """`items.fromJob` resolved: fixed from then on (`status.source`)."""

    job: str
    items: Items
    indexes: IndexSet
    #: The source's store root (`status.output.url`), which the rerun reuses.
    source_output: str | None = None

    def to_status(self) -> dict[str, Any]:
        """`status.source`."""
        return {
            "job": self.job,
            "items": self.items.model_dump(by_alias=True, exclude_none=True),
            "indexes": self.indexes.to_compact(),
        }

    @classmethod
    def from_status(cls, source: Mapping[str, Any]) -> Rerun:
        """From `status.source` (ValueError when it is not one)."""
        try:
            parsed = SourceStatus.model_validate(source)
            indexes = IndexSet.from_compact(parsed.indexes) if parsed.indexes else IndexSet()
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"status.source is unusable: {exc}") from None
        return cls(parsed.job, parsed.items, indexes)

    def summary(self) -> str:
        if not self.indexes:
            return f"nothing to rerun: every microtask of {self.job} succeeded"
        return f"rerunning {len(self.indexes)} microtasks of {self.job}"


@dataclass(frozen=True)
class SourceProblem:
    """Why a rerun cannot start; `final` when waiting would not help (the spec must change)."""

    reason: SourceReason
    message: str
    final: bool = False


@dataclass(frozen=True)
class ConfigMapNeeded:
    """The source's items come from this ConfigMap: resolve again with its data."""

    name: str


def resolve_rerun(
    job: MicrotaskJob,
    source: Mapping[str, Any] | None,
    config_map_data: Mapping[str, str] | None = None,
) -> Rerun | SourceProblem | ConfigMapNeeded:
    """`job`'s `items.fromJob` against `source`, the MicrotaskJob it names (None: not found).

    Items: the source's `status.source.items` when it is itself a rerun, else its `spec.items`.
    Indexes: the source's universe (`status.source.indexes`, or 0..total-1) minus its
    `status.succeededIndexes`. A ConfigMap source is read (`config_map_data`) to check that the
    indexes still name items. A status whose index sets are offloaded (`api.indexsets`) must be
    joined with them first.
    """
    ref = job.spec.items.from_job
    assert ref is not None, "resolve_rerun is for items.fromJob"
    name = ref.name
    if name == job.name:
        return SourceProblem(SourceReason.UNUSABLE, "a MicrotaskJob cannot rerun itself", True)
    if source is None:
        return SourceProblem(
            SourceReason.NOT_FOUND, f"MicrotaskJob {name} (items.fromJob) not found"
        )
    status = source.get("status") or {}
    phase = status.get("phase")
    if phase not in _FINISHED:
        return SourceProblem(
            SourceReason.NOT_FINISHED,
            f"waiting for MicrotaskJob {name} to finish (phase {phase or 'unknown'})",
        )
    try:
        return _rerun(job, name, source, status, config_map_data)
    except (ItemsError, ValueError) as exc:
        return SourceProblem(SourceReason.UNUSABLE, f"MicrotaskJob {name}: {exc}")


def _rerun(
    job: MicrotaskJob,
    name: str,
    source: Mapping[str, Any],
    status: Mapping[str, Any],
    config_map_data: Mapping[str, str] | None,
) -> Rerun | ConfigMapNeeded:
    if indexsets.offloaded(status):
        # The caller reads them (indexsets.join): the summaries in their place are not sets.
        raise ValueError(
            "its index sets are kept in ConfigMaps (status.indexSets) and were not read"
        )
    universe: IndexSet | None = None
    if status.get("source") is not None:
        earlier = Rerun.from_status(status["source"])
        items, universe = earlier.items, earlier.indexes
    else:
        try:
            items = Items.model_validate((source.get("spec") or {}).get("items"))
        except ValidationError as exc:
            raise ValueError(f"its spec.items are invalid ({exc.error_count()} problems)") from None
        if items.from_job is not None:
            raise ValueError("it is a rerun that never started (no status.source)")
    if items.config_map_ref is not None and config_map_data is None:
        return ConfigMapNeeded(items.config_map_ref.name)
    count = count_items(items, config_map_data)
    if universe is None:
        total = status.get("total")
        if total is not None and (not isinstance(total, int) or total < 0):
            raise ValueError(f"status.total {total!r} is not a count")
        # A job that never started (invalid, a failed dependency) has no total: all of it.
        universe = IndexSet.from_range(0, count if total is None else total)
    succeeded = str(status.get("succeededIndexes") or "")
    indexes = universe - (IndexSet.from_compact(succeeded) if succeeded else IndexSet())
    last = indexes.last()
    if last is not None and last >= count:
        raise ItemsError(
            f"its items now hold {count} entries; microtask {last} has none (was the ConfigMap "
            "edited?)"
        )
    _check_inline_size(job, items, indexes)
    output = (status.get("output") or {}).get("url")
    return Rerun(name, items, indexes, str(output) if output else None)


def _check_inline_size(job: MicrotaskJob, items: Items, indexes: IndexSet) -> None:
    """An inline list's items of one shard must fit the worker's environment (as for lists)."""
    if items.list_ is None or not indexes:
        return
    # Each item costs `"<index>":<json>,` in MICROTASK_ITEMS (as item_json_sizes counts it).
    sizes = sorted(
        (
            len(json.dumps(items.list_[i], separators=(",", ":"), ensure_ascii=False).encode())
            + len(str(i))
            + 4
            for i in indexes
        ),
        reverse=True,
    )
    worst = sum(sizes[: largest_shard(job, items)]) + 16
    if worst > limits.MAX_SHARD_ITEMS_BYTES:
        raise ItemsError(
            f"the inline items of one shard of the rerun can take {worst // 1024} KiB, more than "
            f"the {limits.MAX_SHARD_ITEMS_BYTES // 1024} KiB a pod's environment can carry: "
            "lower microtasksPerShard"
        )
