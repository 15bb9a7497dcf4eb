"""Large index sets of a MicrotaskJob's status, kept in owned ConfigMaps: split and join.

The status must stay small (at most 64 KiB) whatever the job's size and failure pattern, yet a
restarted operator, a rerun and `microtask results` need the exact sets. So when the index-set
texts of a status (`succeededIndexes`, `failedIndexes`, `retryQueue[].indexes`,
`inFlight[].indexes`, `retiredShards`, `keptShards`, `source.indexes`) add up to more than an
inline limit (8 KiB), the long ones are *offloaded*:

* their exact value, packed (`IndexSet.to_packed`: every-other-index patterns shrink to a few
  bytes), goes into at most `PARTS_PER_SLOT` ConfigMaps of at most `PART_CHARS` characters each;
* in the status, each such field holds a readable summary instead, e.g.
  ``0-99,120,... (+199,998 more ranges)``, which no index-set parser accepts, so a reader that
  forgets to load the parts fails loudly instead of reading a wrong set;
* `status.indexSets` names the ConfigMaps with the digest of each one's data, the offloaded
  fields, and the digest of their exact values together.

The ConfigMaps come in two slots (`...-a<n>` and `...-b<n>`): a new content goes into the slot
the status does not reference, and only then does the status point at it. A crash between the
two leaves the status on the old slot, intact; a reader one status behind still finds its parts.
A reader further behind, or a part deleted or edited by someone, is caught by the digests:
`join` raises `IndexSetsError`, never returns a wrong set.

Everything here is pure (the ConfigMaps are read and written by the callers); `join` is the one
loader every reader uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from microtask_runner.indexset import IndexSet

from .. import labels

__all__ = [
    "DEFAULT_INLINE_CHARS",
    "INLINE_CHARS_ENV",
    "KEY",
    "MAX_CONFIG_MAPS",
    "IndexSetsError",
    "Packer",
    "Part",
    "Split",
    "apply_patch",
    "config_map",
    "index_texts",
    "join",
    "load",
    "merge_patch",
    "needed",
    "offloaded",
    "part_name",
    "split",
    "summary",
]

#: Index-set text a status keeps inline, in total, before the long sets are offloaded.
DEFAULT_INLINE_CHARS = 8 * 1024
#: The operator's environment variable that overrides `DEFAULT_INLINE_CHARS`.
INLINE_CHARS_ENV = "MICROTASK_STATUS_INLINE_CHARS"
#: Characters of data in one ConfigMap: well under its 1 MiB limit (keys and metadata count too).
PART_CHARS = 900_000
SLOTS = ("a", "b")
PARTS_PER_SLOT = 8
MAX_CONFIG_MAPS = PARTS_PER_SLOT * len(SLOTS)
#: Length of the readable prefix a summary shows.
SUMMARY_CHARS = 100
#: The key of `status` that references the parts.
KEY = "indexSets"
#: Annotation on each part: the digest of its data (what the status's reference names).
PART_DIGEST_ANNOTATION = "microtask.dev/part-digest"

_DIGEST_PREFIX = "sha256:"
_PIECE = re.compile(r"^(?P<field>.+)--(?P<piece>\d+)$")


class IndexSetsError(ValueError):
    """The exact index sets cannot be had: a part is missing, stale, or the sets too large."""


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _DIGEST_PREFIX + hashlib.sha256(text.encode("ascii")).hexdigest()


# --- which fields are index sets ----------------------------------------------------------------


def _lists(status: Mapping[str, Any], key: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for position, entry in enumerate(status.get(key) or []):
        if isinstance(entry, Mapping):
            yield position, entry


def index_texts(status: Mapping[str, Any]) -> dict[str, str]:
    """The index-set texts of a status by path (`failedIndexes`, `retryQueue.3.indexes`, ...).

    In the order of how rarely they change, so parts holding the stable ones are rewritten less.
    """
    found: dict[str, str] = {}

    def add(path: str, value: Any) -> None:
        if isinstance(value, str) and value:
            found[path] = value

    source = status.get("source")
    if isinstance(source, Mapping):
        add("source.indexes", source.get("indexes"))
    add("keptShards", status.get("keptShards"))
    add("failedIndexes", status.get("failedIndexes"))
    add("retiredShards", status.get("retiredShards"))
    add("succeededIndexes", status.get("succeededIndexes"))
    for position, entry in _lists(status, "retryQueue"):
        add(f"retryQueue.{position}.indexes", entry.get("indexes"))
    for position, entry in _lists(status, "inFlight"):
        add(f"inFlight.{position}.indexes", entry.get("indexes"))
    return found


def _replaced(status: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `status` with the fields at the paths of `values` set to them."""
    result = dict(status)
    for path, value in values.items():
        head, *rest = path.split(".")
        if not rest:
            result[head] = value
        elif head == "source":
            result["source"] = {**dict(result.get("source") or {}), rest[0]: value}
        else:
            position, key = int(rest[0]), rest[1]
            entries = [dict(e) for e in result.get(head) or []]
            if position >= len(entries):
                raise IndexSetsError(f"status.{KEY}.fields names {path}, which the status lacks")
            entries[position][key] = value
            result[head] = entries
    return result


