"""The live report, batched records and the runner's fast loop, in-process and with real runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from microtask_runner import execute
from microtask_runner.contract import expand_record, parse_begin, parse_end, records_name
from microtask_runner.execute import PythonExecutor, Signals, run_shard
from microtask_runner.indexset import IndexSet
from microtask_runner.items import load_items
from microtask_runner.progress import Outcomes, Progress, ReportFile
from microtask_runner.records import RecordFormat, ResultStore, ShardInfo, format_record
from microtask_runner.report import (
    MAX_REPORT_BYTES,
    Report,
    ReportError,
    encode_live,
    live_number,
)
from microtask_runner.results import Finished

RUNNER = [sys.executable, "-m", "microtask_runner"]

WORKERS = '''
import os
import sys
import time


def quick_then_slow(index, item):
    """Quick no-ops, then one that waits (a window to kill the runner in)."""
    if index == int(os.environ["SLOW_AT"]):
        with open(os.environ["STARTED"], "w") as f:
            f.write(str(index))
        time.sleep(30)


def writes_now_and_then(index, item):
    """Quick microtasks; some write straight to the file descriptors, some print."""
    if index % 50 == 7:
        os.write(1, f"fd out {index}\\n".encode())
        os.write(2, f"fd err {index}\\n".encode())
    elif index % 50 == 31:
        print(f"print {index}")
        print(f"print err {index}", file=sys.stderr)
'''


def patch(live: bytes, at: int, value: int | None) -> bytes:
    return live[:at] + live_number(value) + live[at + len(live_number(value)) :]


# ------------------------------------------------------------------ live report


def test_live_report_numbers_move_in_place_and_fold_into_the_outcomes() -> None:
    base = Report(
        succeeded=IndexSet.parse("0-9"),
        failed={3: IndexSet.parse("10")},
        errors={3: "index 10: boom"},
        current=11,
        seconds_total=1.5,
        seconds_max=0.5,
        count=11,
    )
    live = encode_live(base, 11)
    assert live.can_run
    assert len(live.data) <= MAX_REPORT_BYTES
    # As written: the full report, nothing claimed yet, 11 running.
    assert Report.decode(live.data.decode()) == base
    data = patch(patch(live.data, live.okto_at, 15), live.cur_at, 15)
    decoded = Report.decode(data.decode() + " " * 100)
    assert decoded.succeeded == IndexSet.parse("0-9,11-14")
    assert decoded.failed == base.failed
    assert decoded.count == 15
    assert decoded.current == 15
    finished = Report.decode(patch(data, live.cur_at, None).decode())
    assert finished.current is None


def test_a_reader_that_ignores_the_run_sees_a_report_that_is_only_behind() -> None:
    live = encode_live(Report(succeeded=IndexSet.parse("0-4"), count=5, current=5), 5)
    data = patch(patch(live.data, live.okto_at, 9), live.cur_at, 9)
    fields = json.loads(data)
    del fields["okfrom"], fields["okto"]
    old = Report.decode(json.dumps(fields))
    assert old.succeeded == IndexSet.parse("0-4")  # 5-8 would run again: late, never wrong
    assert old.current == 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"okto": 3}, "is before 'okfrom'"),
        ({"okfrom": None}, "go together"),
        ({"okfrom": 2, "okto": 6}, "repeats reported successes"),
        ({"okfrom": 10, "okto": 12}, "two outcomes"),
    ],
)
def test_bad_live_runs_are_rejected(change: dict[str, Any], message: str) -> None:
    fields = {"v": 1, "ok": "0-4", "fail": {"1": "10"}, "n": 6, "okfrom": 5, "okto": 8}
    fields.update(change)
    fields = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(ReportError, match=message):
        Report.decode(json.dumps(fields))


def test_a_live_report_fits_the_budget_and_a_cut_one_takes_no_run() -> None:
    scattered = IndexSet.from_indexes(range(0, 40_000, 3))
    report = Report(
        succeeded=IndexSet.from_range(0, 40_000) - scattered,
        failed={1: scattered},
        errors={1: "x" * 5000},
        current=40_000,
        count=40_000,
    )
    live = encode_live(report, 40_000)
    assert len(live.data) <= MAX_REPORT_BYTES
    decoded = Report.decode(live.data.decode())
    assert decoded.current == 40_000
    if decoded.covered_through is not None:
        assert not live.can_run


# ------------------------------------------------------------------ report file


def test_cur_moves_through_the_map_and_claims_through_pwrite(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    outcomes = Outcomes()
    progress = Progress(outcomes, ReportFile(str(path)))
    progress.write(current=0)
    assert path.stat().st_size == MAX_REPORT_BYTES
    mapped, at = progress.file.current_slot()
    assert mapped is not None
    for index in range(5):
        mapped[at : at + 20] = live_number(index)
        assert Report.decode(path.read_text()).current == index  # another reader sees it
        outcomes.add_run(index, index + 1, 0.001, 0.001)
    progress.claim()
    report = Report.decode(path.read_text())
    assert report.succeeded == IndexSet.parse("0-4")
    assert report.count == 5
    assert report.current == 4
    progress.write(current=None, final=True)
    final = path.read_text()
    assert not final.endswith(" ")  # the final report is written without the live padding
    assert Report.decode(final) == Report(
        succeeded=IndexSet.parse("0-4"), seconds_total=0.005, seconds_max=0.001, count=5
    )
    progress.file.close()


def test_a_failure_makes_the_next_write_encode_it(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    outcomes = Outcomes()
    progress = Progress(outcomes, ReportFile(str(path)))
    progress.write(current=0)
    outcomes.add_run(0, 1, 0.0, 0.0)
    outcomes.add(1, 3, 0.0, "index 1: boom")
    progress.write(current=2)
    report = Report.decode(path.read_text())
    assert report.succeeded == IndexSet.parse("0")
    assert report.failed == {3: IndexSet.parse("1")}
    assert report.errors == {3: "index 1: boom"}
    assert report.current == 2
    progress.file.close()


def test_a_run_does_not_claim_across_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    outcomes = Outcomes()
    progress = Progress(outcomes, ReportFile(str(path)))
    progress.write(current=0)
    outcomes.add_run(0, 2, 0.0, 0.0)
    outcomes.add_run(5, 6, 0.0, 0.0)  # 2-4 are not this shard's
    progress.claim()
    assert progress.stale
    assert Report.decode(path.read_text()).succeeded == IndexSet.EMPTY
    progress.write(current=6)
    assert Report.decode(path.read_text()).succeeded == IndexSet.parse("0-1,5")
    progress.file.close()


# ------------------------------------------------------------------ records


def test_record_format_writes_what_format_record_writes() -> None:
    info = ShardInfo(job="a-b", shard=3, attempt=2, pool="cpu", node='n"1é')
    fast = RecordFormat(info)
    cases = [
        (1_733_265_956.1234, 0.0001, Finished(0)),
        (1_733_265_956.1236, 0.0001, Finished(0)),
        (1_733_265_956.1236, 0.51234, Finished(0, result='{"a":1}')),
        (5.0, 0.0004999, Finished(0)),
        (5.0, 0.0005, Finished(0)),
        (5.0, -1.0, Finished(0)),
        (1.0, 1.0, Finished(3, error="index 7: x", detail="x")),
        (1.0, 1.0, Finished(1, error="e", detail="d", exception="ValueError")),
    ]
    for start, seconds, finished in cases:
        expected = format_record(info, index=7, start=start, seconds=seconds, finished=finished)
        assert fast(7, start, seconds, finished).encode() == expected


class _CountingSink:
    def __init__(self) -> None:
        self.appends: list[bytes] = []

    def append(self, name: str, data: bytes) -> None:
        self.appends.append(data)

    def flush(self, final: bool) -> None:
        pass

    def close(self) -> None:
        pass


class _Clock:
    """time.perf_counter, monotonic and time, moving 1 µs per call: a deterministic loop."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    clock = _Clock()
    fake = type("fake_time", (), {})()
    for name in ("perf_counter", "monotonic", "time"):
        setattr(fake, name, clock)
    monkeypatch.setattr(execute, "time", fake)
    yield


