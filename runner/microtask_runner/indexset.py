"""Index sets: compact, immutable sets of microtask indexes.

An index set is stored as sorted, disjoint, non-adjacent half-open ranges, so a
shard of a million consecutive microtasks is one pair of integers, and every set
operation costs O(number of ranges), never O(number of indexes). The text form
lists inclusive ranges and singletons: ``0-99,120,200-299``.

Two compressed forms exist for places with a size budget:

* ``to_compact``/``from_compact``: the text form, or ``z:`` + base64(zlib(text))
  when the text is long (Job annotations, environment variables);
* ``to_packed``/``from_packed``: ``d:`` + base64(zlib(varint gaps and lengths)),
  which shrinks regular patterns (every other index, every sixth ...) to a few
  bytes; the runner's report uses it.

Standard library only: the runner is installed into arbitrary user images.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import ClassVar

__all__ = ["MAX_INDEX", "IndexSet"]

#: Largest index an index set may hold. Indexes are int64 everywhere else
#: (Kubernetes, JSON consumers), and a bound keeps hostile input from making
#: gigantic integers.
MAX_INDEX = 2**63 - 2
_MAX_DIGITS = len(str(MAX_INDEX))

#: Texts longer than this are compressed by ``to_compact``.
COMPACT_PLAIN_MAX_CHARS = 1024

#: Decompressed size accepted by ``from_compact``/``from_packed``; a guard
#: against zip bombs (a real index set of this size would be absurd anyway).
_MAX_INFLATED_BYTES = 64 * 1024 * 1024

_Range = tuple[int, int]


def _show(part: str) -> str:
    """Quote a piece of bad input for an error message, cutting long junk short."""
    if len(part) > 40:
        part = part[:37] + "..."
    return repr(part)


def _parse_index(token: str, part: str) -> int:
    # int() alone would accept " 5", "+5", "5_000" and non-ASCII digits; an index
    # set written by anyone else than us with those is a mistake worth reporting.
    if not token:
        raise ValueError(f"bad part {_show(part)} in index set: missing number")
    if not (token.isascii() and token.isdigit()):
        if token.startswith("-") and token[1:].isascii() and token[1:].isdigit():
            raise ValueError(f"bad part {_show(part)} in index set: negative index")
        raise ValueError(f"bad part {_show(part)} in index set: not a number")
    if len(token) > _MAX_DIGITS or int(token) > MAX_INDEX:
        raise ValueError(f"bad part {_show(part)} in index set: index larger than {MAX_INDEX}")
    return int(token)


def _merge_sorted(ranges: Iterable[_Range]) -> tuple[_Range, ...]:
    """Coalesce ranges sorted by start into disjoint, non-adjacent ranges."""
    out: list[_Range] = []
    for start, end in ranges:
        if start >= end:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


def _format_range(start: int, end: int) -> str:
    return str(start) if end - start == 1 else f"{start}-{end - 1}"


def _encode_varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _inflate(payload: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError(f"bad {what} index set: invalid base64") from exc
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(raw, _MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise ValueError(f"bad {what} index set: invalid zlib data") from exc
    if inflater.unconsumed_tail:
        raise ValueError(f"bad {what} index set: larger than {_MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise ValueError(f"bad {what} index set: truncated zlib data")
    return data


class IndexSet:
    """An immutable set of non-negative integers stored as half-open ranges."""

    __slots__ = ("_hash", "_len", "_ranges", "_starts")

    EMPTY: ClassVar[IndexSet]

    _ranges: tuple[_Range, ...]
    _len: int
    _starts: tuple[int, ...] | None
    _hash: int | None

    def __init__(self, ranges: Iterable[_Range] = ()) -> None:
        """Build from half-open ranges in any order, possibly overlapping."""
        normalized = IndexSet.from_ranges(ranges)
        self._init(normalized._ranges, normalized._len)

    def _init(self, ranges: tuple[_Range, ...], length: int) -> None:
        object.__setattr__(self, "_ranges", ranges)
        object.__setattr__(self, "_len", length)
        object.__setattr__(self, "_starts", None)
        object.__setattr__(self, "_hash", None)

    @classmethod
    def _trusted(cls, ranges: tuple[_Range, ...]) -> IndexSet:
        """Wrap ranges that are already sorted, disjoint and non-adjacent (no checks)."""
        obj = cls.__new__(cls)
        obj._init(ranges, sum(end - start for start, end in ranges))
        return obj

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("IndexSet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("IndexSet is immutable")

    def __getstate__(self) -> tuple[_Range, ...]:
        return self._ranges

    def __setstate__(self, state: tuple[_Range, ...]) -> None:
        self._init(state, sum(end - start for start, end in state))

    # ----------------------------------------------------------- construction

    @classmethod
    def parse(cls, text: str) -> IndexSet:
        """Parse ``0-99,120,200-299`` (inclusive ranges); ``""`` is the empty set.

        Spaces around parts are allowed, parts may come in any order and overlap.
        Raises ValueError naming the bad part.
        """
        if not isinstance(text, str):
            raise ValueError(f"index set must be text, not {type(text).__name__}")
        if not text.strip():
            return cls.EMPTY
        ranges: list[_Range] = []
        in_order = True
        prev_end = -1
        for raw in text.split(","):
            part = raw.strip()
            if not part:
                raise ValueError(f"bad index set {_show(text)}: empty part between commas")
            lo, dash, hi = part.partition("-")
            if not dash:
                start = _parse_index(part, part)
                end = start + 1
            elif not lo:
                # "-5": a lone leading dash means a negative number.
                _parse_index(part, part)
                raise ValueError(f"bad range {_show(part)} in index set")  # pragma: no cover
            else:
                start = _parse_index(lo.strip(), part)
                last = _parse_index(hi.strip(), part)
                if last < start:
                    raise ValueError(f"bad range {_show(part)} in index set: end before start")
                end = last + 1
            if start <= prev_end:
                in_order = False
            prev_end = end
            ranges.append((start, end))
        if not in_order:
            ranges.sort()
        return cls._trusted(_merge_sorted(ranges))

    @classmethod
    def from_range(cls, start: int, end: int) -> IndexSet:
        """The indexes ``start <= i < end``."""
        if start < 0:
            raise ValueError(f"negative index {start} in range [{start}, {end})")
        if end < start:
            raise ValueError(f"bad range [{start}, {end}): end before start")
        if end - 1 > MAX_INDEX:
            raise ValueError(f"range [{start}, {end}) goes beyond index {MAX_INDEX}")
        if start == end:
            return cls.EMPTY
        return cls._trusted(((start, end),))

    @classmethod
    def from_ranges(cls, ranges: Iterable[_Range]) -> IndexSet:
        """Union of half-open ranges given in any order, possibly overlapping."""
        checked: list[_Range] = []
        in_order = True
        prev_start = -1
        for start, end in ranges:
            if start < 0:
                raise ValueError(f"negative index {start} in range [{start}, {end})")
            if end < start:
                raise ValueError(f"bad range [{start}, {end}): end before start")
            if end - 1 > MAX_INDEX:
                raise ValueError(f"range [{start}, {end}) goes beyond index {MAX_INDEX}")
            if start < prev_start:
                in_order = False
            prev_start = start
            checked.append((start, end))
        if not in_order:
            checked.sort()
        return cls._trusted(_merge_sorted(checked))

    @classmethod
    def from_indexes(cls, indexes: Iterable[int]) -> IndexSet:
        """The set of the given indexes (any order, duplicates allowed)."""
        ranges: list[_Range] = []
        for index in sorted(set(indexes)):
            if index < 0:
                raise ValueError(f"negative index {index}")
            if index > MAX_INDEX:
                raise ValueError(f"index {index} larger than {MAX_INDEX}")
            if ranges and ranges[-1][1] == index:
                ranges[-1] = (ranges[-1][0], index + 1)
            else:
                ranges.append((index, index + 1))
        return cls._trusted(tuple(ranges))

    # ------------------------------------------------------------ inspection

    @property
    def ranges(self) -> tuple[_Range, ...]:
        """Sorted, disjoint, non-adjacent half-open ranges."""
        return self._ranges

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for start, end in self._ranges:
            yield from range(start, end)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        starts = self._starts
        if starts is None:
            starts = tuple(start for start, _ in self._ranges)
            object.__setattr__(self, "_starts", starts)
        pos = bisect_right(starts, index) - 1
        return pos >= 0 and index < self._ranges[pos][1]

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexSet):
            return NotImplemented
        return self._ranges == other._ranges

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._ranges))
        assert self._hash is not None
        return self._hash

    def __repr__(self) -> str:
        return f"IndexSet({self.format_bounded(200)!r})"

    def __str__(self) -> str:
        return self.format()

    def first(self) -> int | None:
        """Smallest index, or None when empty."""
        return self._ranges[0][0] if self._ranges else None

    def last(self) -> int | None:
        """Largest index, or None when empty."""
        return self._ranges[-1][1] - 1 if self._ranges else None

    # ------------------------------------------------------------ operations

    def __or__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if not other._ranges:
            return self
        if not self._ranges:
            return other
        a, b = self._ranges, other._ranges
        merged: list[_Range] = []
        i = j = 0
        # Two-way merge by start, then one coalescing pass: O(len(a) + len(b)).
        while i < len(a) and j < len(b):
            if a[i][0] <= b[j][0]:
                merged.append(a[i])
                i += 1
            else:
                merged.append(b[j])
                j += 1
        merged.extend(a[i:])
        merged.extend(b[j:])
        return IndexSet._trusted(_merge_sorted(merged))

    def __and__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        a, b = self._ranges, other._ranges
        out: list[_Range] = []
        i = j = 0
        while i < len(a) and j < len(b):
            start = max(a[i][0], b[j][0])
            end = min(a[i][1], b[j][1])
            if start < end:
                out.append((start, end))
            # Advance whichever range finishes first; the other may still overlap more.
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IndexSet._trusted(tuple(out))

    def __sub__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if not other._ranges or not self._ranges:
            return self
        b = other._ranges
        out: list[_Range] = []
        j = 0
        for start, end in self._ranges:
            # Skip ranges of `other` that end before this one starts; they cannot
            # touch later ranges of self either (both lists are sorted).
            while j < len(b) and b[j][1] <= start:
                j += 1
            cur = start
            k = j
            while k < len(b) and b[k][0] < end:
                if b[k][0] > cur:
                    out.append((cur, b[k][0]))
                cur = max(cur, b[k][1])
                k += 1
            if cur < end:
                out.append((cur, end))
        return IndexSet._trusted(tuple(out))

    def issubset(self, other: IndexSet) -> bool:
        """True when every index of self is in other."""
        return not (self - other)

    def isdisjoint(self, other: IndexSet) -> bool:
        """True when self and other share no index."""
        return not (self & other)

    def __le__(self, other: IndexSet) -> bool:
        if not isinstance(other, IndexSet):
            return NotImplemented
        return self.issubset(other)

    def take(self, n: int) -> tuple[IndexSet, IndexSet]:
        """The first ``n`` indexes (in order) and the rest."""
        if n < 0:
            raise ValueError(f"cannot take a negative number of indexes ({n})")
        if n == 0:
            return IndexSet.EMPTY, self
        if n >= self._len:
            return self, IndexSet.EMPTY
        head: list[_Range] = []
        remaining = n
        for pos, (start, end) in enumerate(self._ranges):
            size = end - start
            if size < remaining:
                head.append((start, end))
                remaining -= size
                continue
            if size == remaining:
                head.append((start, end))
                tail = self._ranges[pos + 1 :]
            else:
                head.append((start, start + remaining))
                tail = ((start + remaining, end), *self._ranges[pos + 1 :])
            return IndexSet._trusted(tuple(head)), IndexSet._trusted(tail)
        raise AssertionError("unreachable: n < len(self)")  # pragma: no cover

    def split(self, size: int) -> list[IndexSet]:
        """Consecutive chunks of ``size`` indexes (the last one may be smaller)."""
        if size < 1:
            raise ValueError(f"chunk size must be at least 1, not {size}")
        chunks: list[IndexSet] = []
        current: list[_Range] = []
        room = size
        for start, end in self._ranges:
            cur = start
            while cur < end:
                stop = min(end, cur + room)
                current.append((cur, stop))
                room -= stop - cur
                cur = stop
                if room == 0:
                    chunks.append(IndexSet._trusted(tuple(current)))
                    current = []
                    room = size
        if current:
            chunks.append(IndexSet._trusted(tuple(current)))
        return chunks

    # ------------------------------------------------------------ text forms

    def format(self) -> str:
        """``0-99,120,200-299``; the empty set is ``""``."""
        return ",".join([_format_range(start, end) for start, end in self._ranges])

    def format_bounded(self, max_chars: int) -> str:
        """The text form, or a prefix of whole parts + ``,…(+N more)`` (N indexes).

        Never longer than ``max_chars``: when even the marker does not fit, it is
        shortened (down to nothing for ``max_chars <= 0``).
        """
        if max_chars <= 0:
            return ""
        parts: list[str] = []
        sizes: list[int] = []
        used = -1  # length of ",".join(parts): no comma before the first part
        shown = 0
        # Walk parts while they could still fit; stop early so a huge set costs
        # O(parts shown), not O(all parts).
        for start, end in self._ranges:
            text = _format_range(start, end)
            if used + 1 + len(text) > max_chars:
                break
            parts.append(text)
            sizes.append(end - start)
            used += 1 + len(text)
            shown += end - start
        else:
            return ",".join(parts)
        # Not everything fits: drop parts until the marker fits after them.
        while parts:
            marker = f"…(+{self._len - shown} more)"
            if used + 1 + len(marker) <= max_chars:
                return ",".join(parts) + "," + marker
            used -= 1 + len(parts.pop())
            shown -= sizes.pop()
        marker = f"…(+{self._len} more)"
        return marker if len(marker) <= max_chars else "…"

    def to_compact(self) -> str:
        """``format()`` when at most 1024 chars, else ``z:`` + base64(zlib(format()))."""
        text = self.format()
        if len(text) <= COMPACT_PLAIN_MAX_CHARS:
            return text
        packed = zlib.compress(text.encode("ascii"), 9)
        return "z:" + base64.b64encode(packed).decode("ascii")

    @classmethod
    def from_compact(cls, text: str) -> IndexSet:
        """Inverse of ``to_compact``; also accepts plain text and the packed form."""
        if not isinstance(text, str):
            raise ValueError(f"index set must be text, not {type(text).__name__}")
        stripped = text.strip()
        if stripped.startswith("z:"):
            data = _inflate(stripped[2:], "compressed")
            try:
                inner = data.decode("ascii")
            except UnicodeDecodeError as exc:
                raise ValueError("bad compressed index set: not ASCII text") from exc
            return cls.parse(inner)
        if stripped.startswith("d:"):
            return cls.from_packed(stripped)
        return cls.parse(stripped)

    def to_packed(self) -> str:
        """``d:`` + base64(zlib(varints)): gap-1 and length-1 of each range, in order.

        The first range's gap is its start. Gaps and lengths of regular patterns
        repeat, so zlib shrinks them to almost nothing.
        """
        out = bytearray()
        prev_end = 0
        for pos, (start, end) in enumerate(self._ranges):
            # Ranges are non-adjacent, so every gap after the first is >= 1.
            _encode_varint(start if pos == 0 else start - prev_end - 1, out)
            _encode_varint(end - start - 1, out)
            prev_end = end
        return "d:" + base64.b64encode(zlib.compress(bytes(out), 9)).decode("ascii")

    @classmethod
    def from_packed(cls, text: str) -> IndexSet:
        """Inverse of ``to_packed``. Raises ValueError on anything else."""
        if not isinstance(text, str) or not text.startswith("d:"):
            raise ValueError("bad packed index set: missing 'd:' prefix")
        data = _inflate(text[2:], "packed")
        values: list[int] = []
        value = shift = 0
        for byte in data:
            value |= (byte & 0x7F) << shift
            if byte & 0x80:
                shift += 7
                if shift > 70:
                    raise ValueError("bad packed index set: number too large")
            else:
                values.append(value)
                value = shift = 0
        if shift or len(values) % 2:
            raise ValueError("bad packed index set: truncated data")
        ranges: list[_Range] = []
        end = 0
        for pos in range(0, len(values), 2):
            start = values[pos] if pos == 0 else end + 1 + values[pos]
            end = start + values[pos + 1] + 1
            if end - 1 > MAX_INDEX:
                raise ValueError(f"bad packed index set: index larger than {MAX_INDEX}")
            ranges.append((start, end))
        return cls._trusted(tuple(ranges))


IndexSet.EMPTY = IndexSet._trusted(())
