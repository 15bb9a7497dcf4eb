"""One MicrotaskJob's status writes: large index sets to ConfigMaps first, then a merge patch.

The reconcile works with the exact status; what the API server holds is its bounded form
(`api.indexsets.split`). The writer keeps the status as last written, so each write sends only
the top-level keys that changed (a JSON merge patch, removed keys as null), and the digest of
each part ConfigMap as last written or read, so a part is rewritten only when its data changes.
Parts are written before the status that references them: a status never names a part that is
not there yet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ..api import indexsets
from .kube import KubeApi

log = logging.getLogger(__name__)


def inline_chars_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The inline limit of index-set text (`MICROTASK_STATUS_INLINE_CHARS`, else 8 KiB)."""
    environ = os.environ if environ is None else environ
    text = environ.get(indexsets.INLINE_CHARS_ENV, "").strip()
    if not text:
        return indexsets.DEFAULT_INLINE_CHARS
    if not text.isdigit():
        log.warning(
            "%s=%r is not a count; using %d",
            indexsets.INLINE_CHARS_ENV,
            text,
            indexsets.DEFAULT_INLINE_CHARS,
        )
        return indexsets.DEFAULT_INLINE_CHARS
    return int(text)


class StatusWriter:
    """Reads and writes one MicrotaskJob's status with its index sets offloaded when large."""

    def __init__(
        self, api: KubeApi, namespace: str, name: str, *, inline_chars: int | None = None
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.inline_chars = inline_chars_from_env() if inline_chars is None else inline_chars
        self.packer = indexsets.Packer()
        #: The status as the API server holds it after our last write (or as first read).
        self.written: dict[str, Any] | None = None
        #: Part ConfigMap name -> digest of the data it holds, as far as we know.
        self.parts: dict[str, str] = {}
        # A status patch failed: the API server may or may not have applied it, so which slot
        # its status references is unknown until it is read again.
        self.uncertain = False

    async def load(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """The exact status of `status` as read (the parts read and checked).

        Raises IndexSetsError when a part is missing or stale, ApiError when the API fails.
        """
        if self.written is None:
            self.written = dict(status)
        data: dict[str, dict[str, str] | None] = {}
        for name in indexsets.needed(status):
            data[name] = await self.api.get_config_map(self.namespace, name)
        exact = indexsets.join(status, data)
        if indexsets.offloaded(status):
            for entry in status[indexsets.KEY].get("configMaps") or []:
                self.parts[str(entry["name"])] = str(entry["digest"])
        return exact

    async def write(
        self, meta: Mapping[str, Any], status: Mapping[str, Any], *, full: bool = False
    ) -> bool:
        """Make the API server's status `status` (exact); False when nothing had to be sent.

        `full` sends every key, not only the changed ones: the status was reset by someone.
        """
        if self.uncertain:
            self.written = await self.api.get_status(self.namespace, self.name) or {}
            self.uncertain = False
        written = self.written or {}
        reference = written.get(indexsets.KEY)
        done = indexsets.split(
            status,
            job=self.name,
            uid=str(meta.get("uid") or ""),
            written=reference if isinstance(reference, Mapping) else None,
            inline_chars=self.inline_chars,
            packer=self.packer,
        )
        for part in done.parts:
            if self.parts.get(part.name) == part.digest:
                continue
            # Forgotten first: if the write fails half-way, the part's content is unknown.
            self.parts.pop(part.name, None)
            body = indexsets.config_map(part, {**meta, "namespace": self.namespace})
            await self.api.put_config_map(self.namespace, body)
            self.parts[part.name] = part.digest
        patch = indexsets.merge_patch({} if full else written, done.status)
        if full:
            patch.update({key: None for key in written if key not in done.status})
        if not patch:
            self.written = done.status
            return False
        try:
            await self.api.patch_status(self.namespace, self.name, patch)
        except BaseException:
            self.uncertain = True
            raise
        self.written = done.status
        return True
