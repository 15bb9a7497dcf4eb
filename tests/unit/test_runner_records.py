"""Result records, log delimiters and the log copy, with real runner processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from microtask_runner.contract import (
    MAX_RECORD_ERROR_CHARS,
    MAX_RESULT_BYTES,
    RECORD_KEYS,
    begin_line,
    end_line,
    expand_record,
    log_name,
    parse_begin,
    parse_end,
    parse_records_name,
    records_name,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.output import DirectorySink, SinkUnavailable, open_sink
from microtask_runner.records import ResultStore
from microtask_runner.report import Report

RUNNER = [sys.executable, "-m", "microtask_runner"]
JOB = "thumbs"
SHARD = 12

#: Python-mode workers, written into each test's working directory (importable from there).
WORKERS = '''
import os
import subprocess
import sys
import time


class MyError(Exception):
    pass


def halves(index, item):
    """A line on stderr written in two pieces, with a whole line on stdout between them."""
    os.write(2, b"first half ")
    time.sleep(0.02)
    os.write(1, f"whole {index}\\n".encode())
    os.write(2, f"second half {index}\\n".encode())


def _mark(index):
    path = os.environ.get("STARTED")
    if path:
        with open(path, "a") as f:
            f.write(f"{index}\\n")


def returns(index, item):
    """Prints on both streams, from Python, the fd and a child; returns what the item says."""
    print(f"out {index}")
    print(f"err {index}", file=sys.stderr)
    os.write(1, f"fd1 {index}\\n".encode())
    os.write(2, f"fd2 {index}\\n".encode())
    child = f"import sys; print('child out {index}'); print('child err {index}', file=sys.stderr)"
    subprocess.run([sys.executable, "-c", child], check=True)
    kind = item
    if kind == "dict":
        return {"index": index, "tags": ["a", "é"], "n": None}
    if kind == "none":
        return None
    if kind == "set":
        return {1, 2}
    if kind == "nan":
        return float("nan")
    if kind == "big":
        return "x" * (2 * 1024 * 1024)
    if kind == "raise":
        raise MyError(f"bad {index}")
    if kind == "builtin":
        raise ValueError("x" * 5000)
    if kind == "exit3":
        raise SystemExit(3)
    if kind == "sleep":
        time.sleep(30)
    return kind


def slow_from_two(index, item):
    print(f"working on {index}", flush=True)
    _mark(index)
    if index >= 2:
        time.sleep(30)
    return {"done": index}
'''


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    env["MICROTASK_REPORT_PATH"] = str(tmp_path / "report.json")
    env["MICROTASK_JOB"] = JOB
    env["MICROTASK_SHARD"] = str(SHARD)
    env["MICROTASK_OUTPUT_URL"] = str(tmp_path / "store")
    env.update(extra)
    return {k: v for k, v in env.items() if v != "<unset>"}


@pytest.fixture(autouse=True)
def workers(tmp_path: Path) -> None:
    (tmp_path / "mt_records.py").write_text(WORKERS)


def run(tmp_path: Path, *command: str, **env: str) -> tuple[int, Report, str]:
    """Run the runner; its exit code, its report and its output (stdout and stderr as one)."""
    proc = subprocess.run(
        [*RUNNER, *command],
        env=runner_env(tmp_path, **env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=False,
    )
    report = Report.decode((tmp_path / "report.json").read_text(encoding="utf-8"))
    return proc.returncode, report, proc.stdout.decode("utf-8", "replace")


def records(tmp_path: Path, first: int = 0) -> list[dict[str, Any]]:
    path = tmp_path / "store" / records_name(first, JOB, SHARD)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "every record is a whole line"
    return [one for line in lines[:-1] for one in expand_record(json.loads(line))]


def log_copy(tmp_path: Path) -> str:
    return (tmp_path / "store" / log_name(JOB, SHARD)).read_text(encoding="utf-8")


def items(*values: object) -> str:
    return json.dumps({"values": list(values)})


def sections(output: str) -> dict[int, list[str]]:
    """Index -> the lines between its delimiters; checks that delimiters pair up, in order."""
    found: dict[int, list[str]] = {}
    current: int | None = None
    for line in output.splitlines():
        begin = parse_begin(line)
        end = parse_end(line)
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


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*command: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*RUNNER, *command],
            env=runner_env(tmp_path, **env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# ------------------------------------------------------------------ records


def test_command_records_success_failure_and_timeout(tmp_path: Path) -> None:
    script = 'echo "working $1"; echo "trouble $1" >&2; [ "$1" = 2 ] && sleep 30; exit $(($1 % 2))'
    code, report, _ = run(
        tmp_path,
        "sh",
        "-c",
        script,
        "sh",
        "$(MICROTASK_INDEX)",
        MICROTASK_INDEXES="0-2",
        MICROTASK_TIMEOUT_SECONDS="0.5",
        MICROTASK_ATTEMPT="2",
        MICROTASK_POOL="cpu",
        MICROTASK_NODE="node-a",
    )
    assert code == 10
    assert report.failed == {1: IndexSet.parse("1"), 124: IndexSet.parse("2")}
    ok, failed, timed_out = records(tmp_path)
    for record in (ok, failed, timed_out):
        assert tuple(record) == RECORD_KEYS
        assert (record["v"], record["attempt"], record["job"], record["shard"]) == (1, 2, JOB, 12)
        assert (record["pool"], record["node"]) == ("cpu", "node-a")
        assert record["start"] == pytest.approx(time.time(), abs=30)
        assert record["result"] is None
        assert record["exception"] is None
    assert [r["index"] for r in (ok, failed, timed_out)] == [0, 1, 2]
    assert (ok["exitCode"], ok["outcome"], ok["error"]) == (0, "succeeded", None)
    assert (failed["exitCode"], failed["outcome"]) == (1, "failed")
    assert failed["error"] == "exit code 1: trouble 1"
    assert (timed_out["exitCode"], timed_out["outcome"]) == (124, "timeout")
    assert timed_out["error"] == "timed out after 0.5s: trouble 2"
    assert 0.5 <= timed_out["seconds"] < 5
    assert ok["seconds"] < 5


def test_record_lines_are_compact_and_follow_the_key_order(tmp_path: Path) -> None:
    run(tmp_path, "true", MICROTASK_INDEXES="7")
    line = (tmp_path / "store" / records_name(7, JOB, SHARD)).read_text()
    assert line.startswith('{"v":1,"index":7,"attempt":1,"job":"thumbs","shard":12,')
    assert '"pool":null,"node":null,' in line
    assert line.endswith(
        '"exitCode":0,"outcome":"succeeded","exception":null,"error":null,"result":null}\n'
    )


def test_a_command_error_keeps_the_end_of_a_long_stderr(tmp_path: Path) -> None:
    script = (
        'printf "start" >&2; i=0; while [ $i -lt 500 ]; do printf "0123456789" >&2; i=$((i+1));'
        ' done; echo " the end" >&2; exit 5'
    )
    code, report, _ = run(tmp_path, "sh", "-c", script, MICROTASK_INDEXES="0")
    assert code == 10
    (record,) = records(tmp_path)
    error = record["error"]
    assert len(error) <= MAX_RECORD_ERROR_CHARS
    assert error.startswith("exit code 5: …") and error.endswith("0123456789 the end")
    # The report keeps a shorter tail.
    assert len(report.errors[5]) < len(error)


def test_python_records(tmp_path: Path) -> None:
    values = ["dict", "none", "raise", "builtin", "exit3", "plain text", 42]
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-6",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items(*values),
    )
    assert code == 10
    assert report.succeeded == IndexSet.parse("0-1,5-6")
    assert report.failed == {1: IndexSet.parse("2-3"), 3: IndexSet.parse("4")}
    by_index = {r["index"]: r for r in records(tmp_path)}
    assert sorted(by_index) == list(range(7))
    assert by_index[0]["result"] == {"index": 0, "tags": ["a", "é"], "n": None}
    assert by_index[1]["result"] is None
    assert by_index[5]["result"] == "plain text"
    assert by_index[6]["result"] == 42
    for index in (0, 1, 5, 6):
        assert by_index[index]["outcome"] == "succeeded"
        assert by_index[index]["exception"] is None and by_index[index]["error"] is None

    raised = by_index[2]
    assert (raised["exitCode"], raised["outcome"]) == (1, "failed")
    assert raised["exception"] == "mt_records.MyError"
    assert raised["error"].startswith("Traceback (most recent call last):")
    assert 'in returns\n    raise MyError(f"bad {index}")' in raised["error"]
    assert raised["error"].endswith("mt_records.MyError: bad 2")
    assert "microtask_runner" not in raised["error"]  # the user's frames only
    assert report.errors[1] == "index 2: mt_records.MyError: bad 2"

    builtin = by_index[3]
    assert builtin["exception"] == "ValueError"
    assert len(builtin["error"]) == MAX_RECORD_ERROR_CHARS
    assert builtin["error"].startswith("…") and builtin["error"].endswith("x" * 100)

    exited = by_index[4]
    assert (exited["exitCode"], exited["exception"], exited["error"]) == (
        3,
        "SystemExit",
        "SystemExit(3)",
    )


def test_python_timeout_record(tmp_path: Path) -> None:
    code, _, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-1",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items("sleep", "dict"),
        MICROTASK_TIMEOUT_SECONDS="0.3",
    )
    assert code == 10
    timed_out, ok = records(tmp_path)
    assert (timed_out["exitCode"], timed_out["outcome"]) == (124, "timeout")
    assert timed_out["error"] == "timed out after 0.3s"
    assert timed_out["exception"] is None and timed_out["result"] is None
    assert ok["outcome"] == "succeeded"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("set", "the return value is not JSON-serialisable: TypeError: Object of type set"),
        ("nan", "the return value is not JSON-serialisable: ValueError: Out of range float"),
        (
            "big",
            "the result is 2.1 MB, more than the 1 MiB limit for results; "
            "write large outputs to your own storage and return where they are",
        ),
    ],
)
def test_python_results_that_fail_the_microtask(tmp_path: Path, kind: str, message: str) -> None:
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items(kind),
    )
    assert code == 10
    assert report.failed == {1: IndexSet.parse("0")}
    assert report.errors[1].startswith(f"index 0: {message}")
    (record,) = records(tmp_path)
    assert (record["exitCode"], record["outcome"], record["result"]) == (1, "failed", None)
    assert record["error"].startswith(message)
    assert record["exception"] is None


def test_python_return_values_are_ignored_without_a_store(tmp_path: Path) -> None:
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-1",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items("set", "big"),
        MICROTASK_OUTPUT_URL="<unset>",
    )
    assert code == 0
    assert report.succeeded == IndexSet.parse("0-1")
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------- $MICROTASK_OUTPUT


RESULT_SCRIPT = """
echo "$MICROTASK_OUTPUT" >> offered
case "$1" in
  json) printf '{"w": 20,\\n "tags": ["a", "b"]}\\n' > "$MICROTASK_OUTPUT" ;;
  text) printf 'hello world\\n\\n' > "$MICROTASK_OUTPUT" ;;
  number) echo 7 > "$MICROTASK_OUTPUT" ;;
  none) ;;
  empty) : > "$MICROTASK_OUTPUT" ;;
  big) head -c 1100000 /dev/zero | tr '\\0' 'a' > "$MICROTASK_OUTPUT" ;;
  binary) printf 'ok\\377\\376' > "$MICROTASK_OUTPUT" ;;
  dir) mkdir "$MICROTASK_OUTPUT" ;;
  failing) echo '{"partial": true}' > "$MICROTASK_OUTPUT"; exit 4 ;;
