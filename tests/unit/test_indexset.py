"""Index sets: table tests and property tests against Python sets."""

from __future__ import annotations

import contextlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from microtask_runner.indexset import MAX_INDEX, IndexSet

# Small values make overlaps, adjacency and gaps frequent; a few large ones
# catch arithmetic that only works near zero.
small_ints = st.integers(min_value=0, max_value=300)
index_lists = st.lists(st.one_of(small_ints, st.integers(0, 10**12)), max_size=60)


@st.composite
def index_sets(draw: st.DrawFn) -> tuple[IndexSet, set[int]]:
    """An IndexSet and the Python set it should equal, built from ranges and points."""
    ranges = draw(st.lists(st.tuples(small_ints, st.integers(0, 40)), max_size=12))
    points = draw(st.lists(small_ints, max_size=12))
    half_open = [(start, start + size) for start, size in ranges]
    expected = {i for start, end in half_open for i in range(start, end)} | set(points)
    built = IndexSet.from_ranges(half_open) | IndexSet.from_indexes(points)
    return built, expected


def assert_normalized(s: IndexSet) -> None:
    prev_end = -1
    for start, end in s.ranges:
        assert start < end
        assert start > prev_end  # disjoint and non-adjacent
        prev_end = end
    assert len(s) == sum(end - start for start, end in s.ranges)


# ------------------------------------------------------------------ tables


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("", ()),
        ("   ", ()),
        ("0", ((0, 1),)),
        ("0-99", ((0, 100),)),
        ("0-99,120,200-299", ((0, 100), (120, 121), (200, 300))),
        (" 1 , 3 - 4 ", ((1, 2), (3, 5))),
        ("5-5", ((5, 6),)),
        ("3,2,1", ((1, 4),)),  # any order, adjacent parts merge
        ("0-10,5-20", ((0, 21),)),  # overlap merges
        ("10-19,0-9", ((0, 20),)),
        (str(MAX_INDEX), ((MAX_INDEX, MAX_INDEX + 1),)),
    ],
)
def test_parse(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    assert IndexSet.parse(text).ranges == ranges


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-3", "bad range '5-3' in index set: end before start"),
        ("1,5-3,7", "bad range '5-3' in index set: end before start"),
        ("-5", "'-5' in index set: negative index"),
        ("0--5", "'0--5' in index set: negative index"),
        ("abc", "'abc' in index set: not a number"),
        ("1,x-3", "'x-3' in index set: not a number"),
        ("1,,2", "empty part"),
        ("1,", "empty part"),
        ("5-", "'5-' in index set: missing number"),
        ("-", "'-' in index set: not a number"),
        ("1.5", "not a number"),
        ("+5", "not a number"),
        ("5_000", "not a number"),
        ("١٢", "not a number"),  # non-ASCII digits that int() would accept
        ("9" * 5000, "index larger than"),
        (str(MAX_INDEX + 1), "index larger than"),
        ("1-" + "9" * 30, "index larger than"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        IndexSet.parse(text)


def test_parse_error_cuts_long_junk_short() -> None:
    with pytest.raises(ValueError) as info:
        IndexSet.parse("1," + "x" * 10_000)
    assert len(str(info.value)) < 120


def test_parse_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="must be text"):
        IndexSet.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ranges", "text"),
    [
        ((), ""),
        (((0, 1),), "0"),
        (((0, 100), (120, 121), (200, 300)), "0-99,120,200-299"),
        (((7, 9),), "7-8"),
    ],
)
def test_format(ranges: tuple[tuple[int, int], ...], text: str) -> None:
    s = IndexSet.from_ranges(ranges)
    assert s.format() == text
    assert str(s) == text


def test_constructors() -> None:
    assert IndexSet.from_range(3, 3) == IndexSet.EMPTY
    assert IndexSet.from_range(0, 5).ranges == ((0, 5),)
    assert IndexSet() == IndexSet.EMPTY
    assert IndexSet([(5, 7), (0, 2), (2, 3)]).ranges == ((0, 3), (5, 7))
    assert IndexSet.from_indexes([5, 1, 2, 2, 3]).ranges == ((1, 4), (5, 6))
    with pytest.raises(ValueError, match="negative"):
        IndexSet.from_range(-1, 3)
    with pytest.raises(ValueError, match="end before start"):
        IndexSet.from_range(5, 3)
    with pytest.raises(ValueError, match="end before start"):
        IndexSet.from_ranges([(5, 3)])
    with pytest.raises(ValueError, match="negative"):
        IndexSet.from_ranges([(-2, 3)])
    with pytest.raises(ValueError, match="negative"):
        IndexSet.from_indexes([1, -1])
    with pytest.raises(ValueError, match="larger"):
        IndexSet.from_indexes([MAX_INDEX + 1])
    with pytest.raises(ValueError, match="beyond"):
        IndexSet.from_range(0, MAX_INDEX + 2)


