"""Item sources: how many microtasks a job has, and the MICROTASK_ITEMS a shard's runner gets.

A rerun (`items.fromJob`) has no items of its own: it works on its source job's items
(`status.source.items`, resolved by `api.sources`), and its microtasks keep their indexes there, so
the functions below take those items as `source`.

The counting rules match the runner's (`microtask_runner.items`): `lines` splits on "\n", a final
newline ends the last line rather than starting an empty item, a trailing "\r" is dropped and
blank lines (empty or whitespace only) are skipped; `json` is a JSON array.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from microtask_runner.indexset import IndexSet

from microtask_operator.api import limits
from microtask_operator.api.model import (
    AUTO,
    Items,
    MicrotaskJob,
    MicrotaskJobSpec,
    item_json_sizes,
)

__all__ = [
    "ItemsError",
    "config_map_items_file",
    "count_items",
    "effective_items",
    "largest_shard",
    "parse_config_map_items",
    "runner_items",
    "total_microtasks",
]


class ItemsError(ValueError):
    """The items of a job cannot be determined (missing ConfigMap key, bad JSON, too many)."""


def parse_config_map_items(text: str, fmt: Literal["lines", "json"]) -> list[Any]:
    """The items held by one ConfigMap value, exactly as the runner will see them."""
    if fmt == "lines":
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        items = [line[:-1] if line.endswith("\r") else line for line in lines]
        # Blank lines (empty or whitespace only) are not items: a stray empty line must not
        # become a microtask. The runner counts the same way.
        return [item for item in items if item.strip()]
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ItemsError(f"is not valid JSON ({exc})") from None
    if not isinstance(values, list):
        raise ItemsError(
            f"must hold a JSON array (format json), not a JSON {type(values).__name__}"
        )
    return values


def _spec(job: MicrotaskJob | MicrotaskJobSpec) -> MicrotaskJobSpec:
    return job.spec if isinstance(job, MicrotaskJob) else job


def effective_items(job: MicrotaskJob | MicrotaskJobSpec, source: Items | None = None) -> Items:
    """The items the job's microtasks work on: its own, or for a rerun its source's (`source`).

    Raises ItemsError for a rerun whose source is not given (it is known once resolved).
    """
    items = _spec(job).items
    if items.from_job is None:
        return items
    if source is None or source.from_job is not None:
        raise ItemsError(
            f"the items come from MicrotaskJob {items.from_job.name!r} (items.fromJob); "
            "they are known once that job is resolved"
        )
    return source


def largest_shard(job: MicrotaskJob | MicrotaskJobSpec, source: Items | None = None) -> int:
    """The most microtasks one shard may hold: `microtasksPerShard`, or for auto the API's limit,
    lowered for inline items until the largest of them fit one environment string of the worker.

    A rerun's inline items are its source's (`source`); unknown yet, the limit stands.
    """
    spec = _spec(job)
    if spec.microtasks_per_shard != AUTO:
        return int(spec.microtasks_per_shard)
    largest = limits.MAX_MICROTASKS_PER_SHARD
    items = spec.items if spec.items.from_job is None else source
    if items is None or items.list_ is None:
        return largest
    room = limits.MAX_SHARD_ITEMS_BYTES - 16
    fitting = 0
    for size in sorted(item_json_sizes(items.list_), reverse=True)[:largest]:
        room -= size
        if room < 0:
            break
        fitting += 1
    return max(1, fitting)


def total_microtasks(
    job: MicrotaskJob | MicrotaskJobSpec, config_map_data: Mapping[str, str] | None = None
) -> int:
    """Number of microtasks of the job.

    `config_map_data` is the `data` of the ConfigMap named by `items.configMapRef` (ignored for
    other sources). Raises ItemsError when it is needed and missing or unusable, and for a rerun
    (`items.fromJob`), whose microtasks are the indexes its source left unfinished.
    """
    items = _spec(job).items
    if items.from_job is not None:
        raise ItemsError(
            f"a rerun of MicrotaskJob {items.from_job.name!r} runs what that job did not finish; "
            "the number is known once that job has finished"
        )
    return count_items(items, config_map_data)


def count_items(items: Items, config_map_data: Mapping[str, str] | None = None) -> int:
    """Number of items of a range, list or configMapRef source (see `total_microtasks`)."""
    if items.range_ is not None:
        return items.range_.count
    if items.list_ is not None:
        return len(items.list_)
    ref = items.config_map_ref
    if ref is None:
        raise ItemsError("items.fromJob holds no items of its own")
    where = f"ConfigMap {ref.name!r}"
    if config_map_data is None:
        raise ItemsError(f"{where} is needed to count the items (configMapRef)")
    text = config_map_data.get(ref.key)
    if text is None:
        keys = ", ".join(sorted(config_map_data)[:10]) or "none"
        raise ItemsError(f"{where} has no key {ref.key!r} in its data (keys: {keys})")
    if not isinstance(text, str):
        raise ItemsError(f"{where} key {ref.key!r} is not text")
    try:
        total = len(parse_config_map_items(text, ref.format))
    except ItemsError as exc:
        raise ItemsError(f"{where} key {ref.key!r} {exc}") from None
    if total > limits.MAX_TOTAL_MICROTASKS:
        raise ItemsError(
            f"{where} key {ref.key!r} holds {total:,} items; at most "
            f"{limits.MAX_TOTAL_MICROTASKS:,} microtasks are allowed in one MicrotaskJob"
        )
    return total


def config_map_items_file(
    job: MicrotaskJob | MicrotaskJobSpec, mount_dir: str, source: Items | None = None
) -> str:
    """Path of the items file when the ConfigMap is mounted at `mount_dir`."""
    ref = effective_items(job, source).config_map_ref
    if ref is None:
        raise ItemsError("the job's items do not come from a ConfigMap")
    return f"{mount_dir.rstrip('/')}/{ref.key}"


def runner_items(
    job: MicrotaskJob | MicrotaskJobSpec,
    indexes: IndexSet,
    items_file: str | None = None,
    *,
    source: Items | None = None,
) -> dict[str, Any]:
    """The MICROTASK_ITEMS object (before JSON encoding) for a shard running `indexes`.

    Inline lists carry only this shard's items; a ConfigMap source needs `items_file`, the path
    where the ConfigMap key is readable by the runner. A rerun needs its source's items
    (`source`); its indexes are the source's, so a list rerun gets the same values.
    """
    items = effective_items(job, source)
    if items.range_ is not None:
        return {"range": {"start": items.range_.start, "step": items.range_.step}}
    if items.list_ is not None:
        values = items.list_
        last = indexes.last()
        if last is not None and (last >= len(values) or (indexes.first() or 0) < 0):
            raise ItemsError(f"indexes {indexes.format_bounded(60)} are outside the inline list")
        return {"values": {str(i): values[i] for i in indexes}}
    ref = items.config_map_ref
    assert ref is not None
    if items_file is None:
        raise ItemsError("the path of the mounted ConfigMap key is needed (configMapRef)")
    return {"file": items_file, "format": ref.format}