esac
"""


def test_command_results(tmp_path: Path) -> None:
    kinds = ["json", "text", "number", "none", "empty", "big", "binary", "dir", "failing"]
    code, report, _ = run(
        tmp_path,
        "sh",
        "-c",
        RESULT_SCRIPT,
        "sh",
        "$(MICROTASK_ITEM)",
        MICROTASK_INDEXES=f"0-{len(kinds) - 1}",
        MICROTASK_ITEMS=items(*kinds),
    )
    assert code == 10
    assert report.succeeded == IndexSet.parse("0-4")
    assert report.failed == {1: IndexSet.parse("5-7"), 4: IndexSet.parse("8")}
    got = {r["index"]: r for r in records(tmp_path)}
    assert got[0]["result"] == {"w": 20, "tags": ["a", "b"]}
    assert got[1]["result"] == "hello world\n"  # one trailing newline stripped
    assert got[2]["result"] == 7
    assert got[3]["result"] is None
    assert got[4]["result"] == ""
    assert got[5]["error"] == (
        "the result is 1.1 MB, more than the 1 MiB limit for results; "
        "write large outputs to your own storage and return where they are"
    )
    assert report.errors[1] == "index 5: " + got[5]["error"]
    assert got[6]["error"].startswith("the result written to $MICROTASK_OUTPUT is not UTF-8 text")
    assert got[7]["error"] == "$MICROTASK_OUTPUT must be a regular file, not a directory"
    for index in (5, 6, 7):
        assert (got[index]["exitCode"], got[index]["outcome"]) == (1, "failed")
        assert got[index]["result"] is None
    # A failed command's result is kept: it may say what went wrong.
    assert (got[8]["exitCode"], got[8]["result"]) == (4, {"partial": True})

    # A fresh path per microtask, in one private directory, removed with everything in it.
    offered = (tmp_path / "offered").read_text().split()
    assert len(set(offered)) == len(kinds)
    assert len({os.path.dirname(p) for p in offered}) == 1
    assert not os.path.exists(os.path.dirname(offered[0]))


def test_result_file_is_removed_after_each_microtask(tmp_path: Path) -> None:
    script = 'ls "$(dirname "$MICROTASK_OUTPUT")" >> seen; echo "$1" > "$MICROTASK_OUTPUT"'
    code, _, _ = run(
        tmp_path, "sh", "-c", script, "sh", "$(MICROTASK_INDEX)", MICROTASK_INDEXES="0-2"
    )
    assert code == 0
    assert (tmp_path / "seen").read_text() == ""  # never a file left from before
    assert [r["result"] for r in records(tmp_path)] == [0, 1, 2]


def test_command_results_without_a_store(tmp_path: Path) -> None:
    # $MICROTASK_OUTPUT is still offered (commands need not test for it); nothing is checked.
    code, report, _ = run(
        tmp_path,
        "sh",
        "-c",
        RESULT_SCRIPT,
        "sh",
        "$(MICROTASK_ITEM)",
        MICROTASK_INDEXES="0-1",
        MICROTASK_ITEMS=items("big", "binary"),
        MICROTASK_OUTPUT_URL="<unset>",
    )
    assert code == 0
    assert report.succeeded == IndexSet.parse("0-1")
    offered = (tmp_path / "offered").read_text().split()
    assert len(offered) == 2 and not os.path.exists(offered[0])


def test_result_limit_is_one_mebibyte() -> None:
    assert MAX_RESULT_BYTES == 1024 * 1024


# -------------------------------------------------------------- delimiters


def test_delimiters_bracket_command_output(tmp_path: Path) -> None:
    script = 'echo "out $1"; echo "err $1" >&2; echo "more out $1"; exit $(($1 % 2))'
    code, _, output = run(
        tmp_path,
        "sh",
        "-c",
        script,
        "sh",
        "$(MICROTASK_INDEX)",
        MICROTASK_INDEXES="3-5",
        MICROTASK_ATTEMPT="4",
        MICROTASK_OUTPUT_URL="<unset>",
    )
    assert code == 10
    found = sections(output)
    assert list(found) == [3, 4, 5]
    for index, lines in found.items():
        assert sorted(lines) == sorted([f"out {index}", f"err {index}", f"more out {index}"])
        assert lines.index(f"out {index}") < lines.index(f"more out {index}")
    # Exact lines, with the attempt and exit code; failure log lines come after the end line.
    lines = output.splitlines()
    ends = [parse_end(line) for line in lines if parse_end(line)]
    assert ends == [(3, 4, 1), (4, 4, 0), (5, 4, 1)]
    assert begin_line(4, 4) in lines
    at = next(
        i for i, line in enumerate(lines) if line.startswith("microtask-runner: index 3 failed")
    )
    assert parse_end(lines[at - 1]) == (3, 4, 1)


@pytest.mark.parametrize("log_copy", ["true", "false"])
def test_delimiters_bracket_python_output_of_every_kind(tmp_path: Path, log_copy: str) -> None:
    code, _, output = run(
        tmp_path,
        MICROTASK_INDEXES="0-2",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items("dict", "raise", "none"),
        MICROTASK_LOG_COPY=log_copy,
    )
    assert code == 10
    found = sections(output)
    assert list(found) == [0, 1, 2]
    for index, lines in found.items():
        for text in ("out", "err", "fd1", "fd2", "child out", "child err"):
            assert f"{text} {index}" in lines, (text, index, lines)
    # The first failure's traceback is the microtask's output too.
    assert "mt_records.MyError: bad 1" in found[1]
    assert "Traceback (most recent call last):" in found[1]


def test_a_line_written_in_pieces_stays_whole_in_the_merged_output(tmp_path: Path) -> None:
    code, _, output = run(tmp_path, MICROTASK_INDEXES="0-1", MICROTASK_CALLABLE="mt_records:halves")
    assert code == 0
    for index, lines in sections(output).items():
        assert sorted(lines) == [f"first half second half {index}", f"whole {index}"], lines
    copy = log_copy(tmp_path)
    assert "first half second half 1\n" in copy


def test_delimiter_lines_round_trip() -> None:
    assert parse_begin(begin_line(17, 2)) == (17, 2)
    assert parse_end(end_line(17, 2, 124, 0.5)) == (17, 2, 124)
    assert end_line(1, 1, 0, 1.23456) == "::microtask:: index=1 attempt=1 end exit=0 seconds=1.235"
    assert parse_begin("::microtask:: index=1 attempt=1 end exit=0 seconds=1") is None
    assert parse_end(begin_line(1, 1)) is None
    assert parse_begin("  " + begin_line(1, 1)) is None


# ---------------------------------------------------------------- log copy


def test_log_copy_is_the_runner_output_in_command_mode(tmp_path: Path) -> None:
    script = 'echo "out $1"; echo "err $1" >&2; exit $(($1 % 2))'
    code, _, output = run(
        tmp_path, "sh", "-c", script, "sh", "$(MICROTASK_INDEX)", MICROTASK_INDEXES="0-3"
    )
    assert code == 10
    copy = log_copy(tmp_path)
    assert copy == output
    assert copy.startswith("microtask-runner: running 4 microtasks: 0-3\n")
    assert "microtask-runner: index 1 failed" in copy
    assert copy.endswith("2 succeeded, 2 failed (exit 1: 2)\n")


def test_log_copy_is_the_runner_output_in_python_mode(tmp_path: Path) -> None:
    code, _, output = run(
        tmp_path,
        MICROTASK_INDEXES="0-2",
        MICROTASK_CALLABLE="mt_records:returns",
        MICROTASK_ITEMS=items("dict", "raise", "none"),
    )
    assert code == 10
    copy = log_copy(tmp_path)
    # Same bytes; stdout and stderr of one microtask may interleave differently.
    assert sorted(copy.splitlines()) == sorted(output.splitlines())
    assert list(sections(copy)) == [0, 1, 2]
    assert "child err 2" in sections(copy)[2]
    assert copy.splitlines()[-1].endswith("2 succeeded, 1 failed (exit 1: 1)")


def test_no_log_copy_when_asked(tmp_path: Path) -> None:
    for mode in ({"MICROTASK_CALLABLE": "mt_records:returns"}, {}):
        command = [] if mode else ["true"]
        code, _, _ = run(
            tmp_path, *command, MICROTASK_INDEXES="0-1", MICROTASK_LOG_COPY="False", **mode
        )
        assert code == 0
        assert not (tmp_path / "store" / "logs").exists()
        assert [r["index"] for r in records(tmp_path)][-2:] == [0, 1]


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("mode", ["command", "python"])
def test_sigterm_keeps_finished_records_only(
    tmp_path: Path, background: Callable[..., subprocess.Popen[bytes]], mode: str
) -> None:
    started = tmp_path / "started"
    if mode == "command":
        script = (
            f'echo "$1" >> {started}; echo "{{\\"done\\": $1}}" > "$MICROTASK_OUTPUT";'
            ' [ "$1" -ge 2 ] && exec sleep 30; true'
        )
        proc = background("sh", "-c", script, "sh", "$(MICROTASK_INDEX)", MICROTASK_INDEXES="0-5")
    else:
        proc = background(
            MICROTASK_INDEXES="0-5",
            MICROTASK_CALLABLE="mt_records:slow_from_two",
            STARTED=str(started),
        )
    wait_for(lambda: started.exists() and started.read_text().split() == ["0", "1", "2"])
    wait_for(lambda: len(records(tmp_path)) == 2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 143
    got = records(tmp_path)
    assert [(r["index"], r["outcome"], r["result"]) for r in got] == [
        (0, "succeeded", {"done": 0}),
        (1, "succeeded", {"done": 1}),
    ]
    text = output.decode()
    assert "stopped by SIGTERM" in text
    # The interrupted microtask's output is closed with the signal's exit code.
    assert parse_end(text.splitlines()[-2]) == (2, 1, 143)
    copy = log_copy(tmp_path)
    assert copy.rstrip("\n").endswith(text.rstrip("\n").splitlines()[-1])
    assert list(sections(copy)) == [0, 1, 2]


def test_sigkill_leaves_every_finished_record(
    tmp_path: Path, background: Callable[..., subprocess.Popen[bytes]]
) -> None:
    started = tmp_path / "started"
    proc = background(
        MICROTASK_INDEXES="0-5", MICROTASK_CALLABLE="mt_records:slow_from_two", STARTED=str(started)
    )
    wait_for(lambda: started.exists() and started.read_text().split() == ["0", "1", "2"])
    # The runner relays captured output as it arrives (a signal tells it some did), so what
    # the microtask printed reaches the log copy a moment after the print: once there, a
    # SIGKILL must not take it back (nothing held in the runner's memory).
    wait_for(lambda: "working on 2" in log_copy(tmp_path))
    proc.kill()
    proc.communicate(timeout=10)
    assert [r["index"] for r in records(tmp_path)] == [0, 1]
    assert "working on 2" in log_copy(tmp_path)


# --------------------------------------------------------- broken stores


def test_an_unwritable_store_gives_one_warning(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for mode in ({"MICROTASK_CALLABLE": "mt_records:returns"}, {}):
        command = [] if mode else ["true"]
        code, report, output = run(
            tmp_path,
            *command,
            MICROTASK_INDEXES="0-4",
            MICROTASK_OUTPUT_URL=str(tmp_path / "a-file" / "store"),
            **mode,
        )
        assert code == 0
        assert report.succeeded == IndexSet.parse("0-4")
        warnings = [line for line in output.splitlines() if "warning" in line]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(
            f"microtask-runner: warning: cannot write to the result store {tmp_path}/a-file/store:"
        )
        assert "Not a directory" in warnings[0]
        assert "5 succeeded, 0 failed" in output


def test_s3_without_its_extra_is_a_runner_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hide microtask_runner.s3 and boto3, whether or not they are installed here.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys
            class _Block:
                def find_spec(self, name, path=None, target=None):
                    if name in ("boto3", "microtask_runner.s3"):
                        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            sys.meta_path.insert(0, _Block())
            """
        )
    )
    code, report, output = run(
        tmp_path,
        "true",
        MICROTASK_INDEXES="0-1",
        MICROTASK_OUTPUT_URL="s3://bucket/prefix",
        PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
    )
    assert code == 2
    assert report.runner_error is not None
    assert "pip install 'microtask[s3]'" in report.runner_error
    assert report.runner_error.startswith("MICROTASK_OUTPUT_URL: result store 's3://bucket/prefix'")
    assert "pip install 'microtask[s3]'" in output


