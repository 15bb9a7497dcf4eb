"""The runner's loop for streaks of quick Python-mode microtasks, with real runner processes.

After a few quick successes in a row the runner runs microtasks in a tighter loop, holds the
delimiter lines of those that printed nothing, and formats their records in batches. These
tests check that it hands over anything unusual (a failure, a slow microtask, a return value,
a gap, a signal) and keeps every guarantee: output between its own delimiters, a record per
microtask, a killed runner's report naming the microtask it was on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from microtask_runner.contract import expand_record, log_name, parse_begin, parse_end, records_name
from microtask_runner.indexset import IndexSet
from microtask_runner.records import RecordFormat, ShardInfo
from microtask_runner.report import Report

RUNNER = [sys.executable, "-m", "microtask_runner"]
JOB = "fast"
SHARD = 3

WORKERS = '''
import os
import signal
import subprocess
import sys
import time

AT = int(os.environ.get("AT", "-1"))


def noop(index, item):
    pass


def fails_at(index, item):
    if index == AT:
        raise ValueError(f"bad {index}")


def slow_at(index, item):
    if index == AT:
        time.sleep(0.01)


def value_at(index, item):
    if index == AT:
        return {"at": index}
    return None


def exits_at(index, item):
    if index == AT:
        raise SystemExit(0)


def term_at(index, item):
    if index == AT:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def kill_at(index, item):
    if index == AT:
        os.kill(os.getpid(), signal.SIGKILL)


CHILD = """
import os, sys
ack = int(sys.argv[1])
for line in sys.stdin:
    os.write(1, ("child out " + line.strip() + chr(10)).encode())
    os.write(2, ("child err " + line.strip() + chr(10)).encode())
    os.write(ack, b"!")
"""
_child = None


def _ask_child(index):
    """A child process that writes on its own fds 1 and 2 (ours), then acknowledges."""
    global _child
    if _child is None:
        read, write = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(write)], stdin=subprocess.PIPE, pass_fds=[write]
        )
        os.close(write)
        _child = proc, read
    proc, read = _child
    proc.stdin.write(f"{index}\\n".encode())
    proc.stdin.flush()
    assert os.read(read, 1) == b"!"


def prints(index, item):
    """Every 50th microtask from 7 on prints, by turns with print, on the fd, from a child."""
    if index % 50 == 7:
        kind = (index // 50) % 3
        if kind == 0:
            print(f"print {index}")
            print(f"print err {index}", file=sys.stderr)
        elif kind == 1:
            os.write(1, f"fd {index}\\n".encode())
            os.write(2, f"fd err {index}\\n".encode())
        else:
            _ask_child(index)
    if index == LAST and _child is not None:
        _child[0].stdin.close()
        _child[0].wait()


LAST = int(os.environ.get("LAST", "-1"))

'''


@pytest.fixture(autouse=True)
def workers(tmp_path: Path) -> None:
    (tmp_path / "mt_fast.py").write_text(WORKERS)


def run(
    tmp_path: Path, indexes: str, function: str, *, store: bool = True, **env: str
) -> tuple[int, Report, str]:
    """Run the runner; its exit code, its report and its output (stdout and stderr as one)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    full.update(
        MICROTASK_REPORT_PATH=str(tmp_path / "report.json"),
        MICROTASK_INDEXES=indexes,
        MICROTASK_CALLABLE=f"mt_fast:{function}",
        **env,
    )
    if store:
        full.update(
            MICROTASK_JOB=JOB, MICROTASK_SHARD=str(SHARD), MICROTASK_OUTPUT_URL=str(tmp_path / "s")
        )
    proc = subprocess.run(
        RUNNER,
        env=full,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=False,
    )
    report = Report.decode((tmp_path / "report.json").read_text(encoding="utf-8"))
    return proc.returncode, report, proc.stdout.decode("utf-8", "replace")


def records(tmp_path: Path, first: int = 0) -> list[dict[str, Any]]:
    data = (tmp_path / "s" / records_name(first, JOB, SHARD)).read_bytes()
    assert data.endswith(b"\n")
    return [one for line in data.splitlines() for one in expand_record(json.loads(line))]


def log_copy(tmp_path: Path) -> str:
    return (tmp_path / "s" / log_name(JOB, SHARD)).read_text(encoding="utf-8")


def sections(output: str) -> dict[int, list[str]]:
    """Index -> the lines between its delimiters; checks that delimiters pair up, in order."""
    found: dict[int, list[str]] = {}
    current: int | None = None
    for line in output.splitlines():
        begin, end = parse_begin(line), parse_end(line)
        if begin is not None:
            assert current is None, f"begin inside the section of {current}: {line}"
            current = begin[0]
            found[current] = []
        elif end is not None:
            assert current == end[0], f"end of {end[0]} inside the section of {current}"
            current = None
        elif current is not None:
            found[current].append(line)
    assert current is None, "a section was not closed"
    return found


