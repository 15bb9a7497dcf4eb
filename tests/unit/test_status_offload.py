"""Large index sets of a status kept in ConfigMaps: split, join, digests, bounds, merge patches.

The status must stay under 64 KiB at any job size and failure pattern, and every reader must get
the exact sets back or a clear error, never a wrong set.
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from typing import Any

import pytest
from microtask_operator.api import indexsets
from microtask_operator.api.indexsets import IndexSetsError, Split
from microtask_operator.api.sources import SourceProblem, resolve_rerun
from microtask_operator.core.state import CoreState
from microtask_operator.results import target
from microtask_operator.results.target import JobStatus, TargetError
from microtask_runner.indexset import IndexSet

UID = "0123456789abcdef"
LIMIT = 64 * 1024
CONFIG_MAP_LIMIT = 1024 * 1024


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _split(status: dict[str, Any], **kwargs: Any) -> Split:
    return indexsets.split(status, job="big", uid=UID, **kwargs)


def _data(done: Split) -> dict[str, dict[str, str] | None]:
    return {part.name: part.data for part in done.parts}


def _check_bounds(done: Split) -> None:
    assert _size(done.status) <= LIMIT
    assert len(done.parts) <= indexsets.PARTS_PER_SLOT
    for part in done.parts:
        assert _size(indexsets.config_map(part, {"name": "big", "uid": UID})) < CONFIG_MAP_LIMIT


def _scattered(total: int, share: float, seed: int = 1) -> tuple[IndexSet, IndexSet]:
    """(succeeded, failed): `share` of `total` failed, at random places."""
    rng = random.Random(seed)
    failed = IndexSet.from_indexes(sorted(rng.sample(range(total), int(total * share))))
    return IndexSet.from_range(0, total) - failed, failed


def _sets(status: dict[str, Any]) -> dict[str, Any]:
    """The status with its index sets parsed (the packed and the compact form compare equal)."""
    texts = indexsets.index_texts(status)
    plain = {k: v for k, v in status.items() if k not in ("retryQueue", "inFlight", "source")}
    for path in texts:
        plain.pop(path, None)
    return {**plain, **{path: IndexSet.from_compact(text) for path, text in texts.items()}}


def _every_other_packed(total: int, first: int) -> str:
    """`IndexSet.to_packed` of first, first+2, ... < total, without building the set."""
    # varints: the first start, then (gap - 1, length - 1) of each range: 1 and 0 here
    raw = bytes([first, 0]) + b"\x00\x00" * ((total - first + 1) // 2 - 1)
    return "d:" + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


# --- small sets stay inline -----------------------------------------------------------------------


def test_a_small_status_stays_as_it_is() -> None:
    status = CoreState(
        succeeded=IndexSet.parse("0-99,120"), failed=IndexSet.parse("100-119")
    ).to_status()
    done = _split(status)
    assert done.status == status and not done.parts
    assert not indexsets.offloaded(done.status)
    assert indexsets.join(done.status, {}) == status


def test_scattered_failures_move_to_config_maps_and_come_back_exact() -> None:
    succeeded, failed = _scattered(200_000, 0.02)
    state = CoreState(succeeded=succeeded, failed=failed, retired=IndexSet.parse("0-1999"))
    status = state.to_status()
    assert _size(status) > 4 * indexsets.DEFAULT_INLINE_CHARS
    done = _split(status)
    _check_bounds(done)
    reference = done.status["indexSets"]
    assert reference["fields"] == ["failedIndexes", "succeededIndexes"]
    assert [c["name"] for c in reference["configMaps"]] == [f"big-indexes-{UID[:8]}-a0"]
    # Readable summaries in place of the sets, which no parser takes for a set.
    assert done.status["failedIndexes"].startswith(failed.format()[:20])
    shown = done.status["failedIndexes"].split("...")[0].count(",")
    assert done.status["failedIndexes"].endswith(f"(+{len(failed.ranges) - shown:,} more ranges)")
    with pytest.raises(ValueError):
        IndexSet.from_compact(done.status["failedIndexes"])
    assert done.status["retiredShards"] == "0-1999"  # short: inline, exact
    back = CoreState.from_status(indexsets.join(done.status, _data(done)))
    assert back.succeeded == succeeded and back.failed == failed and back == state


def test_the_inline_limit_is_a_parameter() -> None:
    status = CoreState(succeeded=IndexSet.from_indexes(range(0, 600, 3))).to_status()
    assert not _split(status).parts
    assert _split(status, inline_chars=100).parts


# --- bounded at any size and pattern -------------------------------------------------------------


def test_ten_million_with_two_percent_scattered_failures() -> None:
    succeeded, failed = _scattered(10**7, 0.02)
    # Packed texts, as the status may hold them: the split does not parse them.
    status = {"phase": "Running", "total": 10**7}
    status["succeededIndexes"] = succeeded.to_packed()
    status["failedIndexes"] = failed.to_packed()
    done = _split(status)
    _check_bounds(done)
    joined = indexsets.join(done.status, _data(done))
    assert joined == status


def test_every_other_index_failed_at_ten_million() -> None:
    status = {
        "phase": "Failed",
        "succeededIndexes": _every_other_packed(10**7, 1),
        "failedIndexes": _every_other_packed(10**7, 0),
    }
    done = _split(status)
    _check_bounds(done)
    assert done.status["failedIndexes"].startswith("0,2,4,6,")
    assert done.status["failedIndexes"].endswith("(+4,999,965 more ranges)")
    assert indexsets.join(done.status, _data(done)) == status


def test_huge_retry_queues_and_in_flight_sets() -> None:
    rng = random.Random(3)
    batches = [IndexSet.from_indexes(sorted(rng.sample(range(10**7), 20_000))) for _ in range(32)]
    status: dict[str, Any] = {
        "retryQueue": [
            {"attempts": 1 + n % 3, "notBefore": "2027-01-01T00:00:00Z", "indexes": b.to_compact()}
            for n, b in enumerate(batches)
        ],
        "inFlight": [{"attempt": a, "indexes": batches[a].to_compact()} for a in range(1, 4)],
    }
    done = _split(status)
    _check_bounds(done)
    assert len(done.status["indexSets"]["fields"]) == 35
    back = indexsets.join(done.status, _data(done))
    assert [IndexSet.from_compact(b["indexes"]) for b in back["retryQueue"]] == batches
    assert back["retryQueue"][5]["attempts"] == status["retryQueue"][5]["attempts"]
    assert IndexSet.from_compact(back["inFlight"][2]["indexes"]) == batches[3]


def test_sets_too_large_for_the_parts_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexsets, "PART_CHARS", 1000)
    succeeded, failed = _scattered(100_000, 0.05)
    status = CoreState(succeeded=succeeded, failed=failed).to_status()
    with pytest.raises(IndexSetsError, match="more than the 8 ConfigMaps"):
        _split(status)


# --- digests: never a wrong set ------------------------------------------------------------------


def _offloaded() -> tuple[dict[str, Any], Split]:
    succeeded, failed = _scattered(100_000, 0.03)
    status = CoreState(succeeded=succeeded, failed=failed).to_status()
    return status, _split(status)


def test_a_missing_part_is_an_error_naming_it() -> None:
    _, done = _offloaded()
    name = done.parts[0].name
    with pytest.raises(IndexSetsError, match=f"ConfigMap {name}.* is missing"):
        indexsets.join(done.status, {name: None})


def test_a_part_edited_or_rewritten_since_is_an_error() -> None:
    _, done = _offloaded()
    data = _data(done)
    part = data[done.parts[0].name]
    assert part is not None
    key = next(iter(part))
    edited = {**part, key: part[key][:-4] + "AAA="}
    with pytest.raises(IndexSetsError, match="does not hold the index sets the status names"):
        indexsets.join(done.status, {done.parts[0].name: edited})


def test_parts_that_do_not_add_up_to_the_digest_are_an_error() -> None:
    _, done = _offloaded()
    # Parts that match their own digests, but not the whole the status names.
    forged = dict(done.status)
    forged["indexSets"] = {**forged["indexSets"], "digest": "sha256:" + "0" * 64}
    with pytest.raises(IndexSetsError, match="do not add up"):
        indexsets.join(forged, _data(done))


def test_new_content_goes_to_the_other_slot_so_the_status_before_still_reads() -> None:
    status, first = _offloaded()
    more = dict(status)
    succeeded = IndexSet.from_compact(status["succeededIndexes"]) | IndexSet.from_range(
        100_000, 100_050
    )
    more["succeededIndexes"] = succeeded.to_compact()
    second = _split(more, written=first.status["indexSets"])
    assert {p.name[-2:] for p in first.parts} == {"a0"}
    assert {p.name[-2:] for p in second.parts} == {"b0"}
    store = {**_data(first), **_data(second)}
    # Written before the second status: a reader of the first status is not disturbed.
    assert _sets(indexsets.join(first.status, store)) == _sets(status)
    assert _sets(indexsets.join(second.status, store)) == _sets(more)
    third = _split(status, written=second.status["indexSets"])
    assert {p.name[-2:] for p in third.parts} == {"a0"}


def test_unchanged_sets_keep_their_parts_and_write_none() -> None:
    status, first = _offloaded()
    again = _split({**status, "attempts": 99}, written=first.status["indexSets"])
    assert not again.parts
    assert again.status["indexSets"] == first.status["indexSets"]
    assert indexsets.join(again.status, _data(first))["attempts"] == 99


def test_only_the_parts_whose_data_changed_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexsets, "PART_CHARS", 1_000)
    succeeded, failed = _scattered(100_000, 0.008)
    status = CoreState(succeeded=succeeded, failed=failed).to_status()
    first = _split(status, inline_chars=0)
    later = CoreState(succeeded=succeeded | IndexSet.parse("100000-100009"), failed=failed)
    # Two writes later the same slot again: the parts holding what did not change are the same.
    second = _split(later.to_status(), written={"configMaps": [{"name": "x-b0"}]}, inline_chars=0)
    assert len(first.parts) == len(second.parts) >= 3
    same = [a.digest == b.digest for a, b in zip(first.parts, second.parts, strict=True)]
    assert same[0] and not same[-1]  # failedIndexes first (it changes less), unchanged
    assert _sets(indexsets.join(second.status, _data(second))) == _sets(later.to_status())


# --- summaries -----------------------------------------------------------------------------------


def test_summaries_are_bounded_and_never_parse() -> None:
    for text in ("0-99,120,200-299", "5", "0-9999999"):
        shown = indexsets.summary(IndexSet.parse(text))
        assert shown.startswith(text.split(",")[0]) and len(shown) < 140
        with pytest.raises(ValueError):
            IndexSet.parse(shown)
    many = IndexSet.from_indexes(range(0, 10_000, 2))
    assert indexsets.summary(many).endswith("(+4,965 more ranges)")
    assert indexsets._packed_summary(many.to_packed()) == indexsets.summary(many)


# --- merge patches -------------------------------------------------------------------------------


def test_a_merge_patch_sends_what_changed_and_nulls_what_went() -> None:
    old = {"phase": "Running", "succeeded": 5, "durations": {"cpu": {"count": 5}}, "x": 1}
    new = {"phase": "Running", "succeeded": 9, "durations": {"cpu": {"count": 9}}, "y": [1]}
    patch = indexsets.merge_patch(old, new)
    assert patch == {"succeeded": 9, "durations": {"cpu": {"count": 9}}, "x": None, "y": [1]}
    assert indexsets.apply_patch(old, patch) == new
    assert indexsets.merge_patch(new, new) == {}


# --- readers -------------------------------------------------------------------------------------


def test_a_rerun_of_an_offloaded_status_needs_its_parts_and_then_gets_the_exact_set() -> None:
    from microtask_operator.api.loading import validate_job

    job, problems = validate_job(
        {
            "apiVersion": "microtask.dev/v1alpha1",
            "kind": "MicrotaskJob",
            "metadata": {"name": "again", "namespace": "ns"},
            "spec": {
                "items": {"fromJob": {"name": "big"}},
                "callable": "pkg.mod:fn",
                "template": {"spec": {"containers": [{"name": "w", "image": "busybox"}]}},
            },
        }
    )
    assert job is not None, problems
    succeeded, failed = _scattered(30_000, 0.3)
    status = {**CoreState(succeeded=succeeded, failed=failed).to_status(), "total": 30_000}
    status["phase"] = "Failed"
    done = _split(status)
    source = {"spec": {"items": {"range": {"end": 30_000}}}, "status": done.status}
    problem = resolve_rerun(job, source)
    assert isinstance(problem, SourceProblem)
    assert "kept in ConfigMaps" in problem.message and not problem.final
    joined = {**source, "status": indexsets.join(done.status, _data(done))}
    rerun = resolve_rerun(job, joined)
    assert not isinstance(rerun, SourceProblem)
    assert rerun.indexes == failed  # type: ignore[union-attr]


def test_results_read_the_parts_of_a_cluster_job(monkeypatch: pytest.MonkeyPatch) -> None:
    status, done = _offloaded()
    status = {**status, "total": 100_000}
    written = {**done.status, "total": 100_000}
    with pytest.raises(TargetError, match="kept in ConfigMaps"):
        JobStatus.from_status(written)
    store = _data(done)
    monkeypatch.setattr(target, "read_config_map", lambda connection, name: store.get(name))
    found = target.job_status(object(), "big", written)  # type: ignore[arg-type]
    assert found == JobStatus.from_status(status)
    store.clear()
    with pytest.raises(TargetError, match=r'index sets of MicrotaskJob "big".*missing'):
        target.job_status(object(), "big", written)  # type: ignore[arg-type]
