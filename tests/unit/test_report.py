"""The runner report: round trips, the 4096-byte budget, and strict decoding."""

from __future__ import annotations

import contextlib
import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microtask_runner.indexset import IndexSet
from microtask_runner.report import MAX_REPORT_BYTES, REPORT_VERSION, Report, ReportError


def size(text: str) -> int:
    return len(text.encode("utf-8"))


def clean(text: str) -> str:
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def assert_faithful(original: Report, decoded: Report) -> None:
    """Every outcome in ``decoded`` is true of ``original``; none is missing below coverage."""
    assert decoded.succeeded.issubset(original.succeeded)
    for code, indexes in decoded.failed.items():
        assert indexes.issubset(original.failed[code])
    for code, indexes in decoded.retried.items():
        assert indexes.issubset(original.retried[code])
    for code, text in decoded.errors.items():
        full = original.errors[code]
        assert text == full or (text.endswith("…") and full.startswith(text[:-1]))
    if decoded.covered_through is None:
        assert decoded.reported() == original.reported()
        assert decoded.retried_indexes() == original.retried_indexes()
    else:
        window = IndexSet.from_range(0, decoded.covered_through + 1)
        assert decoded.reported() == original.reported() & window
        assert decoded.retried_indexes() == original.retried_indexes() & window
    assert decoded.current == original.current
    assert decoded.count == original.count
    assert decoded.runner_error == original.runner_error or (
        original.runner_error is not None
        and decoded.runner_error is not None
        and decoded.runner_error.endswith("…")
    )


# ------------------------------------------------------------- round trips


def test_round_trip_of_a_small_report() -> None:
    report = Report(
        succeeded=IndexSet.parse("0-97"),
        failed={3: IndexSet.parse("98"), 124: IndexSet.parse("99")},
        errors={3: "index 98: boom", 124: "index 99: timed out after 5s"},
        current=100,
        seconds_total=12.3456,
        seconds_max=5.0,
        count=100,
    )
    text = report.encode()
    assert json.loads(text)["v"] == REPORT_VERSION
    decoded = Report.decode(text)
    assert decoded == Report(
        succeeded=report.succeeded,
        failed=report.failed,
        errors=report.errors,
        current=100,
        seconds_total=12.346,  # milliseconds are kept
        seconds_max=5.0,
        count=100,
    )
    assert decoded.reported() == IndexSet.parse("0-99")
    assert decoded.failed_indexes() == IndexSet.parse("98-99")
    assert decoded.unreported(IndexSet.parse("0-199")) == IndexSet.parse("100-199")
    assert [decoded.exit_code(i) for i in (0, 98, 99, 100)] == [0, 3, 124, None]


def test_the_encoding_is_readable_json() -> None:
    report = Report(succeeded=IndexSet.parse("0-9"), failed={2: IndexSet.parse("10")}, count=11)
    assert report.encode() == '{"v":1,"ok":"0-9","fail":{"2":"10"},"n":11,"secs":0,"max":0}'


def test_empty_and_runner_error_reports() -> None:
    assert Report.decode(Report().encode()) == Report()
    broken = Report(runner_error="MICROTASK_INDEXES is not set")
    assert Report.decode(broken.encode()) == broken


def test_padding_and_whitespace_are_ignored() -> None:
    # The runner pads rewrites with spaces instead of truncating the file.
    text = Report(succeeded=IndexSet.parse("1-5")).encode()
    assert Report.decode(text + " " * 500).succeeded == IndexSet.parse("1-5")
    assert Report.decode("\n" + text + "\n").succeeded == IndexSet.parse("1-5")


# ------------------------------------------------------------------ budget


def test_ten_thousand_contiguous_failures_with_a_huge_error() -> None:
    report = Report(
        failed={1: IndexSet.from_range(0, 10_000)},
        errors={1: "Traceback (most recent call last):\n" + "  line\n" * 5000},
        count=10_000,
        seconds_total=10_000.0,
        seconds_max=3.25,
    )
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    decoded = Report.decode(text)
    assert_faithful(report, decoded)
    assert decoded.covered_through is None
    assert decoded.failed == {1: IndexSet.from_range(0, 10_000)}
    assert decoded.errors[1].endswith("…")