# ------------------------------------------------------- command not found


def test_command_not_found_fails_every_index_with_records(tmp_path: Path) -> None:
    code, report, output = run(tmp_path, "no-such-program-xyz", "--flag", MICROTASK_INDEXES="5-7,9")
    assert code == 10
    assert report.runner_error is None
    assert report.failed == {127: IndexSet.parse("5-7,9")}
    assert report.count == 4
    got = records(tmp_path, first=5)
    assert [r["index"] for r in got] == [5, 6, 7, 9]
    for record in got:
        assert (record["exitCode"], record["outcome"], record["seconds"]) == (127, "failed", 0)
        assert record["error"] == "command not found: no-such-program-xyz (searched PATH)"
    assert "command not found: no-such-program-xyz (searched PATH)" in log_copy(tmp_path)
    assert "0 succeeded, 4 failed (exit 127: 4)" in output


def test_command_not_executable_fails_every_index_with_126(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text("#!/bin/sh\n")
    code, report, _ = run(tmp_path, "./script.sh", MICROTASK_INDEXES="0-1")
    assert code == 10
    assert report.failed == {126: IndexSet.parse("0-1")}
    assert [r["error"] for r in records(tmp_path)] == [
        "cannot run ./script.sh: Permission denied"
    ] * 2


# ------------------------------------------------------- names and sinks


def test_records_names_sort_in_index_order() -> None:
    names = [
        records_name(first, "job-a", shard)
        for first, shard in [(1000, 3), (2, 10), (10, 1), (0, 2)]
    ]
    assert sorted(names) == [
        "records/000000000000-job-a-2.jsonl",
        "records/000000000002-job-a-10.jsonl",
        "records/000000000010-job-a-1.jsonl",
        "records/000000001000-job-a-3.jsonl",
    ]
    for name, first, shard in [(names[0], 1000, 3), (names[3], 0, 2)]:
        assert parse_records_name(name.rpartition("/")[2]) == (first, "job-a", shard)
    assert parse_records_name("000000000001-job.x-7.jsonl") == (1, "job.x", 7)
    assert parse_records_name("1-job-7.jsonl") is None
    assert parse_records_name("000000000001-Job-7.jsonl") is None
    assert parse_records_name("000000000001-job-7.log") is None
    # A pod's own retries, in a file of their own named by the first index retried.
    again = records_name(3, "job-a", 0, again=2)
    assert again == "records/000000000003-job-a-0.a2.jsonl"
    assert parse_records_name(again.rpartition("/")[2]) == (3, "job-a", 0)
    assert parse_records_name("000000000003-job-a.a2-5.jsonl") == (3, "job-a.a2", 5)
    assert parse_records_name("000000000003-job-a-0.a.jsonl") is None
    assert log_name("job-a", 3) == "logs/job-a-3.log"


def test_directory_sink(tmp_path: Path) -> None:
    sink = DirectorySink(str(tmp_path / "root"))
    sink.append("records/a.jsonl", b'{"x":1}\n')
    assert (tmp_path / "root" / "records" / "a.jsonl").read_bytes() == b'{"x":1}\n'  # at once
    sink.append("records/a.jsonl", b'{"x":2}\n')
    sink.append("logs/a.log", b"partial")
    sink.append("logs/a.log", b" line\n")
    sink.flush(final=False)
    sink.flush(final=True)
    sink.close()
    sink.close()
    assert (tmp_path / "root" / "records" / "a.jsonl").read_bytes() == b'{"x":1}\n{"x":2}\n'
    assert (tmp_path / "root" / "logs" / "a.log").read_bytes() == b"partial line\n"
    again = DirectorySink(str(tmp_path / "root"))
    again.append("records/a.jsonl", b'{"x":3}\n')  # appends, never truncates
    again.close()
    assert (tmp_path / "root" / "records" / "a.jsonl").read_bytes().count(b"\n") == 3
    for bad in ("", "/etc/passwd", "../escape", "records/../../x", "records//x"):
        with pytest.raises(ValueError, match="not a store file name"):
            DirectorySink(str(tmp_path)).append(bad, b"x")


@pytest.mark.parametrize(("setting", "syncs"), [(None, True), ("true", True), ("False", False)])
def test_a_directory_store_syncs_at_the_end_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, syncs: bool
) -> None:
    synced: list[int] = []
    monkeypatch.setattr("microtask_runner.output.os.fsync", synced.append)
    env = {} if setting is None else {"MICROTASK_STORE_SYNC": setting}
    sink = open_sink(str(tmp_path), env)
    sink.append("records/a.jsonl", b"{}\n")
    sink.flush(final=False)
    assert synced == []
    sink.flush(final=True)
    sink.close()
    assert bool(synced) is syncs