def ends(output: str) -> dict[int, int]:
    """Index -> the exit code its end line says."""
    found = {}
    for line in output.splitlines():
        end = parse_end(line)
        if end is not None:
            found[end[0]] = end[2]
    return found


# ----------------------------------------------------------------- hand-over


def test_a_failure_in_a_streak_is_its_own(tmp_path: Path) -> None:
    code, report, output = run(tmp_path, "0-999", "fails_at", AT="500")
    assert code == 10
    assert report.failed == {1: IndexSet.parse("500")}
    assert report.succeeded == IndexSet.parse("0-499,501-999")
    assert "ValueError: bad 500" in (report.errors[1] or "")
    got = records(tmp_path)
    assert [r["index"] for r in got] == list(range(1000))
    assert [r["index"] for r in got if r["outcome"] != "succeeded"] == [500]
    assert "ValueError: bad 500" in got[500]["error"]
    assert ends(output) == {i: (1 if i == 500 else 0) for i in range(1000)}
    for copy in (output, log_copy(tmp_path)):
        found = sections(copy)
        assert list(found) == list(range(1000))
        # The traceback is the failed microtask's output, and only its.
        assert any("ValueError: bad 500" in line for line in found[500])
        assert all(not lines for index, lines in found.items() if index != 500)


@pytest.mark.parametrize(
    ("function", "seconds_at_least", "result"),
    [("slow_at", 0.01, None), ("value_at", 0.0, {"at": 700}), ("exits_at", 0.0, None)],
)
def test_a_slow_microtask_a_value_or_an_exit_leaves_the_streak(
    tmp_path: Path, function: str, seconds_at_least: float, result: object
) -> None:
    code, report, output = run(tmp_path, "0-1999", function, AT="700")
    assert code == 0
    assert report.succeeded == IndexSet.parse("0-1999")
    assert report.count == 2000
    assert report.seconds_max >= seconds_at_least
    got = records(tmp_path)
    assert [r["index"] for r in got] == list(range(2000))
    assert got[700]["seconds"] >= seconds_at_least
    assert got[700]["result"] == result
    assert {r["result"] for i, r in enumerate(got) if i != 700} == {None}
    assert ends(output) == dict.fromkeys(range(2000), 0)
    assert list(sections(log_copy(tmp_path))) == list(range(2000))


def test_gaps_in_the_indexes(tmp_path: Path) -> None:
    indexes = "0-299,400-699,1000,1002-1499"
    code, report, output = run(tmp_path, indexes, "noop")
    assert code == 0
    expected = list(IndexSet.parse(indexes))
    assert report.succeeded == IndexSet.parse(indexes)
    assert [r["index"] for r in records(tmp_path)] == expected
    assert list(sections(output)) == expected
    assert list(sections(log_copy(tmp_path))) == expected


@pytest.mark.parametrize("store", [True, False])
def test_a_signal_in_a_streak_stops_the_shard_there(tmp_path: Path, store: bool) -> None:
    code, report, output = run(tmp_path, "0-1999", "term_at", store=store, AT="900")
    assert code == 143
    assert report.succeeded == IndexSet.parse("0-899")
    assert report.failed == {}
    assert report.current is None
    assert list(sections(output)) == list(range(901))
    assert ends(output)[900] == 143
    if store:
        assert [r["index"] for r in records(tmp_path)] == list(range(900))


@pytest.mark.parametrize("at", [1234, 1240, 1299])
def test_a_runner_killed_in_a_streak_names_the_microtask(tmp_path: Path, at: int) -> None:
    code, report, _ = run(tmp_path, "0-1999", "kill_at", AT=str(at))
    assert code == -signal.SIGKILL
    assert report.current == at
    assert at not in report.succeeded
    assert report.succeeded <= IndexSet.from_range(0, at)
    # Every claimed success has its record.
    claimed = set(report.succeeded)
    assert claimed <= {r["index"] for r in records(tmp_path)}


# ------------------------------------------------------------------- output