def summary(indexes: IndexSet, max_chars: int = SUMMARY_CHARS) -> str:
    """A readable, bounded prefix of a set: ``0-99,120,... (+199,998 more ranges)``.

    It always ends with the marker, so it never parses as an index set.
    """
    shown: list[str] = []
    used = 0
    for start, end in indexes.ranges:
        text = str(start) if end - start == 1 else f"{start}-{end - 1}"
        if shown and used + len(text) + 1 > max_chars:
            break
        shown.append(text)
        used += len(text) + 1
    more = len(indexes.ranges) - len(shown)
    return ",".join([*shown, f"... (+{more:,} more ranges)"])


def _packed_summary(text: str, max_chars: int = SUMMARY_CHARS) -> str:
    """`summary` of a packed set (`IndexSet.to_packed`), reading only the ranges it shows."""
    inflater = zlib.decompressobj()
    try:
        raw = base64.b64decode(text[2:].encode("ascii"), validate=True)
        data = inflater.decompress(raw, _MAX_INFLATED)
    except (ValueError, zlib.error) as error:
        raise ValueError(f"bad packed index set: {error}") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("bad packed index set: truncated, or too large")
    numbers = len(data.translate(None, _CONTINUED))  # the bytes that end a varint
    if numbers % 2 or (data and data[-1] & 0x80):
        raise ValueError("bad packed index set: truncated data")
    shown: list[str] = []
    used = value = shift = 0
    values: list[int] = []
    end = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        values.append(value)
        value = shift = 0
        if len(values) < 2:
            continue
        gap, length = values
        values = []
        start = gap if not shown else end + 1 + gap
        end = start + length + 1
        part = str(start) if length == 0 else f"{start}-{end - 1}"
        if shown and used + len(part) + 1 > max_chars:
            break
        shown.append(part)
        used += len(part) + 1
    more = numbers // 2 - len(shown)
    return ",".join([*shown, f"... (+{more:,} more ranges)"])


_CONTINUED = bytes(range(0x80, 0x100))
_MAX_INFLATED = 64 * 1024 * 1024  # as IndexSet.from_packed accepts


# --- splitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One ConfigMap's worth of offloaded data."""

    name: str
    data: dict[str, str]
    digest: str


@dataclass(frozen=True)
class Split:
    """A status as it is written (bounded), and the parts that must exist before it is."""

    status: dict[str, Any]
    parts: tuple[Part, ...] = ()


def part_name(job: str, uid: str, slot: str, number: int) -> str:
    """`<job>-indexes-<uid8>-<slot><n>`: the uid's start tells a re-created job's parts apart."""
    return f"{job}-indexes-{uid[:8].lower()}-{slot}{number}"


