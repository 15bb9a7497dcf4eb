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

A large set is kept in chunks of at most a few hundred ranges once it is edited
by a much smaller one (``|``, ``-``, ``&``, ``in``, ``take``): only the chunks the
small set touches are rebuilt, so adding a shard's outcome to a set of 200,000
ranges costs O(shard + number of chunks), not O(ranges). Chunks also cache their
text and compressed forms, so ``format``/``to_compact`` of a set that differs
from an earlier one in a few places re-formats only those places.

Standard library only: the runner is installed into arbitrary user images.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
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

#: Ranges per chunk of a chunked set: small enough that rebuilding one is cheap,
#: large enough that the list of chunks stays short (800 for 200,000 ranges).
_CHUNK = 256
#: One operand is "small" when it has this many times fewer ranges than the
#: other: the operation then visits only the chunks the small one touches.
_SMALL_FACTOR = 8
#: Sets with more ranges than this are compacted chunk by chunk (each chunk's
#: deflate output cached); smaller ones as one zlib stream.
_CHUNKED_COMPACT_MIN_RANGES = 4 * _CHUNK

_start_of = itemgetter(0)
_end_of = itemgetter(1)

# A zlib stream made of independently deflated pieces: the header and two empty
# stored blocks (12 bytes, so every later piece starts on a base64 boundary),
# then each chunk's text deflated and flushed (Z_FULL_FLUSH) and padded with
# empty stored blocks to a multiple of 3 bytes, then a final empty stored block
# and the Adler-32 of the whole text (9 bytes). Any zlib reader inflates it.
_EMPTY_STORED = b"\x00\x00\x00\xff\xff"
_ZLIB_HEAD_B64 = base64.b64encode(b"\x78\xda" + _EMPTY_STORED * 2).decode("ascii")
_FINAL_STORED = b"\x01\x00\x00\xff\xff"
_ADLER_BASE = 65521


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


def _size(ranges: Sequence[_Range]) -> int:
    """Indexes in the ranges (summed in C: this runs on every new set)."""
    ends: int = sum(map(_end_of, ranges))
    starts: int = sum(map(_start_of, ranges))
    return ends - starts


def _subtract(a: Sequence[_Range], b: Sequence[_Range]) -> tuple[_Range, ...]:
    """Ranges of `a` minus those of `b` (both sorted and disjoint): O(len(a) + len(b))."""
    out: list[_Range] = []
    j = 0
    for start, end in a:
        # Skip ranges of `b` that end before this one starts; they cannot touch
        # later ranges of `a` either (both lists are sorted).
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
    return tuple(out)


def _union(a: Sequence[_Range], b: Sequence[_Range]) -> tuple[_Range, ...]:
    """Ranges of `a` or `b` (both sorted and disjoint): O(len(a) + len(b))."""
    merged: list[_Range] = []
    i = j = 0
    # Two-way merge by start, then one coalescing pass.
    while i < len(a) and j < len(b):
        if a[i][0] <= b[j][0]:
            merged.append(a[i])
            i += 1
        else:
            merged.append(b[j])
            j += 1
    merged.extend(a[i:])
    merged.extend(b[j:])
    return _merge_sorted(merged)


def _intersect(a: Sequence[_Range], b: Sequence[_Range]) -> list[_Range]:
    """Ranges in both `a` and `b` (both sorted and disjoint): O(len(a) + len(b))."""
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
    return out


def _meeting(ranges: Sequence[_Range], start: int, end: int) -> Sequence[_Range]:
    """The ranges (sorted, disjoint) that share an index with [start, end), by bisection."""
    i = bisect_right(ranges, start, key=_end_of)
    j = bisect_left(ranges, end, lo=i, key=_start_of)
    return ranges[i:j]


def _meet(a: Sequence[_Range], b: Sequence[_Range]) -> list[_Range]:
    """`_intersect`, bisecting the longer list for each range of the much shorter one."""
    few, many = (a, b) if len(a) <= len(b) else (b, a)
    if len(few) * _SMALL_FACTOR >= len(many):
        return _intersect(few, many)
    out: list[_Range] = []
    for start, end in few:
        for lo, hi in _meeting(many, start, end):
            out.append((max(lo, start), min(hi, end)))
    return out


