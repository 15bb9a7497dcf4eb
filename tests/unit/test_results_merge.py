"""The merge: index order, which attempt wins, bounded open files, bad lines skipped."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_operator.results.merge import Merge, final_failures, records_of
from microtask_operator.results.records import Record, parse_record, records_file
from microtask_runner.indexset import IndexSet
from test_results_support import START, CountingStore, Rec, directory_store, write_records


def merged(root: Path, warnings: list[str] | None = None) -> list[Record]:
    sink = warnings if warnings is not None else []
    return list(Merge(directory_store(root), warn=sink.append))


# ------------------------------------------------------------------ the naive reference


def reference(root: Path) -> list[tuple[int, str, int]]:
    """(index, file, line) of each index's final record, everything read into memory."""
    best: dict[int, tuple[tuple[bool, int, float, str, int], str, int]] = {}
    for path in sorted((root / "records").glob("*.jsonl")):
        name = f"records/{path.name}"
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            fields = json.loads(line)
            succeeded = fields["outcome"] == "succeeded"
            rank = (succeeded, fields["attempt"], fields["start"], name, number)
            if fields["index"] not in best or rank > best[fields["index"]][0]:
                best[fields["index"]] = (rank, name, number)
    return [(index, name, line) for index, (_, name, line) in sorted(best.items())]


outcomes = st.sampled_from(["succeeded", "failed", "timeout"])
# few distinct starts, so ties on (attempt, start) happen and their rule is exercised
starts = st.sampled_from([START, START + 1, START + 2.5])


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[str, int, int, list[Rec]]]:
    """Shard attempt files: (job, shard, first index, records in index order).

    First runs in consecutive chunks, retry shards packing scattered failed indexes at higher
    attempts, speculative copies (same indexes, same attempt, another shard), reruns under
    other job names, empty files and files whose first index is below their first record.
    """
    total = draw(st.integers(1, 60))
    jobs = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma-2"]), min_size=1, max_size=3))
    files: list[tuple[str, int, int, list[Rec]]] = []
    for job in dict.fromkeys(jobs):
        shard = 0
        size = draw(st.integers(1, 12))
        ran = sorted(draw(st.sets(st.integers(0, total - 1), min_size=0, max_size=total)))
        failed: list[int] = []
        for position in range(0, len(ran), size):
            chunk = ran[position : position + size]
            records = [Rec(i, 1, draw(outcomes), draw(starts)) for i in chunk]
            failed += [r.index for r in records if r.outcome != "succeeded"]
            first = chunk[0] - draw(st.integers(0, 2)) if chunk else 0
            files.append((job, shard, max(first, 0), records))
            shard += 1
            if draw(st.booleans()) and draw(st.booleans()):  # a speculative copy
                copy = [Rec(r.index, 1, draw(outcomes), draw(starts)) for r in records[:3]]
                files.append((job, shard, max(first, 0), copy))
                shard += 1
        attempt = 2
        while failed and attempt <= 3:
            retried = sorted(draw(st.sets(st.sampled_from(failed), max_size=len(failed))))
            failed = []
            for position in range(0, len(retried), size):
                chunk = retried[position : position + size]
                records = [Rec(i, attempt, draw(outcomes), draw(starts)) for i in chunk]
                failed += [r.index for r in records if r.outcome != "succeeded"]
                files.append((job, shard, chunk[0], records))
                shard += 1
            attempt += 1
        if draw(st.booleans()):
            files.append((job, shard, draw(st.integers(0, total)), []))
    return files


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layout=layouts())
def test_merge_equals_an_in_memory_reference(tmp_path_factory: pytest.TempPathFactory, layout):
    root = tmp_path_factory.mktemp("store")
    for job, shard, first, records in layout:
        write_records(root, records, job=job, shard=shard, first=first)
    warnings: list[str] = []
    got = [(r.index, r.file, r.line) for r in merged(root, warnings)] if layout else []
    assert got == reference(root)
    assert warnings == []


# ------------------------------------------------------------------ attempt selection


def test_the_last_successful_attempt_wins_over_a_later_failure(tmp_path: Path):
    write_records(tmp_path, [Rec(0, 1, "failed"), Rec(1, 1)], shard=0)
    write_records(tmp_path, [Rec(0, 2, result="second")], shard=1)
    write_records(tmp_path, [Rec(0, 3, "failed")], shard=2)
    final = merged(tmp_path)
    assert [(r.index, r.attempt, r.outcome) for r in final] == [
        (0, 2, "succeeded"),
        (1, 1, "succeeded"),
    ]
    assert final[0].fields["result"] == "second"


def test_without_a_success_the_last_failure_wins(tmp_path: Path):
    write_records(tmp_path, [Rec(5, 1, "failed", error="first")], shard=0)
    write_records(tmp_path, [Rec(5, 2, "timeout")], shard=1)
    (final,) = merged(tmp_path)
    assert (final.attempt, final.outcome, final.fields["exitCode"]) == (2, "timeout", 124)