class Packer:
    """`IndexSet` texts to their packed form and summary, remembering the latest of each field.

    At millions of microtasks parsing a set costs a second; most fields do not change between
    two status writes, so each field's last conversion is kept.
    """

    def __init__(self) -> None:
        self._memo: dict[str, tuple[str, str, str]] = {}  # path -> (text, packed, summary)

    def convert(self, path: str, text: str) -> tuple[str, str]:
        """(packed, summary) of the index set `text` at `path`."""
        known = self._memo.get(path)
        if known is not None and known[0] == text:
            return known[1], known[2]
        if text.startswith("d:"):
            # Packed already: only the first ranges are decoded, whatever the set's size.
            packed, short = text, _packed_summary(text)
        else:
            indexes = IndexSet.from_compact(text)
            packed, short = indexes.to_packed(), summary(indexes)
        self._memo[path] = (text, packed, short)
        return packed, short


def split(
    status: Mapping[str, Any],
    *,
    job: str,
    uid: str,
    written: Mapping[str, Any] | None = None,
    inline_chars: int = DEFAULT_INLINE_CHARS,
    packer: Packer | None = None,
) -> Split:
    """`status` (exact) as it is written, and the parts it references.

    `written` is `status.indexSets` as last written (or None): unchanged content keeps its
    reference; new content goes to the other slot. Raises IndexSetsError when the sets do not
    fit in the parts.
    """
    status = {k: v for k, v in status.items() if k != KEY}
    texts = index_texts(status)
    if sum(len(t) for t in texts.values()) <= inline_chars:
        return Split(status)
    packer = packer or Packer()
    exact: dict[str, str] = {}
    shown: dict[str, str] = {}
    for path, text in texts.items():
        if len(text) <= SUMMARY_CHARS:
            continue  # as short as its summary: it stays inline, exact
        try:
            exact[path], shown[path] = packer.convert(path, text)
        except ValueError as error:
            raise IndexSetsError(f"status.{path} is not an index set: {error}") from None
    digest = _digest(exact)
    reference: dict[str, Any] = {"digest": digest, "fields": list(exact)}
    written = written or {}
    if written.get("digest") == digest and list(written.get("fields") or []) == list(exact):
        # The same content as written: the same parts, nothing to write.
        reference["configMaps"] = [dict(c) for c in written.get("configMaps") or []]
        return Split({**_replaced(status, shown), KEY: reference})
    slot = SLOTS[1] if _slot(written) == SLOTS[0] else SLOTS[0]
    parts = _pack(exact, job, uid, slot)
    reference["configMaps"] = [{"name": p.name, "digest": p.digest} for p in parts]
    return Split({**_replaced(status, shown), KEY: reference}, parts)


def _slot(reference: Mapping[str, Any]) -> str | None:
    for entry in reference.get("configMaps") or []:
        name = str((entry or {}).get("name") or "")
        slot = name.rpartition("-")[2][:1]
        if slot in SLOTS:
            return slot
    return None


def _pack(exact: Mapping[str, str], job: str, uid: str, slot: str) -> tuple[Part, ...]:
    """The values in order, cut into pieces that fill one ConfigMap after another."""
    datas: list[dict[str, str]] = [{}]
    room = PART_CHARS
    for path, value in exact.items():
        piece = 0
        offset = 0
        while offset < len(value) or piece == 0:
            if room <= 0:
                datas.append({})
                room = PART_CHARS
            chunk = value[offset : offset + room]
            datas[-1][f"{path}--{piece}"] = chunk
            room -= len(chunk)
            offset += len(chunk)
            piece += 1
    if len(datas) > PARTS_PER_SLOT:
        total = sum(len(v) for v in exact.values())
        raise IndexSetsError(
            f"the status's index sets take {total:,} characters even packed, more than the "
            f"{PARTS_PER_SLOT} ConfigMaps of {PART_CHARS:,} characters that may hold them"
        )
    return tuple(
        Part(part_name(job, uid, slot, n), data, _digest(data)) for n, data in enumerate(datas)
    )


