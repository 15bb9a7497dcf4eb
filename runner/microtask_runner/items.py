"""Item sources: the value each microtask index works on (``MICROTASK_ITEMS``).

``MICROTASK_ITEMS`` is JSON, one of::

    {"range": {"start": S, "step": T}}           item of index i = S + i*T
    {"values": {"<i>": item, ...}}               this shard's items, inline
    {"file": "/path", "format": "lines"|"json"}  i-th line / i-th element of a JSON array

Absent, the item of an index is the index itself. Items are JSON values;
commands receive them as text (``item_text``). Every index of the shard is
checked up front (``ItemSource.check``), so a shard with a missing item fails
as a whole with a clear runner error instead of one microtask at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .indexset import IndexSet

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ItemSource", "ItemsError", "item_text", "load_items"]

#: Larger item files are refused: a ConfigMap holds at most 1 MiB, and reading
#: gigabytes into every pod by mistake is worse than a clear error.
MAX_ITEMS_FILE_BYTES = 256 * 1024 * 1024


class ItemsError(ValueError):
    """MICROTASK_ITEMS is malformed or has no item for an index."""


def item_text(item: Any) -> str:
    """An item as a command sees it: strings as-is, other JSON values as JSON."""
    if isinstance(item, str):
        return item
    import json  # imported once, then a dictionary look-up

    return json.dumps(item)


class ItemSource:
    """Maps a microtask index to its item."""

    description = "index"

    def get(self, index: int) -> Any:
        """The item of ``index`` (a JSON value)."""
        return index

    def check(self, indexes: IndexSet) -> None:
        """Raise ItemsError unless every index of ``indexes`` has an item."""

    def linear(self) -> tuple[int, int] | None:
        """``(start, step)`` when the item of ``i`` is ``start + i*step`` (the runner's loop
        then computes it in place of a call per microtask); None for other sources."""
        return (0, 1) if type(self) is ItemSource else None


class _RangeItems(ItemSource):
    def __init__(self, start: int, step: int) -> None:
        self.start = start
        self.step = step
        self.description = f"range(start={start}, step={step})"

    def get(self, index: int) -> Any:
        return self.start + index * self.step

    def linear(self) -> tuple[int, int] | None:
        return self.start, self.step


class _ListItems(ItemSource):
    """Items looked up by position in a sequence (file lines, a JSON array)."""

    def __init__(self, items: Sequence[Any], description: str) -> None:
        self.items = items
        self.description = description

    def get(self, index: int) -> Any:
        if index >= len(self.items):
            raise ItemsError(f"no item for index {index}: {self.description} has {len(self.items)}")
        return self.items[index]

    def check(self, indexes: IndexSet) -> None:
        last = indexes.last()
        if last is not None and last >= len(self.items):
            missing = indexes - IndexSet.from_range(0, len(self.items))
            raise ItemsError(
                f"no item for indexes {missing.format_bounded(80)}: "
                f"{self.description} has {len(self.items)} items"
            )


class _MappedItems(ItemSource):
    """Inline items keyed by index (the shard's own items only)."""

    def __init__(self, items: Mapping[int, Any]) -> None:
        self.items = items
        self.description = f"inline values ({len(items)} items)"

    def get(self, index: int) -> Any:
        try:
            return self.items[index]
        except KeyError:
            raise ItemsError(f"no item for index {index} in MICROTASK_ITEMS values") from None

    def check(self, indexes: IndexSet) -> None:
        # Linear in the shard size, but only once per shard.
        missing = [i for i in indexes if i not in self.items]
        if missing:
            shown = IndexSet.from_indexes(missing).format_bounded(80)
            raise ItemsError(f"no item for indexes {shown} in MICROTASK_ITEMS values")


def _int_setting(obj: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ItemsError(f"MICROTASK_ITEMS {where}.{key} must be an integer, not {value!r:.40}")
    return value


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ITEMS_FILE_BYTES + 1)
    except OSError as exc:
        raise ItemsError(f"cannot read items file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_ITEMS_FILE_BYTES:
        raise ItemsError(f"items file {path} is larger than {MAX_ITEMS_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ItemsError(f"items file {path} is not UTF-8 text ({exc.reason})") from None


def _file_source(spec: Mapping[str, Any]) -> ItemSource:
    path = spec["file"]
    if not isinstance(path, str) or not path:
        raise ItemsError("MICROTASK_ITEMS file must be a path")
    fmt = spec.get("format", "lines")
    if fmt == "lines":
        text = _read_file(path)
        # A final newline ends the last line; it does not start an empty item.
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        items = [line[:-1] if line.endswith("\r") else line for line in lines]
        # Blank lines (empty or whitespace only) are not items; the operator counts the same way.
        items = [item for item in items if item.strip()]
        return _ListItems(items, f"items file {path} (lines)")
    if fmt == "json":
        import json

        text = _read_file(path)
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ItemsError(f"items file {path} is not valid JSON: {exc}") from None
        if not isinstance(values, list):
            raise ItemsError(f"items file {path} must hold a JSON array")
        return _ListItems(values, f"items file {path} (JSON array)")
    raise ItemsError(f"MICROTASK_ITEMS format must be 'lines' or 'json', not {fmt!r:.40}")


def load_items(text: str | None) -> ItemSource:
    """Build the item source described by MICROTASK_ITEMS (None or blank: items are indexes)."""
    if text is None or not text.strip():
        return ItemSource()
    import json  # not at import time: the runner starts without it

    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ItemsError(f"MICROTASK_ITEMS is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ItemsError("MICROTASK_ITEMS must be a JSON object")
    kinds = [k for k in ("range", "values", "file") if k in spec]
    if len(kinds) != 1:
        raise ItemsError(
            "MICROTASK_ITEMS must have exactly one of 'range', 'values' or 'file', "
            f"found {sorted(spec)!r:.80}"
        )
    kind = kinds[0]
    if kind == "range":
        settings = spec["range"]
        if not isinstance(settings, dict):
            raise ItemsError("MICROTASK_ITEMS range must be an object with start and step")
        start = _int_setting(settings, "start", 0, "range")
        step = _int_setting(settings, "step", 1, "range")
        return _RangeItems(start, step)
    if kind == "values":
        values = spec["values"]
        if isinstance(values, list):
            # A whole list: the item of index i is its i-th element.
            return _ListItems(values, f"inline values ({len(values)} items)")
        if not isinstance(values, dict):
            raise ItemsError("MICROTASK_ITEMS values must be an object of index -> item")
        mapped: dict[int, Any] = {}
        for key, value in values.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 19):
                raise ItemsError(f"MICROTASK_ITEMS values key {key!r:.40} is not an index")
            mapped[int(key)] = value
        return _MappedItems(mapped)
    return _file_source(spec)