@pytest.mark.parametrize("store", [True, False])
def test_output_in_a_streak_lands_between_its_own_delimiters(tmp_path: Path, store: bool) -> None:
    code, report, output = run(tmp_path, "0-1499", "prints", store=store, LAST="1499")
    assert code == 0, output[-2000:]
    assert report.succeeded == IndexSet.parse("0-1499")
    copies = [output, log_copy(tmp_path)] if store else [output]
    for copy in copies:
        found = sections(copy)
        assert list(found) == list(range(1500))
        for index, lines in found.items():
            kind = (index // 50) % 3
            if index % 50 != 7:
                assert lines == [], (index, lines)
            elif kind == 0:
                assert sorted(lines) == [f"print {index}", f"print err {index}"]
            elif kind == 1:
                assert sorted(lines) == sorted([f"fd {index}", f"fd err {index}"])
            else:
                assert sorted(lines) == [f"child err {index}", f"child out {index}"]


def test_without_a_store_every_microtask_still_has_its_delimiters(tmp_path: Path) -> None:
    code, _, output = run(tmp_path, "0-999", "noop", store=False)
    assert code == 0
    assert list(sections(output)) == list(range(1000))
    assert ends(output) == dict.fromkeys(range(1000), 0)


# ------------------------------------------------------------------ records


def test_a_span_record_stands_for_the_quick_records_one_by_one() -> None:
    form = RecordFormat(ShardInfo(job="j", shard=2, attempt=3, pool="cpu", node="n1"))
    start = 1700000000.0004
    span = form.quick_span(12, 17, start)
    assert span.count("\n") == 1
    assert json.loads(span)["last"] == 17
    one_by_one = [json.loads(form.quick(index, start)) for index in range(12, 18)]
    assert expand_record(json.loads(span)) == one_by_one
    # A span of one is the plain record.
    assert form.quick_span(5, 5, start) == form.quick(5, start)


def test_a_streak_writes_span_records(tmp_path: Path) -> None:
    code, _, _ = run(tmp_path, "0-4999", "noop")
    assert code == 0
    path = tmp_path / "s" / records_name(0, JOB, SHARD)
    lines = path.read_bytes().splitlines()
    assert len(lines) < 100  # instead of 5,000
    assert any(b'"last":' in line for line in lines)
    assert [r["index"] for r in records(tmp_path)] == list(range(5000))


def test_held_delimiter_lines_are_the_lines_one_by_one() -> None:
    from microtask_runner.contract import begin_line, end_line
    from microtask_runner.execute import _Held

    prefix, begin_tail = "::microtask:: index=", " attempt=3 begin\n"
    held = _Held(prefix, begin_tail, f" attempt=3 end exit=0 seconds=0.000\n{prefix}")
    for first, current in [(0, 1), (5, 3000), (998, 1001), (999, 1000), (123456, 130000)]:
        held.first, held.current = first, current
        expected = "".join(
            [f"{end_line(first, 3, 0, 0.0)}\n"]
            + [f"{begin_line(i, 3)}\n{end_line(i, 3, 0, 0.0)}\n" for i in range(first + 1, current)]
            + [f"{begin_line(current, 3)}\n"]
        )
        assert b"".join(held.take()).decode() == expected
        assert held.take() == []


WATCH = """
import os, subprocess, sys
from microtask_runner.console import CONSOLE

CONSOLE.capture()
flag = CONSOLE.watch()
assert flag is not None, "no watch"
seen = []
for name, write in [
    ("nothing", lambda: None),
    ("fd", lambda: os.write(1, b"fd\\n")),
    ("print", lambda: print("printed")),
    ("binary", lambda: sys.stdout.buffer.write(b"binary\\n")),
    ("stderr", lambda: print("err", file=sys.stderr)),
    ("child", lambda: subprocess.run([sys.executable, "-c", "print('child')"], check=True)),
]:
    flag[0] = False
    write()
    seen.append(f"{name}={flag[0]}")
    CONSOLE.quiet()
    CONSOLE.take_in()
CONSOLE.unwatch()
hooked = "write" in vars(sys.stdout) or "write" in vars(sys.stderr)
CONSOLE.release()
print(" ".join(seen), "hooked-after" if hooked else "unhooked")
"""


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_the_watch_sees_every_kind_of_output_without_a_poll(unbuffered: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.run(
        [sys.executable, "-c", WATCH], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.splitlines()[-1] == (
        "nothing=False fd=True print=True binary=True stderr=True child=True unhooked"
    )


CAPTURES = """
import os, time
from microtask_runner.console import CONSOLE

before = len(os.listdir("/proc/self/fd"))
for _ in range(20):
    CONSOLE.capture()
    os.write(1, b"x\\n")
    CONSOLE.release()
deadline = time.monotonic() + 5
while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < deadline:
    time.sleep(0.01)
print(len(os.listdir("/proc/self/fd")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_captures_one_after_another_leave_no_descriptor_open() -> None:
    # A process running shard after shard captures again and again: each capture's pipes are
    # closed with it, also those the capture thread saw the end of.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURES], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.splitlines()[-1] == "0"