def config_map(part: Part, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ConfigMap of a part, owned by the MicrotaskJob `meta` describes."""
    name, uid = str(meta["name"]), str(meta["uid"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": part.name,
            "namespace": meta.get("namespace"),
            "labels": {
                labels.JOB: name,
                labels.JOB_UID: uid,
                labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
            },
            "annotations": {PART_DIGEST_ANNOTATION: part.digest},
            "ownerReferences": [
                {
                    "apiVersion": "microtask.dev/v1alpha1",
                    "kind": "MicrotaskJob",
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": dict(part.data),
    }


# --- joining ------------------------------------------------------------------------------------


def offloaded(status: Mapping[str, Any] | None) -> bool:
    """Does `status` keep index sets in ConfigMaps (so it must go through `join`)?"""
    return bool(status) and isinstance((status or {}).get(KEY), Mapping)


def needed(status: Mapping[str, Any] | None) -> list[str]:
    """The ConfigMaps `join` needs for `status` (none when nothing is offloaded)."""
    if not offloaded(status):
        return []
    assert status is not None
    return [str((c or {}).get("name")) for c in status[KEY].get("configMaps") or []]


def join(status: Mapping[str, Any], data: Mapping[str, Mapping[str, str] | None]) -> dict[str, Any]:
    """`status` with its exact index sets, from the ConfigMaps' data by name (None: missing).

    The result holds no `indexSets`: it is a status as if nothing had been offloaded. Raises
    IndexSetsError, saying which ConfigMap and why, when a part is missing or not the one the
    status names.
    """
    if not offloaded(status):
        return dict(status)
    reference = status[KEY]
    names = needed(status)
    pieces: dict[str, dict[int, str]] = {}
    for entry, name in zip(reference.get("configMaps") or [], names, strict=True):
        found = data.get(name)
        if found is None:
            raise IndexSetsError(
                f"ConfigMap {name}, which holds part of the status's index sets, is missing"
            )
        if _digest(dict(found)) != (entry or {}).get("digest"):
            raise IndexSetsError(
                f"ConfigMap {name} does not hold the index sets the status names (it was "
                "rewritten since, or edited): read the MicrotaskJob again"
            )
        for key, value in found.items():
            match = _PIECE.match(key)
            if match is None:
                raise IndexSetsError(f"ConfigMap {name} holds an unknown key {key!r}")
            pieces.setdefault(match["field"], {})[int(match["piece"])] = value
    exact = {
        path: "".join(parts[n] for n in range(len(parts)))
        for path, parts in pieces.items()
        if sorted(parts) == list(range(len(parts)))
    }
    fields = list(reference.get("fields") or [])
    if sorted(exact) != sorted(fields) or _digest(exact) != reference.get("digest"):
        raise IndexSetsError(
            f"the ConfigMaps {', '.join(names)} do not add up to the index sets the status "
            "names (status.indexSets.digest)"
        )
    joined = _replaced({k: v for k, v in status.items() if k != KEY}, exact)
    return joined


def load(
    status: Mapping[str, Any], read: Callable[[str], Mapping[str, str] | None]
) -> dict[str, Any]:
    """`join` with the ConfigMaps read one by one by `read(name)` (None: not found)."""
    return join(status, {name: read(name) for name in needed(status)})


# --- status patches -----------------------------------------------------------------------------


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: what changed, removals null.

    Objects are compared key by key (a changed counter inside `durations` sends that counter);
    lists are replaced whole, as merge patches do.
    """
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before is _MISSING:
            patch[key] = _plain(value)
        elif isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif _plain(value) != _plain(before):
            patch[key] = _plain(value)
    return patch


_MISSING = object()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return [_plain(v) for v in value]
    return value


def apply_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`target` with the merge patch applied (as the API server does it)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            before = result.get(key)
            result[key] = apply_patch(before if isinstance(before, Mapping) else {}, value)
        else:
            result[key] = value
    return result
