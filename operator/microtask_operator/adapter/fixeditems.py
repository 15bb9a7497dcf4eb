"""A job's items, fixed when it starts: a digest in `status.items`, and a snapshot of a ConfigMap.

Once a MicrotaskJob runs, the index of a microtask must keep meaning the same item, or the status
reports as done items that were never processed. The API server refuses edits of `spec.items` (a
CRD transition rule); what it cannot see is guarded here:

* a `configMapRef` source is copied at the start into an immutable ConfigMap the job owns (the
  snapshot), which the shards mount: later edits of the user's ConfigMap are ignored, and a
  condition says so;
* `status.items.digest` records the source as started; a `spec.items` that no longer matches it
  (a CRD installed without its rules) holds new shards back until it is restored, with a condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.digest import items_digest
from ..api.items import ItemsError
from ..api.model import MicrotaskJob
from ..builder import snapshot_config_map, snapshot_name
from ..core import conditions
from .kube import KubeApi

# The user's ConfigMap is compared with the snapshot at most this often (one GET), and at the end.
CONFIG_MAP_CHECK_SECONDS = 30.0

Flag = tuple[bool, str, str]  # a condition: (holds, reason, message)


@dataclass(frozen=True)
class FixedItems:
    """The item source as the job started with it."""

    digest: str
    snapshot: str | None = None  # the snapshot ConfigMap the shards mount (configMapRef)
    data: Mapping[str, str] | None = None  # the snapshot's data (to count the items)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"digest": self.digest}
        if self.snapshot is not None:
            status["configMap"] = self.snapshot
        return status


@dataclass(frozen=True)
class Verdict:
    fixed: FixedItems
    flag: Flag | None  # the SpecChangeIgnored condition, when it has something to say
    launch: bool  # False: spec.items no longer matches what runs; no new shards


class ItemsGuard:
    """Resolves, once, and then guards the item source of one MicrotaskJob."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.fixed: FixedItems | None = None
        self.checked_at: float | None = None
        self.source_flag: Flag | None = None

    async def check(
        self,
        job: MicrotaskJob,
        raw_items: Mapping[str, Any],
        meta: Mapping[str, Any],
        recorded: Mapping[str, Any] | None,
        now: float,
        *,
        finishing: bool = False,
    ) -> Verdict:
        """The fixed items, creating the snapshot on the first call of a job that starts.

        Raises ItemsError when the source cannot be read (the caller holds the job with a
        condition) and ApiError when the API fails (the reconcile is tried again).
        """
        if self.fixed is None:
            self.fixed = await self._resolve(job, raw_items, meta, recorded)
        fixed = self.fixed
        ref = job.spec.items.config_map_ref
        text = (fixed.data or {}).get(ref.key) if ref is not None else None
        if items_digest(raw_items, text) != fixed.digest:
            return Verdict(
                fixed,
                (
                    True,
                    conditions.REASON_ITEMS_CHANGED,
                    "spec.items changed after the job started: its microtasks' indexes would "
                    "mean other items; no new shards until spec.items is as it was "
                    f"({fixed.digest[:19]}…), or create a new MicrotaskJob",
                ),
                launch=False,
            )
        if ref is not None and fixed.snapshot is not None:
            due = self.checked_at is None or now - self.checked_at >= CONFIG_MAP_CHECK_SECONDS
            if due or finishing:
                self.checked_at = now
                self.source_flag = await self._compare_source(raw_items, ref.name, ref.key)
        return Verdict(fixed, self.source_flag, launch=True)

    async def _resolve(
        self,
        job: MicrotaskJob,
        raw_items: Mapping[str, Any],
        meta: Mapping[str, Any],
        recorded: Mapping[str, Any] | None,
    ) -> FixedItems:
        ref = job.spec.items.config_map_ref
        digest = (recorded or {}).get("digest")
        snapshot = (recorded or {}).get("configMap")
        if ref is None:
            return FixedItems(str(digest) if digest else items_digest(raw_items, None))
        if digest and snapshot:
            data = await self.api.get_config_map(self.namespace, str(snapshot))
            if data is not None:
                return FixedItems(str(digest), str(snapshot), data)
            # The snapshot was deleted by someone: the source serves if it is unchanged.
            text = await self._source_text(ref.name, ref.key)
            if items_digest(raw_items, text) != digest:
                raise ItemsError(
                    f"the job's copy of its items (ConfigMap {snapshot}) was deleted and "
                    f"ConfigMap {ref.name!r} changed since the job started: its items are lost; "
                    "create a new MicrotaskJob"
                )
        else:
            text = await self._source_text(ref.name, ref.key)
        uid = str(meta.get("uid") or "")
        name = snapshot_name(self.name, uid)
        digest = items_digest(raw_items, text)
        body = snapshot_config_map(meta, ref.key, text, digest)
        if not await self.api.create_config_map(self.namespace, body):
            # Made by an earlier attempt of this job (same uid in the name): it is the one.
            existing = await self.api.get_config_map(self.namespace, name)
            if existing is None or ref.key not in existing:
                raise ItemsError(f"ConfigMap {name} exists but holds no key {ref.key!r}")
            text = existing[ref.key]
            digest = items_digest(raw_items, text)
        return FixedItems(digest, name, {ref.key: text})

    async def _source_text(self, name: str, key: str) -> str:
        data = await self.api.get_config_map(self.namespace, name)
        if data is None:
            raise ItemsError(f"ConfigMap {name!r} not found in namespace {self.namespace}")
        if key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise ItemsError(f"ConfigMap {name!r} has no key {key!r} (keys: {keys})")
        return data[key]

    async def _compare_source(self, raw_items: Mapping[str, Any], name: str, key: str) -> Flag:
        assert self.fixed is not None
        data = await self.api.get_config_map(self.namespace, name)
        text = None if data is None else data.get(key)
        if text is not None and items_digest(raw_items, text) == self.fixed.digest:
            return (False, conditions.REASON_RESOLVED, "")
        what = "was deleted" if text is None else "changed"
        return (
            True,
            conditions.REASON_ITEMS_CHANGED,
            f"ConfigMap {name!r} {what} after the job started; ignored: the job runs the items "
            f"it started with (its copy, ConfigMap {self.fixed.snapshot})",
        )