def test_a_speculative_tie_goes_to_the_latest_start(tmp_path: Path):
    write_records(tmp_path, [Rec(3, 2, start=START + 5, result="late")], shard=0)
    write_records(tmp_path, [Rec(3, 2, start=START + 1, result="early")], shard=1)
    (final,) = merged(tmp_path)
    assert final.fields["result"] == "late"


def test_several_jobs_in_one_store_are_one_job(tmp_path: Path):
    write_records(tmp_path, [Rec(i, 1, "failed" if i == 2 else "succeeded") for i in range(4)])
    write_records(tmp_path, [Rec(2, 1, start=START + 60)], job="job-rerun-1", shard=0)
    final = merged(tmp_path)
    assert [r.index for r in final] == [0, 1, 2, 3]
    assert final[2].fields["job"] == "job-rerun-1"
    assert final[2].succeeded


# ------------------------------------------------------------------ bounded open files


def test_files_are_opened_when_the_merge_reaches_them_and_few_stay_open(tmp_path: Path):
    rng = random.Random(7)
    total, per_shard = 5000, 50
    failed = sorted(rng.sample(range(total), total // 100))
    shard = 0
    for first in range(0, total, per_shard):
        chunk = range(first, first + per_shard)
        write_records(
            tmp_path,
            [Rec(i, 1, "failed" if i in failed else "succeeded") for i in chunk],
            shard=shard,
        )
        shard += 1
    retry_shards = 0
    for position in range(0, len(failed), 10):  # retry shards pack scattered indexes
        write_records(tmp_path, [Rec(i, 2) for i in failed[position : position + 10]], shard=shard)
        shard += 1
        retry_shards += 1

    store = CountingStore(directory_store(tmp_path))
    merge = Merge(store, warn=pytest.fail)
    count = 0
    for record in merge:
        # nothing is opened ahead of the merge position
        assert all(records_file(name).first <= record.index for name in store.opened)
        count += 1
    assert count == total
    assert len(store.opened) == shard  # every file once
    assert store.now_open == 0  # and closed at its end
    assert store.most_open <= retry_shards + 2
    assert merge.most_open == store.most_open


def test_an_abandoned_merge_closes_its_files(tmp_path: Path):
    for shard in range(3):
        write_records(tmp_path, [Rec(i) for i in range(shard * 10, shard * 10 + 10)], shard=shard)
    write_records(tmp_path, [Rec(5, 2), Rec(25, 2)], shard=3)
    store = CountingStore(directory_store(tmp_path))
    iterator = iter(Merge(store, warn=pytest.fail))
    for _ in range(12):
        next(iterator)
    assert store.now_open == 2
    iterator.close()  # type: ignore[attr-defined]
    assert store.now_open == 0


# ------------------------------------------------------------------ bad lines


def test_corrupt_lines_are_skipped_with_one_warning_per_file(tmp_path: Path):
    name = write_records(
        tmp_path, [Rec(0), Rec(1)], extra=b"{not json\n" + b'{"index": 3}\n' + b"[1, 2]\n"
    )
    other = write_records(tmp_path, [Rec(7)], shard=1, extra=b"\xff\xfe garbage\n")
    warnings: list[str] = []
    final = merged(tmp_path, warnings)
    assert [r.index for r in final] == [0, 1, 7]
    assert len(warnings) == 2
    assert name in warnings[0]
    assert "lines 3, 4, 5" in warnings[0]
    assert other in warnings[1]
    assert "line 2" in warnings[1]


def test_a_file_of_garbage_gives_one_bounded_warning(tmp_path: Path):
    name = write_records(tmp_path, [Rec(0)], extra=b"junk\n" * 10_000)
    warnings: list[str] = []
    assert [r.index for r in merged(tmp_path, warnings)] == [0]
    assert warnings == [
        f"warning: {name}: skipped 10000 lines that are not valid records "
        "(lines 2, 3, 4, 5, 6 and 9995 more; line 2: not JSON (Expecting value: line 1 column 1 "
        "(char 0)))"
    ]


def test_a_line_cut_short_by_a_killed_writer_is_skipped_and_named(tmp_path: Path):
    name = write_records(tmp_path, [Rec(0), Rec(1)], extra=b'{"v":1,"index":2,"att')
    warnings: list[str] = []
    assert [r.index for r in merged(tmp_path, warnings)] == [0, 1]
    (warning,) = warnings
    assert f"{name} line 3" in warning
    assert "cut short" in warning


def test_records_out_of_order_or_below_the_first_index_are_skipped(tmp_path: Path):
    write_records(tmp_path, [Rec(4), Rec(9), Rec(6), Rec(12)], first=4)
    write_records(tmp_path, [Rec(1), Rec(8)], first=5, shard=1)
    warnings: list[str] = []
    assert [r.index for r in merged(tmp_path, warnings)] == [4, 8, 9, 12]
    assert any("out of order" in w for w in warnings)
    assert any("below the file's first index 5" in w for w in warnings)


def test_other_files_in_the_store_are_ignored(tmp_path: Path):
    write_records(tmp_path, [Rec(0)])
    (tmp_path / "records" / "notes.txt").write_text("hello")
    (tmp_path / "records" / "nested").mkdir()
    (tmp_path / "records" / "nested" / "000000000000-job-9.jsonl").write_text("junk")
    assert [r.index for r in merged(tmp_path, [])] == [0]


def test_parse_record_rejects_what_is_not_a_record():
    for line, reason in [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"index": -1, "attempt": 1, "outcome": "failed"}', "index"),
        (b'{"index": true, "attempt": 1, "outcome": "failed"}', "index"),
        (b'{"index": 1, "attempt": 0, "outcome": "failed"}', "attempt"),
        (b'{"index": 1, "attempt": 1}', "outcome"),
        (b'{"index": 1, "attempt": 1, "outcome": "failed", "start": "x"}', "start"),
        (b"[" * 100_000, "not JSON"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_record(line)


# ------------------------------------------------------------------ one index, failures


def test_records_of_one_index_reads_only_up_to_it(tmp_path: Path):
    for shard in range(5):
        write_records(tmp_path, [Rec(i) for i in range(shard * 10, shard * 10 + 10)], shard=shard)
    write_records(tmp_path, [Rec(13, 2, start=START + 9), Rec(41, 2)], shard=5)
    store = CountingStore(directory_store(tmp_path))
    found = records_of(store, 13, warn=pytest.fail)
    assert [(r.attempt, r.file) for r in found] == [
        (1, "records/000000000010-job-1.jsonl"),
        (2, "records/000000000013-job-5.jsonl"),
    ]
    assert len(store.opened) == 3  # files starting at 0, 10, 13; not 20, 30, 40
    assert store.now_open == 0
    assert records_of(store, 99, warn=pytest.fail) == []


def test_final_failures_interleave_never_run_indexes_in_order(tmp_path: Path):
    write_records(tmp_path, [Rec(1), Rec(2, 1, "failed"), Rec(4, 1, "failed")])
    write_records(tmp_path, [Rec(4, 2)], shard=1)
    candidates = IndexSet.parse("0,2-3,5-6")  # the job's indexes minus the succeeded ones
    out = [
        x if isinstance(x, int) else (x.index, x.outcome)
        for x in final_failures(merged(tmp_path), candidates)
    ]
    assert out == [0, (2, "failed"), 3, 5, 6]
    assert [x.index for x in final_failures(merged(tmp_path), None)] == [2]  # type: ignore[union-attr]


# ------------------------------------------------------------------ span records


def test_a_span_record_reads_as_the_records_it_stands_for(tmp_path: Path):
    from microtask_runner.records import RecordFormat, ShardInfo

    form = RecordFormat(ShardInfo(job="job", shard=0, pool="cpu", node="n1"))
    lines = [
        form.quick(3, START),
        form.quick_span(4, 7, START + 0.002),
        form.quick(8, START + 0.005),
        form.quick_span(9, 9, START + 0.006),  # a span of one is a plain record
    ]
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "000000000003-job-0.jsonl").write_text("".join(lines))
    warnings: list[str] = []
    got = merged(tmp_path, warnings)
    assert warnings == []
    assert [r.index for r in got] == list(range(3, 10))
    # Each one is the line the runner would have written for it alone.
    for record in got:
        start = START + {3: 0.0, 8: 0.005, 9: 0.006}.get(record.index, 0.002)
        assert record.text == form.quick(record.index, start).rstrip("\n").encode()
        assert record.fields == json.loads(record.text)
        assert (
            record.succeeded
            and record.line == (record.index > 3) + (record.index > 7) + (record.index > 8) + 1
        )
    # A retry of one index inside the span wins over it; the span's other indexes stay.
    write_records(tmp_path, [Rec(5, 2, "failed")], shard=1)
    assert [(r.index, r.attempt) for r in merged(tmp_path)] == [(i, 1) for i in range(3, 10)]
    write_records(tmp_path, [Rec(6, 2)], shard=2)
    assert [(r.index, r.attempt) for r in merged(tmp_path)][3] == (6, 2)


def test_a_span_out_of_order_or_malformed_is_skipped(tmp_path: Path):
    from microtask_runner.records import RecordFormat, ShardInfo

    form = RecordFormat(ShardInfo(job="job", shard=0))
    lines = [
        form.quick_span(0, 4, START),
        form.quick_span(3, 6, START),  # overlaps the one before
        form.quick(5, START).replace('"index":5,', '"index":5,"last":2,'),  # last below index
        form.quick(7, START),
    ]
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "000000000000-job-0.jsonl").write_text("".join(lines))
    warnings: list[str] = []
    assert [r.index for r in merged(tmp_path, warnings)] == [0, 1, 2, 3, 4, 7]
    assert any("out of order" in w for w in warnings)