def test_inspection() -> None:
    s = IndexSet.parse("0-99,120,200-299")
    assert len(s) == 201
    assert s.first() == 0
    assert s.last() == 299
    assert IndexSet.EMPTY.first() is None
    assert IndexSet.EMPTY.last() is None
    assert 0 in s and 99 in s and 120 in s and 299 in s
    assert 100 not in s and 119 not in s and 121 not in s and 300 not in s and -1 not in s
    assert "5" not in s
    assert bool(s) and not IndexSet.EMPTY
    assert s == IndexSet.parse("200-299,120,0-99")
    assert hash(s) == hash(IndexSet.parse("200-299,120,0-99"))
    assert s != "0-99,120,200-299"
    assert repr(IndexSet.parse("1-3")) == "IndexSet('1-3')"
    assert IndexSet.parse("1-3") <= s
    assert not s <= IndexSet.parse("1-3")
    assert s.isdisjoint(IndexSet.parse("100-119"))


def test_immutable_and_picklable() -> None:
    s = IndexSet.parse("1-3,7")
    with pytest.raises(AttributeError):
        s._ranges = ()  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and len(copy) == 4 and 7 in copy


def test_take_and_split_tables() -> None:
    s = IndexSet.parse("0-4,10-14")
    assert [x.format() for x in s.take(0)] == ["", "0-4,10-14"]
    assert [x.format() for x in s.take(3)] == ["0-2", "3-4,10-14"]
    assert [x.format() for x in s.take(5)] == ["0-4", "10-14"]
    assert [x.format() for x in s.take(7)] == ["0-4,10-11", "12-14"]
    assert [x.format() for x in s.take(99)] == ["0-4,10-14", ""]
    assert [x.format() for x in s.split(4)] == ["0-3", "4,10-12", "13-14"]
    assert IndexSet.EMPTY.split(3) == []
    with pytest.raises(ValueError):
        s.split(0)
    with pytest.raises(ValueError):
        s.take(-1)


def test_format_bounded_tables() -> None:
    s = IndexSet.from_indexes(range(0, 40, 2))  # "0,2,4,...,38"
    assert s.format_bounded(1000) == s.format()
    assert s.format_bounded(20) == "0,2,4,6,…(+16 more)"
    assert s.format_bounded(18) == "0,2,4,…(+17 more)"
    assert s.format_bounded(13) == "0,…(+19 more)"
    assert s.format_bounded(12) == "…(+20 more)"
    assert s.format_bounded(5) == "…"
    assert s.format_bounded(0) == ""
    assert s.format_bounded(-3) == ""
    assert IndexSet.EMPTY.format_bounded(0) == ""


def test_compact_forms() -> None:
    short = IndexSet.parse("0-999")
    assert short.to_compact() == "0-999"
    scattered = IndexSet.from_indexes(range(0, 20_000, 2))
    compact = scattered.to_compact()
    assert compact.startswith("z:")
    assert len(compact) < len(scattered.format())
    assert IndexSet.from_compact(compact) == scattered
    packed = scattered.to_packed()
    assert len(packed) < 100  # a regular pattern packs to almost nothing
    assert IndexSet.from_packed(packed) == scattered
    assert IndexSet.from_compact(packed) == scattered
    assert IndexSet.from_compact(" 1-3 ") == IndexSet.parse("1-3")


@pytest.mark.parametrize(
    "text",
    [
        "z:",
        "z:!!!!",
        "z:aGVsbG8=",  # valid base64, not zlib
        "z:" + "eJzLSM3JyQcABiwCFQ==",  # zlib("hello"): not an index set
        "d:",
        "d:@@",
        "d:eJwDAAAAAAE=",  # zlib(b"") is fine (empty), so check below separately
        "d:eJxrAAAAgQCB",  # zlib(b"\x80"): truncated varint
        "z:eJzT1QUAAKIAcg==",  # truncated / wrong stream
    ],
)
def test_compact_garbage_is_value_error(text: str) -> None:
    try:
        result = IndexSet.from_compact(text)
    except ValueError:
        return
    # Only well-formed encodings may decode.
    assert isinstance(result, IndexSet)