def test_open_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sink = open_sink("relative/store", {})
    assert isinstance(sink, DirectorySink) and sink.root == str(tmp_path / "relative" / "store")
    file_sink = open_sink(f"file://{tmp_path}/x", {})
    assert isinstance(file_sink, DirectorySink) and file_sink.root == f"{tmp_path}/x"
    assert not (tmp_path / "relative").exists()  # nothing is written up front
    with pytest.raises(SinkUnavailable, match="unsupported scheme gs://"):
        open_sink("gs://bucket", {})
    with pytest.raises(SinkUnavailable, match="empty"):
        open_sink(" ", {})


class _FailingSink:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def append(self, name: str, data: bytes) -> None:
        self.calls.append(f"append {name}")
        raise OSError(28, "No space left on device")

    def flush(self, final: bool) -> None:
        self.calls.append(f"flush {final}")

    def close(self) -> None:
        self.calls.append("close")


def test_result_store_warns_once_and_stops() -> None:
    sink = _FailingSink()
    warnings: list[str] = []
    store = ResultStore(
        sink, description="/data", records="records/r.jsonl", log="logs/l.log", warn=warnings.append
    )
    store.record("{}\n")
    assert sink.calls == []  # records wait for a push
    store.push()
    store.copy_log(b"output")
    store.record("{}\n")
    store.flush(final=False)
    store.close()
    store.close()
    assert sink.calls == ["append records/r.jsonl", "close"]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: cannot write to the result store /data: OSError:")
    assert "No space left on device" in warnings[0]
