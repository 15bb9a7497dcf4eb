"""The runner's own retries (``--retry-after``): once the shard has run, each failed microtask
runs once more in the same process, after its wait, as the next attempt."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from microtask_operator.results.merge import Merge
from microtask_operator.results.stores import open_store
from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from tests.unit.test_runner import RUNNER, calls, read_report, run, runner_env, wait_for

# Index 2 fails at its first run, index 4 at every run (exit 5); the rest succeed. The
# command writes down the attempt each index ran as.
SCRIPT = """
echo "$1 $MICROTASK_ATTEMPT" >> attempts.txt
if [ "$1" = 2 ] && [ ! -e busy ]; then touch busy; echo busy >&2; exit 3; fi
if [ "$1" = 4 ]; then echo broken >&2; exit 5; fi
echo "done $1"
"""
COMMAND = ("sh", "-c", SCRIPT, "sh", "$(MICROTASK_INDEX)")


def attempts(tmp_path: Path) -> list[str]:
    return (tmp_path / "attempts.txt").read_text().splitlines()


def again(tmp_path: Path) -> None:
    """Ready for another run of the command."""
    for name in ("attempts.txt", "busy"):
        (tmp_path / name).unlink(missing_ok=True)


def test_failed_microtasks_run_once_more_after_their_wait(tmp_path: Path) -> None:
    began = time.monotonic()
    code, report, stderr = run(
        tmp_path,
        "--retry-after",
        "0.4",
        *COMMAND,
        MICROTASK_INDEXES="0-9",
        MICROTASK_ATTEMPT="2",
    )
    assert time.monotonic() - began >= 0.4  # the wait is the backoff: never shorter
    assert code == 10
    assert report.succeeded == IndexSet.parse("0-3,5-9")
    assert report.failed == {5: IndexSet.parse("4")}
    assert report.retried == {3: IndexSet.parse("2"), 5: IndexSet.parse("4")}
    assert report.count == 10  # microtasks, not runs
    # In order, after the pass; the second run is the next attempt, and knows it.
    assert attempts(tmp_path)[10:] == ["2 3", "4 3"]
    assert "index 2 succeeded on attempt 3" in stderr
    assert "index 4 failed again (exit 5" in stderr
    assert "9 succeeded, 1 failed" in stderr


def test_what_is_never_retried(tmp_path: Path) -> None:
    # Exit codes the operator would not retry either.
    _, report, _ = run(
        tmp_path,
        *COMMAND,
        MICROTASK_INDEXES="0-9",
        MICROTASK_RETRY_AFTER_SECONDS="0",
        MICROTASK_NO_RETRY_EXIT_CODES="5,126",
    )
    assert report.retried == {3: IndexSet.parse("2")}
    assert report.failed == {5: IndexSet.parse("4")}
    # A shard that mostly failed: the node or the program is broken, the operator judges.
    again(tmp_path)
    _, report, _ = run(
        tmp_path, *COMMAND, MICROTASK_INDEXES="2,4,6", MICROTASK_RETRY_AFTER_SECONDS="0"
    )
    assert report.retried == {}
    assert report.failed == {3: IndexSet.parse("2"), 5: IndexSet.parse("4")}
    assert len(attempts(tmp_path)) == 3
    # Without a wait to keep, the runner does not retry at all (the operator asks per shard).
    again(tmp_path)
    _, report, _ = run(tmp_path, *COMMAND, MICROTASK_INDEXES="0-9")
    assert report.retried == {} and len(attempts(tmp_path)) == 10


def test_python_mode_retries_with_records_of_both_attempts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-11",
        MICROTASK_CALLABLE="mt_helpers:busy_at_first",
        MICROTASK_RETRY_AFTER_SECONDS="0.05",
        MICROTASK_OUTPUT_URL=str(store),
        MICROTASK_JOB="demo",
        MICROTASK_SHARD="7",
    )
    assert code == 10
    assert report.retried == {1: IndexSet.parse("1-2,5,9")}
    assert report.failed == {1: IndexSet.parse("2")}
    assert calls(tmp_path)[12:] == [[1, "2"], [2, "2"], [5, "2"], [9, "2"]]
    # The second runs' records in a file of their own: each file's records ascend by index.
    first, again = sorted((store / "records").iterdir())
    assert (first.name, again.name) == ("000000000000-demo-7.jsonl", "000000000001-demo-7.a2.jsonl")
    for path, attempt in ((first, 1), (again, 2)):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(r["attempt"] == attempt for r in lines)
        indexes = [r["index"] for r in lines]
        assert indexes == sorted(indexes)
    runs = [(r["index"], r["outcome"]) for r in map(json.loads, again.read_text().splitlines())]
    assert runs == [(1, "succeeded"), (2, "failed"), (5, "succeeded"), (9, "succeeded")]
    # Read back as one stream, each index's final record is its last attempt's.
    merged = {r.index: r for r in Merge(open_store(str(store)), warn=pytest.fail)}
    assert sorted(merged) == list(range(12))
    assert [(merged[i].attempt, merged[i].succeeded) for i in (0, 1, 2)] == [
        (1, True),
        (2, True),
        (2, False),
    ]


def test_sigterm_during_the_wait_stops_at_once_and_charges_nothing_more(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*RUNNER, *COMMAND],
        env=runner_env(
            tmp_path,
            MICROTASK_INDEXES="0-9",
            MICROTASK_RETRY_AFTER_SECONDS="60",
            MICROTASK_ATTEMPT="1",
        ),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = tmp_path / "report.json"

    def waiting() -> bool:
        report = read_report(path)
        return report is not None and len(report.reported()) == 10 and report.current is None

    wait_for(waiting)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    report = Report.decode(path.read_text())
    assert report.retried == {} and report.current is None
    assert report.failed == {3: IndexSet.parse("2"), 5: IndexSet.parse("4")}
    assert len(attempts(tmp_path)) == 10


def test_a_bad_wait_is_a_runner_error(tmp_path: Path) -> None:
    code, report, _ = run(
        tmp_path, "true", MICROTASK_INDEXES="0", MICROTASK_RETRY_AFTER_SECONDS="soon"
    )
    assert code == 2
    assert report.runner_error is not None
    assert "MICROTASK_RETRY_AFTER_SECONDS: 'soon' is not a number of seconds" in report.runner_error
    code, report, _ = run(
        tmp_path, "--no-retry", "3,x", "--retry-after", "1", "true", MICROTASK_INDEXES="0"
    )
    assert code == 2
    assert report.runner_error is not None
    assert "--no-retry: 'x' is not an exit code" in report.runner_error