def _cut(a: Sequence[_Range], b: Sequence[_Range]) -> tuple[_Range, ...]:
    """`a` minus `b`, by bisection when one of them is much shorter than the other."""
    if len(b) * _SMALL_FACTOR < len(a):
        return _punch(a, b)
    if len(a) * _SMALL_FACTOR < len(b):
        out: list[_Range] = []
        for start, end in a:
            out.extend(_subtract(((start, end),), _meeting(b, start, end)))
        return tuple(out)
    return _subtract(a, b)


def _punch(ranges: Sequence[_Range], holes: Sequence[_Range]) -> tuple[_Range, ...]:
    """`ranges` minus a few `holes`: each found by bisection and cut out of a copy."""
    out = list(ranges)
    for start, end in holes:
        i = bisect_right(out, start, key=_end_of)
        j = bisect_left(out, end, lo=i, key=_start_of)
        if i == j:
            continue
        pieces = []
        if out[i][0] < start:
            pieces.append((out[i][0], start))
        if out[j - 1][1] > end:
            pieces.append((end, out[j - 1][1]))
        out[i:j] = pieces
    return tuple(out)


def _patch(ranges: Sequence[_Range], extra: Sequence[_Range]) -> tuple[_Range, ...]:
    """`ranges` or `extra`: each extra range merged in by bisection when they are few."""
    if len(extra) * _SMALL_FACTOR >= len(ranges):
        return _union(ranges, extra)
    out = list(ranges)
    for start, end in extra:
        # The ranges it overlaps or touches: from the first ending at or after its start to
        # the last starting at or before its end.
        i = bisect_left(out, start, key=_end_of)
        j = bisect_right(out, end, lo=i, key=_start_of)
        if i < j:
            out[i:j] = [(min(start, out[i][0]), max(end, out[j - 1][1]))]
        else:
            out.insert(i, (start, end))
    return tuple(out)


def _adler_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of A + B from those of A and B (zlib's adler32_combine)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (
        sum2 + ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    ) % _ADLER_BASE
    return (sum2 << 16) | sum1


class _Chunk:
    """Consecutive ranges of a chunked set, with their text forms cached once computed.

    Chunks are shared between a set and the sets derived from it, so an edit leaves the
    caches of every chunk it does not touch in place.
    """

    __slots__ = ("deflated", "group", "length", "ranges", "text")

    def __init__(self, ranges: tuple[_Range, ...]) -> None:
        self.ranges = ranges
        self.length = _size(ranges)
        self.text: str | None = None
        # Keyed by "preceded by a comma": (base64 of the deflated piece, Adler-32, length).
        self.deflated: dict[bool, tuple[str, int, int]] = {}
        # When this chunk ends a group (see `_compute_compact`): the chunks before it in the
        # group, whether the group leads the set, and the group's joined piece.
        self.group: tuple[tuple[_Chunk, ...], bool, tuple[str, int, int]] | None = None

    def ends_group(self) -> bool:
        """About one chunk in 16 ends a group, chosen by its first index: an edit elsewhere
        changes no group boundary, so the groups it does not touch keep their cached pieces."""
        return ((self.ranges[0][0] * 2654435761) & 0xFFFFFFFF) >> 28 == 0

    def format(self) -> str:
        if self.text is None:
            self.text = ",".join([_format_range(start, end) for start, end in self.ranges])
        return self.text

    def piece(self, lead: bool) -> tuple[str, int, int]:
        """This chunk's text (after a comma when `lead`) as a self-contained deflate piece."""
        got = self.deflated.get(lead)
        if got is None:
            raw = (("," if lead else "") + self.format()).encode("ascii")
            deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
            data = deflater.compress(raw) + deflater.flush(zlib.Z_FULL_FLUSH)
            # Empty stored blocks (5 bytes each) pad the piece to a multiple of 3 bytes, so
            # its base64 text can be cached and joined with the others.
            data += _EMPTY_STORED * (len(data) % 3)
            got = (base64.b64encode(data).decode("ascii"), zlib.adler32(raw), len(raw))
            self.deflated[lead] = got
        return got


def _chunks_of(ranges: Sequence[_Range]) -> list[_Chunk]:
    """Ranges cut into chunks; a run up to twice the chunk size stays one chunk."""
    if not ranges:
        return []
    if len(ranges) <= 2 * _CHUNK:
        return [_Chunk(tuple(ranges))]
    return [_Chunk(tuple(ranges[i : i + _CHUNK])) for i in range(0, len(ranges), _CHUNK)]