def test_quick_microtasks_batch_their_records_and_claims(
    tmp_path: Path, fake_time: None, capfd: pytest.CaptureFixture[str]
) -> None:
    sink = _CountingSink()
    store = ResultStore(sink, description="test", records="r.jsonl", log=None, warn=print)
    outcomes = Outcomes()
    progress = Progress(outcomes, ReportFile(str(tmp_path / "report.json")))
    signals = Signals()
    try:
        code = run_shard(
            indexes=IndexSet.parse("0-2999"),
            items=load_items(None),
            executor=PythonExecutor(lambda index, item: None, None, signals),
            outcomes=outcomes,
            progress=progress,
            signals=signals,
            store=store,
            info=ShardInfo(job="j", shard=1),
        )
    finally:
        signals.restore()
        progress.file.close()
    assert code == 0
    # One push before each of the first quick microtasks, then one per 64 KiB of records or
    # 20 ms (the fake clock moves 1 µs per reading: 3,000 microtasks take under 20 ms), and one
    # at the end; instead of 3,000.
    size = sum(len(data) for data in sink.appends)
    assert len(sink.appends) <= execute._QUICK_STREAK + size // execute._SYNC_BYTES + 2
    lines = b"".join(sink.appends).decode().splitlines()
    assert [r["index"] for line in lines for r in expand_record(json.loads(line))] == list(
        range(3000)
    )
    assert Report.decode((tmp_path / "report.json").read_text()).succeeded == IndexSet.parse(
        "0-2999"
    )
    out = capfd.readouterr().out.splitlines()
    assert [parse_begin(line) for line in out[::2]] == [(i, 1) for i in range(3000)]
    assert [parse_end(line) for line in out[1::2]] == [(i, 1, 0) for i in range(3000)]