def test_zip_bomb_is_refused() -> None:
    import base64
    import zlib

    bomb = "z:" + base64.b64encode(zlib.compress(b"1," * (40 * 1024 * 1024))).decode()
    with pytest.raises(ValueError, match="larger than"):
        IndexSet.from_compact(bomb)


def test_large_set_operations_are_range_based() -> None:
    # A million indexes in two ranges: anything O(indexes) would be visibly slow.
    a = IndexSet.from_range(0, 10**12)
    b = IndexSet.from_ranges([(10, 20), (10**11, 10**11 + 5)])
    assert len(a - b) == 10**12 - 15
    assert (a & b) == b
    assert (a | b) == a
    head, rest = a.take(10**11)
    assert len(head) == 10**11 and rest.first() == 10**11
    assert len(a.split(10**11)) == 10


# -------------------------------------------------------------- properties


@given(index_sets(), index_sets())
def test_set_algebra_matches_python_sets(
    x: tuple[IndexSet, set[int]], y: tuple[IndexSet, set[int]]
) -> None:
    a, sa = x
    b, sb = y
    for result, expected in ((a | b, sa | sb), (a & b, sa & sb), (a - b, sa - sb)):
        assert_normalized(result)
        assert set(result) == expected
        assert len(result) == len(expected)
    assert a.issubset(b) == (sa <= sb)
    assert a.isdisjoint(b) == sa.isdisjoint(sb)
    assert (a == b) == (sa == sb)


@given(index_sets(), st.lists(st.integers(-5, 400), max_size=20))
def test_membership_and_order(x: tuple[IndexSet, set[int]], probes: list[int]) -> None:
    s, expected = x
    assert_normalized(s)
    assert list(s) == sorted(expected)
    assert s.first() == (min(expected) if expected else None)
    assert s.last() == (max(expected) if expected else None)
    for probe in probes:
        assert (probe in s) == (probe in expected)


@given(index_lists)
def test_from_indexes(indexes: list[int]) -> None:
    s = IndexSet.from_indexes(indexes)
    assert_normalized(s)
    assert list(s) == sorted(set(indexes))


@given(index_sets(), st.integers(0, 400))
def test_take(x: tuple[IndexSet, set[int]], n: int) -> None:
    s, expected = x
    head, rest = s.take(n)
    ordered = sorted(expected)
    assert list(head) == ordered[:n]
    assert list(rest) == ordered[n:]
    assert_normalized(head)
    assert_normalized(rest)


@given(index_sets(), st.integers(1, 50))
def test_split(x: tuple[IndexSet, set[int]], size: int) -> None:
    s, expected = x
    chunks = s.split(size)
    ordered = sorted(expected)
    assert [list(c) for c in chunks] == [
        ordered[i : i + size] for i in range(0, len(ordered), size)
    ]
    for chunk in chunks:
        assert_normalized(chunk)


@given(index_sets())
def test_text_round_trips(x: tuple[IndexSet, set[int]]) -> None:
    s, _ = x
    assert IndexSet.parse(s.format()) == s
    assert IndexSet.from_compact(s.to_compact()) == s
    assert IndexSet.from_packed(s.to_packed()) == s


@settings(max_examples=30)
@given(st.lists(st.integers(0, 10**6), min_size=200, max_size=400))
def test_compressed_round_trip_for_long_sets(indexes: list[int]) -> None:
    s = IndexSet.from_indexes(indexes)
    compact = s.to_compact()
    assert compact.startswith("z:") == (len(s.format()) > 1024)
    assert IndexSet.from_compact(compact) == s


@given(index_sets(), st.integers(-2, 120))
def test_format_bounded(x: tuple[IndexSet, set[int]], max_chars: int) -> None:
    s, _ = x
    text = s.format_bounded(max_chars)
    assert len(text) <= max(max_chars, 0)
    full = s.format()
    if len(full) <= max_chars:
        assert text == full
    elif text and text != "…":
        # A prefix of whole parts, then a marker counting what was left out.
        prefix, _, marker = text.rpartition("…(+")
        shown = IndexSet.parse(prefix.rstrip(","))
        assert full.startswith(prefix)
        assert marker == f"{len(s) - len(shown)} more)"


@given(st.text(max_size=40))
def test_parse_never_raises_anything_but_value_error(text: str) -> None:
    try:
        s = IndexSet.parse(text)
    except ValueError:
        return
    assert_normalized(s)


@given(st.text(max_size=60))
def test_from_compact_never_raises_anything_but_value_error(text: str) -> None:
    for candidate in (text, "z:" + text, "d:" + text):
        with contextlib.suppress(ValueError):
            IndexSet.from_compact(candidate)