def _is_small(small: int, big: int) -> bool:
    """Whether an operation should visit only the chunks the small operand touches."""
    return big > 2 * _CHUNK and small * _SMALL_FACTOR < big


class IndexSet:
    """An immutable set of non-negative integers stored as half-open ranges."""

    __slots__ = (
        "_chunks",
        "_compact",
        "_count",
        "_firsts",
        "_hash",
        "_len",
        "_ranges",
        "_starts",
    )

    EMPTY: ClassVar[IndexSet]

    # The ranges are kept flat, in chunks, or both: each form is derived from the other
    # when first needed, and kept.
    _ranges: tuple[_Range, ...] | None
    _chunks: tuple[_Chunk, ...] | None
    _firsts: tuple[int, ...] | None  # the first index of each chunk
    _count: int  # number of ranges
    _len: int
    _starts: tuple[int, ...] | None
    _hash: int | None
    _compact: str | None

    def __init__(self, ranges: Iterable[_Range] = ()) -> None:
        """Build from half-open ranges in any order, possibly overlapping."""
        normalized = IndexSet.from_ranges(ranges)
        self._init(normalized._flat(), normalized._len)

    def _init(self, ranges: tuple[_Range, ...], length: int) -> None:
        object.__setattr__(self, "_ranges", ranges)
        object.__setattr__(self, "_chunks", None)
        object.__setattr__(self, "_firsts", None)
        object.__setattr__(self, "_count", len(ranges))
        object.__setattr__(self, "_len", length)
        object.__setattr__(self, "_starts", None)
        object.__setattr__(self, "_hash", None)
        object.__setattr__(self, "_compact", None)

    @classmethod
    def _trusted(cls, ranges: tuple[_Range, ...]) -> IndexSet:
        """Wrap ranges that are already sorted, disjoint and non-adjacent (no checks)."""
        obj = cls.__new__(cls)
        obj._init(ranges, _size(ranges))
        return obj

    @classmethod
    def _from_chunks(
        cls,
        chunks: Sequence[_Chunk],
        length: int,
        firsts: Sequence[int] | None = None,
        count: int | None = None,
    ) -> IndexSet:
        """Wrap chunks whose ranges, in order, are sorted, disjoint and non-adjacent.

        `firsts` (each chunk's first index) and `count` (ranges) when the caller knows them.
        """
        if not chunks:
            return cls.EMPTY
        obj = cls.__new__(cls)
        obj._init((), length)
        object.__setattr__(obj, "_ranges", None)
        object.__setattr__(obj, "_chunks", tuple(chunks))
        if firsts is None:
            firsts = [c.ranges[0][0] for c in chunks]
        object.__setattr__(obj, "_firsts", tuple(firsts))
        if count is None:
            count = sum([len(c.ranges) for c in chunks])
        object.__setattr__(obj, "_count", count)
        return obj

    def _flat(self) -> tuple[_Range, ...]:
        ranges = self._ranges
        if ranges is None:
            assert self._chunks is not None
            ranges = tuple(chain.from_iterable(c.ranges for c in self._chunks))
            object.__setattr__(self, "_ranges", ranges)
        return ranges

    def _get_chunks(self) -> tuple[_Chunk, ...]:
        chunks = self._chunks
        if chunks is None:
            chunks = tuple(_chunks_of(self._flat()))
            object.__setattr__(self, "_chunks", chunks)
            object.__setattr__(self, "_firsts", tuple([c.ranges[0][0] for c in chunks]))
        return chunks

    def _iter_ranges(self) -> Iterator[_Range]:
        if self._ranges is not None:
            return iter(self._ranges)
        assert self._chunks is not None
        return chain.from_iterable(c.ranges for c in self._chunks)

    def _overlapping(self, start: int, end: int) -> list[_Range]:
        """The ranges that share an index with [start, end), found by bisection."""
        out: list[_Range] = []
        if self._ranges is not None:
            ranges = self._ranges
            i = bisect_right(ranges, start, key=_end_of)
            while i < len(ranges) and ranges[i][0] < end:
                out.append(ranges[i])
                i += 1
            return out
        chunks = self._get_chunks()
        assert self._firsts is not None
        c = max(bisect_right(self._firsts, start) - 1, 0)
        while c < len(chunks):
            ranges = chunks[c].ranges
            if ranges[0][0] >= end:
                break
            i = bisect_right(ranges, start, key=_end_of)
            while i < len(ranges) and ranges[i][0] < end:
                out.append(ranges[i])
                i += 1
            if i < len(ranges):
                break
            c += 1
        return out

    def _groups(self, others: Sequence[_Range]) -> list[tuple[int, int, Sequence[_Range]]]:
        """Sorted ranges grouped by the chunks of self they may meet or touch.

        Each group: (first chunk, last chunk, its ranges); groups share no chunk. The walk
        bisects once per chunk met, not once per range.
        """
        self._get_chunks()
        firsts = self._firsts
        assert firsts is not None
        groups: list[tuple[int, int, Sequence[_Range]]] = []
        k = 0
        while k < len(others):
            lo = max(bisect_right(firsts, others[k][0]) - 1, 0)
            # The ranges starting in chunk `lo`; the last one ends furthest.
            if lo + 1 < len(firsts):
                m = max(bisect_left(others, firsts[lo + 1], lo=k, key=_start_of), k + 1)
            else:
                m = len(others)
            hi = max(bisect_right(firsts, others[m - 1][1]) - 1, 0)
            if groups and lo <= groups[-1][1]:
                first, last, members = groups[-1]
                groups[-1] = (first, max(last, hi), (*members, *others[k:m]))
            else:
                groups.append((lo, hi, others[k:m]))
            k = m
        return groups

    def _group_ranges(self, lo: int, hi: int) -> Sequence[_Range]:
        chunks = self._get_chunks()
        if lo == hi:
            return chunks[lo].ranges
        return tuple(chain.from_iterable(c.ranges for c in chunks[lo : hi + 1]))

    def _edit(
        self,
        others: Sequence[_Range],
        op: Callable[[Sequence[_Range], Sequence[_Range]], tuple[_Range, ...]],
    ) -> IndexSet:
        """`op` (union or difference) with a small set's ranges, rebuilding touched chunks only.

        The small set's ranges are grouped by the chunks they fall in (the chunk holding their
        start to the one holding their end, so a range adjacent to theirs is in the group); a
        result can only touch its own group's chunks, never a neighbour's, since the first
        index of the next chunk lies beyond every range of the group.
        """
        chunks = self._get_chunks()
        firsts = self._firsts
        assert firsts is not None
        groups = self._groups(others)
        out: list[_Chunk] = []
        out_firsts: list[int] = []
        length = self._len
        count = self._count
        done = 0
        changed = False
        for lo, hi, members in groups:
            out.extend(chunks[done:lo])
            out_firsts.extend(firsts[done:lo])
            old = chunks[lo : hi + 1]
            ranges = tuple(chain.from_iterable(c.ranges for c in old))
            new = op(ranges, members)
            if new == ranges:
                out.extend(old)
                out_firsts.extend(firsts[lo : hi + 1])
            else:
                changed = True
                fresh = _chunks_of(new)
                out.extend(fresh)
                out_firsts.extend([c.ranges[0][0] for c in fresh])
                length += sum([c.length for c in fresh]) - sum([c.length for c in old])
                count += len(new) - len(ranges)
            done = hi + 1
        if not changed:
            return self
        out.extend(chunks[done:])
        out_firsts.extend(firsts[done:])
        return IndexSet._from_chunks(out, length, out_firsts, count)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("IndexSet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("IndexSet is immutable")

    def __getstate__(self) -> tuple[_Range, ...]:
        return self._flat()

    def __setstate__(self, state: tuple[_Range, ...]) -> None:
        self._init(state, _size(state))

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
        return self._flat()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for start, end in self._iter_ranges():
            yield from range(start, end)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        if self._ranges is None:
            return bool(self._overlapping(index, index + 1))
        starts = self._starts
        if starts is None:
            starts = tuple(start for start, _ in self._ranges)
            object.__setattr__(self, "_starts", starts)
        pos = bisect_right(starts, index) - 1
        return pos >= 0 and index < self._ranges[pos][1]

    def __bool__(self) -> bool:
        return self._len > 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if self is other:
            return True
        if self._len != other._len or self._count != other._count:
            return False
        return self._flat() == other._flat()

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._flat()))
        assert self._hash is not None
        return self._hash

    def __repr__(self) -> str:
        return f"IndexSet({self.format_bounded(200)!r})"

    def __str__(self) -> str:
        return self.format()

    def first(self) -> int | None:
        """Smallest index, or None when empty."""
        if not self._len:
            return None
        if self._ranges is not None:
            return self._ranges[0][0]
        assert self._chunks is not None
        return self._chunks[0].ranges[0][0]

    def last(self) -> int | None:
        """Largest index, or None when empty."""
        if not self._len:
            return None
        if self._ranges is not None:
            return self._ranges[-1][1] - 1
        assert self._chunks is not None
        return self._chunks[-1].ranges[-1][1] - 1

    def iter_from(self, index: int) -> Iterator[_Range]:
        """The ranges, in order, from the one holding `index` or the first after it.

        Finding the start costs a bisection, each range after it O(1).
        """
        if self._ranges is not None:
            ranges = self._ranges
            for i in range(bisect_right(ranges, index, key=_end_of), len(ranges)):
                yield ranges[i]
            return
        chunks = self._get_chunks()
        assert self._firsts is not None
        c = max(bisect_right(self._firsts, index) - 1, 0)
        if c < len(chunks):
            ranges = chunks[c].ranges
            yield from ranges[bisect_right(ranges, index, key=_end_of) :]
        for chunk in chunks[c + 1 :]:
            yield from chunk.ranges

    def next_absent(self, index: int) -> int:
        """The smallest index >= `index` that is not in the set."""
        found = self._overlapping(index, index + 1)
        return found[0][1] if found else index

    def next_present(self, index: int) -> int | None:
        """The smallest index >= `index` that is in the set, or None."""
        if self._ranges is not None:
            ranges = self._ranges
            i = bisect_right(ranges, index, key=_end_of)
            return None if i == len(ranges) else max(ranges[i][0], index)
        chunks = self._get_chunks()
        assert self._firsts is not None
        c = max(bisect_right(self._firsts, index) - 1, 0)
        while c < len(chunks):
            ranges = chunks[c].ranges
            i = bisect_right(ranges, index, key=_end_of)
            if i < len(ranges):
                return max(ranges[i][0], index)
            c += 1
        return None

    # ------------------------------------------------------------ operations

    def __or__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if not other._len:
            return self
        if not self._len:
            return other
        big, small = (self, other) if self._count >= other._count else (other, self)
        if _is_small(small._count, big._count):
            return big._edit(small._flat(), _patch)
        return IndexSet._trusted(_union(self._flat(), other._flat()))

    def __and__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if not self._len or not other._len:
            return IndexSet.EMPTY
        big, small = (self, other) if self._count >= other._count else (other, self)
        if _is_small(small._count, big._count):
            # The small ranges meet only the big ones of the chunks they fall in.
            found: list[_Range] = []
            for lo, hi, members in big._groups(small._flat()):
                found.extend(_meet(members, big._group_ranges(lo, hi)))
            return IndexSet._trusted(tuple(found))
        return IndexSet._trusted(tuple(_intersect(self._flat(), other._flat())))

    def __sub__(self, other: IndexSet) -> IndexSet:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if not other._len or not self._len:
            return self
        if _is_small(other._count, self._count):
            return self._edit(other._flat(), _cut)
        if _is_small(self._count, other._count):
            # Only the ranges of `other` that meet ours matter; bisection finds them.
            out: list[_Range] = []
            for lo, hi, members in other._groups(self._flat()):
                out.extend(_cut(members, other._group_ranges(lo, hi)))
            if len(out) == self._count and tuple(out) == self._ranges:
                return self
            return IndexSet._trusted(tuple(out))
        return IndexSet._trusted(_subtract(self._flat(), other._flat()))

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
        if self._ranges is None or self._count > 2 * _CHUNK:
            return self._take_chunks(n)
        head: list[_Range] = []
        remaining = n
        ranges = self._ranges
        for pos, (start, end) in enumerate(ranges):
            size = end - start
            if size < remaining:
                head.append((start, end))
                remaining -= size
                continue
            if size == remaining:
                head.append((start, end))
                tail = ranges[pos + 1 :]
            else:
                head.append((start, start + remaining))
                tail = ((start + remaining, end), *ranges[pos + 1 :])
            return IndexSet._trusted(tuple(head)), IndexSet._trusted(tail)
        raise AssertionError("unreachable: n < len(self)")  # pragma: no cover

    def _take_chunks(self, n: int) -> tuple[IndexSet, IndexSet]:
        """`take` that walks whole chunks: O(chunks before the n-th index + n's ranges)."""
        chunks = self._get_chunks()
        head: list[_Range] = []
        remaining = n
        for pos, chunk in enumerate(chunks):
            if chunk.length < remaining:
                head.extend(chunk.ranges)
                remaining -= chunk.length
                continue
            firsts = self._firsts
            assert firsts is not None
            if chunk.length == remaining:
                head.extend(chunk.ranges)
                tail = list(chunks[pos + 1 :])
                tail_firsts = list(firsts[pos + 1 :])
                count = self._count - len(head)
            else:
                inner, rest = IndexSet._trusted(chunk.ranges).take(remaining)
                head.extend(inner._flat())
                tail = [_Chunk(rest._flat()), *chunks[pos + 1 :]]
                tail_firsts = [tail[0].ranges[0][0], *firsts[pos + 1 :]]
                # A range cut in two is in both halves.
                count = self._count - len(head) + (inner._count + rest._count - len(chunk.ranges))
            left = IndexSet._from_chunks(tail, self._len - n, tail_firsts, count)
            return IndexSet._trusted(tuple(head)), left
        raise AssertionError("unreachable: n < len(self)")  # pragma: no cover

    def split(self, size: int) -> list[IndexSet]:
        """Consecutive chunks of ``size`` indexes (the last one may be smaller)."""
        if size < 1:
            raise ValueError(f"chunk size must be at least 1, not {size}")
        chunks: list[IndexSet] = []
        current: list[_Range] = []
        room = size
        for start, end in self._iter_ranges():
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
        if self._chunks is not None:
            return ",".join([c.format() for c in self._chunks])
        return ",".join([_format_range(start, end) for start, end in self._flat()])

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
        for start, end in self._iter_ranges():
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
        """``format()`` when at most 1024 chars, else ``z:`` + base64(zlib(format())).

        Computed once per set. A large set's zlib stream is made of one deflated piece per
        chunk, each cached on its chunk, so a set that differs from an earlier one in a few
        chunks costs only those (plus joining the pieces).
        """
        cached = self._compact
        if cached is None:
            cached = self._compute_compact()
            object.__setattr__(self, "_compact", cached)
        return cached

    def _compute_compact(self) -> str:
        if self._count < _CHUNKED_COMPACT_MIN_RANGES:
            text = self.format()
            if len(text) <= COMPACT_PLAIN_MAX_CHARS:
                return text
            packed = zlib.compress(text.encode("ascii"), 9)
            return "z:" + base64.b64encode(packed).decode("ascii")
        # So many ranges are always longer than 1024 chars: compressed.
        parts = [_ZLIB_HEAD_B64]
        adler = 1  # Adler-32 of nothing
        chunks = self._get_chunks()
        start = 0
        for pos, chunk in enumerate(chunks):
            if not chunk.ends_group() and pos + 1 < len(chunks):
                continue
            before = chunks[start:pos]
            leads = start == 0
            cached = chunk.group
            if cached is not None and cached[1] == leads and cached[0] == before:
                text, piece_adler, length = cached[2]
            else:
                texts = []
                piece_adler, length = 1, 0
                for k, member in enumerate(chunks[start : pos + 1]):
                    t, a, n = member.piece(not (leads and k == 0))
                    texts.append(t)
                    piece_adler = _adler_combine(piece_adler, a, n)
                    length += n
                text = "".join(texts)
                chunk.group = (before, leads, (text, piece_adler, length))
            parts.append(text)
            adler = _adler_combine(adler, piece_adler, length)
            start = pos + 1
        tail = _FINAL_STORED + adler.to_bytes(4, "big")
        parts.append(base64.b64encode(tail).decode("ascii"))
        return "z:" + "".join(parts)

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
        for pos, (start, end) in enumerate(self._flat()):
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