# ------------------------------------------------------------- real runners


@pytest.fixture
def workers(tmp_path: Path) -> None:
    (tmp_path / "mt_progress.py").write_text(WORKERS)


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    env["MICROTASK_REPORT_PATH"] = str(tmp_path / "report.json")
    env["MICROTASK_JOB"] = "j"
    env["MICROTASK_SHARD"] = "1"
    env["MICROTASK_OUTPUT_URL"] = str(tmp_path / "store")
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.usefixtures("workers")
def test_a_runner_killed_after_quick_microtasks_claims_only_recorded_ones(tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = subprocess.Popen(
        RUNNER,
        env=runner_env(
            tmp_path,
            MICROTASK_INDEXES="0-5999",
            MICROTASK_CALLABLE="mt_progress:quick_then_slow",
            SLOW_AT="5000",
            STARTED=str(started),
            MICROTASK_LOG_COPY="false",
        ),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(started.exists)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = Report.decode((tmp_path / "report.json").read_text())
    assert report.current == 5000  # the microtask running is always named
    path = tmp_path / "store" / records_name(0, "j", 1)
    recorded = [
        r["index"]
        for line in path.read_text().splitlines()
        for r in expand_record(json.loads(line))
    ]
    assert recorded == list(range(len(recorded)))
    # A success the report claims always has its record; what is lost is unreported.
    assert report.succeeded <= IndexSet.from_range(0, len(recorded))
    assert report.failed == {}


@pytest.mark.usefixtures("workers")
@pytest.mark.parametrize("log_copy", ["true", "false"])
def test_quick_microtasks_output_stays_between_their_delimiters(
    tmp_path: Path, log_copy: str
) -> None:
    proc = subprocess.run(
        RUNNER,
        env=runner_env(
            tmp_path,
            MICROTASK_INDEXES="0-999",
            MICROTASK_CALLABLE="mt_progress:writes_now_and_then",
            MICROTASK_LOG_COPY=log_copy,
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=True,
    )
    current: int | None = None
    seen: dict[int, list[str]] = {}
    for line in proc.stdout.decode().splitlines():
        if (begin := parse_begin(line)) is not None:
            assert current is None
            current = begin[0]
        elif (end := parse_end(line)) is not None:
            assert end[0] == current
            current = None
        elif current is not None:
            seen.setdefault(current, []).append(line)
    for index in range(1000):
        expected = {
            7: [f"fd out {index}", f"fd err {index}"],
            31: [f"print {index}", f"print err {index}"],
        }.get(index % 50, [])
        assert sorted(seen.get(index, [])) == sorted(expected), index


def test_importing_the_runner_leaves_out_what_a_shard_may_not_need() -> None:
    code = (
        "import sys; before = set(sys.modules); import microtask_runner.cli; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(proc.stdout.split())
    lazy = {"argparse", "json", "subprocess", "dataclasses", "inspect", "traceback", "select"}
    assert loaded & lazy == set()


def test_options_in_both_forms_and_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from microtask_runner import cli

    for key in list(os.environ):
        if key.startswith("MICROTASK_"):
            monkeypatch.delenv(key)
    report = tmp_path / "report.json"
    assert cli.main([f"--report={report}", "--indexes", "0-2", "--", "true"]) == 0
    assert Report.decode(report.read_text()).succeeded == IndexSet.parse("0-2")
    # A usage error is reported where the environment says (the options did not parse).
    monkeypatch.setenv("MICROTASK_REPORT_PATH", str(report))
    assert cli.main(["--indexes"]) == 2
    error = Report.decode(report.read_text()).runner_error
    assert error == "usage: argument --indexes: expected one argument"
    assert cli.main(["--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: microtask-runner" in out and "--callable CALLABLE" in out


@pytest.mark.parametrize(
    "text", ["plain", 'q"b\\s', "\x00\x1f\x7f\b\f\n\r\t", "é \u2028 \U0001f600", "\ud800 lone"]
)
def test_reports_are_encoded_as_json_would_encode_them(text: str) -> None:
    from microtask_runner.report import _dumps

    fields = {"v": 1, "ok": text, "fail": {"3": text}, "n": 5, "secs": 0.125, "max": 12}
    assert _dumps(fields) == json.dumps(
        fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