def scattered_report(error_chars: int = 3000) -> Report:
    """10,000 microtasks: every other one fails, with mixed exit codes and long errors."""
    failed: dict[int, set[int]] = {}
    for i in range(1, 10_000, 2):
        code = (1, 2, 3, 124, 137)[(i // 2) % 5]
        failed.setdefault(code, set()).add(i)
    return Report(
        succeeded=IndexSet.from_indexes(range(0, 10_000, 2)),
        failed={code: IndexSet.from_indexes(v) for code, v in failed.items()},
        errors={code: f"exit {code}: " + "ü" * error_chars for code in failed},
        current=None,
        count=10_000,
    )


def test_ten_thousand_scattered_failures_with_mixed_codes() -> None:
    report = scattered_report()
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    decoded = Report.decode(text)
    assert_faithful(report, decoded)
    # A regular pattern packs small: everything is reported, errors are only cut.
    assert decoded.covered_through is None
    assert decoded.reported() == IndexSet.from_range(0, 10_000)
    assert set(decoded.errors) == set(report.errors)


def test_ten_thousand_random_outcomes_reduce_coverage() -> None:
    rng = random.Random(7)
    ok: set[int] = set()
    failed: dict[int, set[int]] = {}
    for i in range(10_000):
        if rng.random() < 0.5:
            ok.add(i)
        else:
            failed.setdefault(rng.choice([1, 2, 3, 124, 137]), set()).add(i)
    report = Report(
        succeeded=IndexSet.from_indexes(ok),
        failed={code: IndexSet.from_indexes(v) for code, v in failed.items()},
        errors=dict.fromkeys(failed, "x" * 900),
        current=10_000,
        count=10_000,
    )
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    decoded = Report.decode(text)
    assert_faithful(report, decoded)
    assert decoded.covered_through is not None
    assert decoded.covered_through in decoded.reported()
    assert decoded.errors == {}  # errors go before coverage
    # Random outcomes cost about a bit each: thousands still fit.
    assert len(decoded.reported()) > 2_000
    # The binary search found the largest coverage: one more reported index does not fit.
    next_index = (report.reported() - decoded.reported()).first()
    assert next_index is not None
    window = IndexSet.from_range(0, next_index + 1)
    bigger = Report(
        succeeded=report.succeeded & window,
        failed={c: s & window for c, s in report.failed.items() if s & window},
        current=10_000,
        count=10_000,
        covered_through=next_index,
    )
    assert Report.decode(bigger.encode()).covered_through == decoded.covered_through


def test_enormous_runner_error_is_cut_to_fit() -> None:
    nasty = "\x01\u2028🙂" * 5000  # escapes and 4-byte characters inflate the JSON
    report = Report(runner_error=nasty, failed={1: IndexSet.from_indexes(range(0, 9000, 3))})
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    decoded = Report.decode(text)
    assert decoded.runner_error is not None and decoded.runner_error.endswith("…")
    assert_faithful(report, decoded)


def test_unencodable_text_is_cleaned() -> None:
    report = Report(errors={1: "bad \udcff byte"}, failed={1: IndexSet.parse("3")})
    decoded = Report.decode(report.encode())
    assert decoded.errors[1] == "bad \ufffd byte"


def test_many_exit_codes_with_errors() -> None:
    report = Report(
        failed={code: IndexSet.parse(str(code)) for code in range(1, 256)},
        errors={code: f"error of code {code} " * 20 for code in range(1, 256)},
    )
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    assert_faithful(report, Report.decode(text))


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty text"),
        ("   ", "empty text"),
        ("Error: exit status 1", "invalid JSON"),
        ("[" * 100_000, "reports are at most"),
        ("[" * 10_000 + "]" * 10_000, "invalid JSON|not a JSON object"),
        ("null", "not a JSON object"),
        ("[1]", "not a JSON object"),
        ('{"ok":"1"}', "no version field"),
        ('{"v":2}', "unsupported report version 2"),
        ('{"v":"1"}', "unsupported report version '1'"),
        ('{"v":true}', "unsupported report version True"),
        ('{"v":1.0}', "unsupported report version 1.0"),
        ('{"v":1,"ok":5}', "'ok' must be an index set"),
        ('{"v":1,"ok":"5-3"}', "end before start"),
        ('{"v":1,"ok":"d:xyz"}', "invalid base64"),
        ('{"v":1,"fail":[]}', "'fail' must be an object"),
        ('{"v":1,"fail":{"x":"1"}}', "not an exit code"),
        ('{"v":1,"fail":{"0":"1"}}', "exit code 0"),
        ('{"v":1,"fail":{"1":"1-3"},"ok":"3"}', "two outcomes"),
        ('{"v":1,"fail":{"1":"1-3","2":"2"}}', "two outcomes"),
        ('{"v":1,"err":{"1":5}}', "must be a string"),
        ('{"v":1,"ok":"0-10","thru":5}', "beyond covered_through"),
        ('{"v":1,"thru":-2}', "out of range"),
        ('{"v":1,"cur":-1}', "out of range"),
        ('{"v":1,"cur":"3"}', "must be an integer"),
        ('{"v":1,"n":true}', "must be an integer"),
        ('{"v":1,"secs":NaN}', "finite"),
        ('{"v":1,"secs":-1}', "finite"),
        ('{"v":1,"max":"1"}', "must be a number"),
        ('{"v":1,"rerr":1}', "'rerr' must be a string"),
        ('{"v":1,"ok":"1","again":{"1":"1-2"}}', "retried without an outcome"),
        ('{"v":1,"ok":"1","again":{"0":"1"}}', "exit code 0"),
        ('{"v":1,"ok":"1","again":[]}', "'again' must be an object"),
        ('{"v":1,"n":1' + "0" * 5000 + "}", "invalid JSON|out of range"),
    ],
)
def test_decode_rejects(text: str, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        Report.decode(text)


def test_report_error_is_a_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert Report.decode('{"v":1,"ok":"1","future":{"x":1}}').succeeded == IndexSet.parse("1")


@given(st.text(max_size=300))
def test_decode_of_arbitrary_text_raises_only_report_error(text: str) -> None:
    with contextlib.suppress(ReportError):
        Report.decode(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
report_keys = st.sampled_from(["v", "ok", "fail", "err", "thru", "cur", "n", "secs", "max", "rerr"])


@given(st.dictionaries(report_keys, json_values, max_size=8), st.booleans())
def test_decode_of_report_like_json_raises_only_report_error(
    data: dict[str, object], versioned: bool
) -> None:
    if versioned:
        data["v"] = 1
    try:
        text = json.dumps(data)
    except ValueError:
        return
    with contextlib.suppress(ReportError):
        Report.decode(text)


# -------------------------------------------------------------- properties


@st.composite
def reports(draw: st.DrawFn) -> Report:
    """Consistent reports: each index has at most one outcome."""
    n = draw(st.integers(0, 3000))
    outcome_pool = draw(st.lists(st.sampled_from([0, 1, 2, 124, 255]), min_size=1, max_size=5))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    density = draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
    ok: set[int] = set()
    failed: dict[int, set[int]] = {}
    for i in range(n):
        if rng.random() >= density:
            continue
        code = rng.choice(outcome_pool)
        if code == 0:
            ok.add(i)
        else:
            failed.setdefault(code, set()).add(i)
    errors = {code: draw(st.text(max_size=2000)) for code in failed}
    # Some outcomes came from a second run in the pod, after a failure with one of the codes.
    retried: dict[int, set[int]] = {}
    share = draw(st.sampled_from([0.0, 0.1, 1.0]))
    for i in sorted(ok.union(*failed.values())):
        if rng.random() < share:
            retried.setdefault(rng.choice([1, 3, 255]), set()).add(i)
    return Report(
        succeeded=IndexSet.from_indexes(ok),
        failed={code: IndexSet.from_indexes(v) for code, v in failed.items()},
        errors=errors,
        current=draw(st.none() | st.integers(0, 10**6)),
        seconds_total=draw(st.floats(0, 1e6)),
        seconds_max=draw(st.floats(0, 1e3)),
        count=n,
        runner_error=draw(st.none() | st.text(max_size=3000)),
        retried={code: IndexSet.from_indexes(v) for code, v in retried.items()},
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reports())
def test_every_report_encodes_within_budget_and_decodes_faithfully(report: Report) -> None:
    text = report.encode()
    assert size(text) <= MAX_REPORT_BYTES
    decoded = Report.decode(text)
    cleaned = Report(
        succeeded=report.succeeded,
        failed=report.failed,
        errors={c: clean(t) for c, t in report.errors.items()},
        current=report.current,
        count=report.count,
        runner_error=None if report.runner_error is None else clean(report.runner_error),
        retried=report.retried,
    )
    assert_faithful(cleaned, decoded)
