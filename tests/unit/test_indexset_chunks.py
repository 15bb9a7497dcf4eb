"""Chunked index sets: operations with a small set edit a few chunks, and give the plain answer.

Chunks are made small (16 ranges) so that sets of a few hundred ranges are chunked, and a set
of a few ranges is "small" beside them, as a shard's outcome is beside 200,000 ranges.
"""

from __future__ import annotations

import base64
import itertools
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_runner import indexset
from microtask_runner.indexset import IndexSet

SPAN = 3000


@contextmanager
def small_chunks() -> Iterator[None]:
    with (
        mock.patch.object(indexset, "_CHUNK", 16),
        mock.patch.object(indexset, "_CHUNKED_COMPACT_MIN_RANGES", 64),
    ):
        yield


def plain(indexes: set[int]) -> IndexSet:
    return IndexSet.from_indexes(indexes)


def points(size: int, width: int) -> st.SearchStrategy[set[int]]:
    return st.lists(
        st.tuples(st.integers(0, SPAN), st.integers(1, width)), min_size=0, max_size=size
    ).map(lambda parts: {i for start, n in parts for i in range(start, start + n)})


settings_ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_shape(s: IndexSet) -> None:
    ranges = s.ranges
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    assert len(s) == sum(end - start for start, end in ranges)
    assert s._count == len(ranges)


@settings_
@given(big=points(400, 3), small=points(4, 40), probes=st.lists(st.integers(0, SPAN + 50)))
def test_operations_with_a_small_set_give_the_plain_answer(
    big: set[int], small: set[int], probes: list[int]
) -> None:
    with small_chunks():
        a = plain(big)
        # Derived sets are chunked, as the core's are after their first edit.
        a = a | plain({SPAN + 10})
        big = big | {SPAN + 10}
        b = plain(small)
        for result, expected in (
            (a | b, big | small),
            (b | a, big | small),
            (a - b, big - small),
            (b - a, small - big),
            (a & b, big & small),
            (b & a, big & small),
        ):
            check_shape(result)
            assert result == plain(expected)
            assert set(result) == expected
            assert result.format() == plain(expected).format()
            assert IndexSet.from_compact(result.to_compact()) == result
        ordered = sorted(big)
        for index in probes:
            assert (index in a) == (index in big)
            after = [i for i in ordered if i >= index]
            assert a.next_present(index) == (after[0] if after else None)
            absent = index
            while absent in big:
                absent += 1
            assert a.next_absent(index) == absent
            assert [i for r in a.iter_from(index) for i in range(*r) if i >= index] == after
        for n in (0, 1, len(ordered) // 3, len(ordered)):
            head, tail = a.take(n)
            check_shape(head)
            check_shape(tail)
            assert list(head) == ordered[:n] and list(tail) == ordered[n:]


@settings_
@given(big=points(400, 3), edits=st.lists(points(3, 5), max_size=8))
def test_a_series_of_edits_stays_the_plain_set(big: set[int], edits: list[set[int]]) -> None:
    with small_chunks():
        current, expected = plain(big), set(big)
        for n, edit in enumerate(edits):
            if n % 2:
                current, expected = current - plain(edit), expected - edit
            else:
                current, expected = current | plain(edit), expected | edit
            check_shape(current)
            assert current == plain(expected)
            assert IndexSet.from_compact(current.to_compact()) == current


def test_an_edit_rebuilds_only_the_chunks_it_touches() -> None:
    with small_chunks():
        big = IndexSet.from_indexes(range(0, 20_000, 2))
        before = big | IndexSet.from_indexes([20_001])
        compact = before.to_compact()
        after = before | IndexSet.from_indexes([501])
        assert after == IndexSet.from_indexes([*range(0, 20_000, 2), 501, 20_001])
        assert before._chunks is not None and after._chunks is not None
        old = {id(c) for c in before._chunks}
        new = [c for c in after._chunks if id(c) not in old]
        assert len(new) == 1  # the one chunk holding 501
        # ... and only that chunk is deflated again: the others keep their pieces.
        assert all(c.deflated for c in after._chunks if id(c) in old)
        assert not new[0].deflated
        assert IndexSet.from_compact(after.to_compact()) == after
        assert after.to_compact() != compact


def test_compact_forms_are_computed_once_per_set() -> None:
    s = IndexSet.from_indexes(range(0, 5000, 3))
    assert s.to_compact() is s.to_compact()


def test_large_sets_compact_to_one_valid_zlib_stream() -> None:
    s = IndexSet.from_indexes(range(0, 40_000, 3))
    compact = s.to_compact()
    assert compact.startswith("z:")
    text = zlib.decompress(base64.b64decode(compact[2:])).decode("ascii")
    assert text == s.format()
    # No larger than one stream of the whole text would be (give or take a little).
    whole = base64.b64encode(zlib.compress(text.encode("ascii"), 9))
    assert len(compact) < 1.1 * len(whole)


def test_sets_below_the_chunked_size_compact_as_before() -> None:
    s = IndexSet.from_indexes(range(0, 2000, 3))
    packed = zlib.compress(s.format().encode("ascii"), 9)
    assert s.to_compact() == "z:" + base64.b64encode(packed).decode("ascii")
