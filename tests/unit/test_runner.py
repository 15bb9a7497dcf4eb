"""The runner with real subprocesses, real signals and real report files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from microtask_runner import cli
from microtask_runner.execute import (
    CommandExecutor,
    Finished,
    Outcomes,
    Progress,
    ReportFile,
    Signals,
)
from microtask_runner.indexset import IndexSet
from microtask_runner.items import ItemsError, item_text, load_items
from microtask_runner.report import Report

HELPERS = str(Path(__file__).parent / "runner_helpers")
RUNNER = [sys.executable, "-m", "microtask_runner"]


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTASK_")}
    env["MICROTASK_REPORT_PATH"] = str(tmp_path / "report.json")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HELPERS, env.get("PYTHONPATH")) if p)
    env["HELPER_LOG"] = str(tmp_path / "calls.jsonl")
    env.update(extra)
    return env


def run(tmp_path: Path, *command: str, **env: str) -> tuple[int, Report, str]:
    """Run the runner to completion; return its exit code, its report and its stderr."""
    proc = subprocess.run(
        [*RUNNER, *command],
        env=runner_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    report = Report.decode((tmp_path / "report.json").read_text(encoding="utf-8"))
    return proc.returncode, report, proc.stderr


def calls(tmp_path: Path) -> list[list[object]]:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def read_report(path: Path) -> Report | None:
    try:
        return Report.decode(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def gone(pid: int) -> bool:
    """True when the process no longer runs (exited, or a zombie nobody reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start runners in the background; whatever is left is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*command: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*RUNNER, *command],
            env=runner_env(tmp_path, **env),
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None and not proc.stderr.closed:
            proc.communicate()
        proc.wait()


# ------------------------------------------------------------- command mode


def test_all_succeed(tmp_path: Path) -> None:
    code, report, stderr = run(tmp_path, "--", "true", MICROTASK_INDEXES="0-4,10")
    assert code == 0
    assert report.succeeded == IndexSet.parse("0-4,10")
    assert report.failed == {}
    assert report.current is None
    assert report.count == 6
    assert report.covered_through is None
    assert report.runner_error is None
    assert "6 of 6 microtasks" in stderr and "6 succeeded, 0 failed" in stderr


def test_mixed_exit_codes(tmp_path: Path) -> None:
    script = 'echo "out $MICROTASK_INDEX"; echo "bad thing $MICROTASK_INDEX" >&2; exit $(($1 % 3))'
    code, report, stderr = run(
        tmp_path, "sh", "-c", script, "sh", "$(MICROTASK_INDEX)", MICROTASK_INDEXES="0-8"
    )
    assert code == 10
    assert report.succeeded == IndexSet.parse("0,3,6")
    assert report.failed == {1: IndexSet.parse("1,4,7"), 2: IndexSet.parse("2,5,8")}
    assert report.errors[1] == "index 1: exit code 1: bad thing 1"
    assert report.errors[2] == "index 2: exit code 2: bad thing 2"
    # The child's stderr passes through; one short line per failure; a summary.
    assert "bad thing 4" in stderr
    assert "index 4 failed (exit 1" in stderr
    assert "6 failed (exit 1: 3, exit 2: 3)" in stderr


def test_substitution_and_environment_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    items = json.dumps({"values": {"0": "plain", "1": {"k": [1, 2]}, "2": 7}})
    script = 'printf "%s|%s|%s|%s|%s" "$1" "$2" "$3" "$MICROTASK_INDEX" "$MICROTASK_ITEM" > "$4/$1"'
    code, _, _ = run(
        tmp_path,
        "sh",
        "-c",
        script,
        "sh",
        "$(MICROTASK_INDEX)",
        "item=$(MICROTASK_ITEM)",
        "$(echo not run); rm -rf / #",  # passed verbatim: no shell in between
        str(out),
        MICROTASK_INDEXES="0-2",
        MICROTASK_ITEMS=items,
    )
    assert code == 0
    literal = "$(echo not run); rm -rf / #"
    assert (out / "0").read_text() == f"0|item=plain|{literal}|0|plain"
    assert (out / "1").read_text() == f'1|item={{"k": [1, 2]}}|{literal}|1|{{"k": [1, 2]}}'
    assert (out / "2").read_text() == f"2|item=7|{literal}|2|7"


def test_options_override_the_environment(tmp_path: Path) -> None:
    code, report, _ = run(
        tmp_path,
        "--indexes",
        "3-4",
        "--report",
        str(tmp_path / "report.json"),
        "true",  # the command may start without "--"
        MICROTASK_INDEXES="0-99",
        MICROTASK_REPORT_PATH=str(tmp_path / "elsewhere.json"),
    )
    assert code == 0
    assert report.succeeded == IndexSet.parse("3-4")


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f'if [ "$1" = 1 ]; then sleep 30 & echo $! > {pid_file}; wait; fi'
    began = time.monotonic()
    code, report, _ = run(
        tmp_path,
        "sh",
        "-c",
        script,
        "sh",
        "$(MICROTASK_INDEX)",
        MICROTASK_INDEXES="0-2",
        MICROTASK_TIMEOUT_SECONDS="0.5",
    )
    assert time.monotonic() - began < 5
    assert code == 10
    assert report.succeeded == IndexSet.parse("0,2")
    assert report.failed == {124: IndexSet.parse("1")}
    assert report.errors[124] == "index 1: timed out after 0.5s"
    # The background sleep was in the microtask's process group: it is gone too.
    wait_for(lambda: gone(int(pid_file.read_text())), timeout=3)


def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    began = time.monotonic()
    code, report, _ = run(
        tmp_path,
        "sh",
        "-c",
        "trap '' TERM; sleep 30",
        MICROTASK_INDEXES="0",
        MICROTASK_TIMEOUT_SECONDS="0.2",
    )
    assert code == 10
    assert report.failed == {124: IndexSet.parse("0")}
    assert time.monotonic() - began < 6  # 0.2 s + the 2 s grace, not 30 s


def test_child_killed_by_a_signal(tmp_path: Path) -> None:
    code, report, _ = run(tmp_path, "sh", "-c", "kill -9 $$", MICROTASK_INDEXES="0")
    assert code == 10
    assert report.failed == {137: IndexSet.parse("0")}
    assert report.errors[137] == "index 0: killed by SIGKILL"


def test_command_not_runnable_per_microtask(tmp_path: Path) -> None:
    (tmp_path / "noexec.sh").write_text("#!/bin/sh\n")
    code, report, _ = run(tmp_path, "./$(MICROTASK_ITEM)", MICROTASK_INDEXES="0")
    assert code == 10
    assert report.failed == {127: IndexSet.parse("0")}
    assert report.errors[127] == "index 0: command not found: ./0"
    code, report, _ = run(tmp_path, "./noexec-$(MICROTASK_INDEX).sh", MICROTASK_INDEXES="0")
    assert report.failed == {127: IndexSet.parse("0")}
    code, report, _ = run(
        tmp_path,
        "./noexec$(MICROTASK_ITEM)",
        MICROTASK_INDEXES="0",
        MICROTASK_ITEMS='{"values": [".sh"]}',
    )
    assert code == 10
    assert report.failed == {126: IndexSet.parse("0")}
    assert report.errors[126] == "index 0: cannot run ./noexec.sh: Permission denied"


@pytest.mark.parametrize(
    ("program", "code", "error"),
    [
        ("no-such-program-xyz", 127, "command not found: no-such-program-xyz (searched PATH)"),
        ("./missing.sh", 127, "command not found: ./missing.sh"),
        ("./noexec.sh", 126, "cannot run ./noexec.sh: Permission denied"),
        ("noexec.sh", 126, "cannot run noexec.sh: Permission denied"),
    ],
)
def test_command_that_cannot_run_fails_every_microtask(
    tmp_path: Path, program: str, code: int, error: str
) -> None:
    (tmp_path / "noexec.sh").write_text("#!/bin/sh\n")
    # Not a runner error (the operator would retry the shard): failures it will not retry.
    exit_code, report, stderr = run(
        tmp_path, program, MICROTASK_INDEXES="0-2,9", PATH=f"{os.environ['PATH']}:{tmp_path}"
    )
    assert exit_code == 10
    assert report.runner_error is None
    assert report.failed == {code: IndexSet.parse("0-2,9")}
    assert report.errors[code] == f"index 0: {error}"
    assert f"{error}: the 4 microtasks of this shard fail with exit code {code}" in stderr


def test_items_from_file_lines_and_json(tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_text("alpha\nbeta gamma\r\n\ndelta\n  \nepsilon\n")
    (tmp_path / "items.json").write_text(json.dumps([1, "x", {"k": 2}, None]))
    script = 'printf "%s\\n" "$1" >> seen'
    for spec, expected in (
        # the blank line is not an item
        ({"file": "lines.txt", "format": "lines"}, ["alpha", "beta gamma", "delta", "epsilon"]),
        ({"file": "items.json", "format": "json"}, ["1", "x", '{"k": 2}', "null"]),
        ({"range": {"start": 100, "step": 5}}, ["100", "105", "110", "115"]),
    ):
        (tmp_path / "seen").unlink(missing_ok=True)
        code, report, _ = run(
            tmp_path,
            "sh",
            "-c",
            script,
            "sh",
            "$(MICROTASK_ITEM)",
            MICROTASK_INDEXES="0-3",
            MICROTASK_ITEMS=json.dumps(spec),
        )
        assert code == 0, report.runner_error
        assert (tmp_path / "seen").read_text().split("\n")[:-1] == expected


def test_empty_index_set(tmp_path: Path) -> None:
    code, report, _ = run(tmp_path, "true", MICROTASK_INDEXES="")
    assert code == 0
    assert report == Report()


def test_compact_index_set_input(tmp_path: Path) -> None:
    indexes = IndexSet.from_indexes(range(0, 600, 2))
    assert indexes.to_compact().startswith("z:")
    code, report, _ = run(tmp_path, "true", MICROTASK_INDEXES=indexes.to_compact())
    assert code == 0
    assert report.succeeded == indexes


def test_many_scattered_failures_keep_the_report_within_budget(tmp_path: Path) -> None:
    code, report, _ = run(
        tmp_path, MICROTASK_INDEXES="0-2999", MICROTASK_CALLABLE="mt_helpers:flaky", HELPER_LOG=""
    )
    assert code == 10
    assert len((tmp_path / "report.json").read_bytes()) <= 4096
    assert report.succeeded == IndexSet.from_indexes(range(0, 3000, 2))
    assert report.failed == {1: IndexSet.from_indexes(range(1, 3000, 2))}
    assert report.count == 3000


# --------------------------------------------------------------- python mode


def test_python_mode(tmp_path: Path) -> None:
    items = json.dumps({"values": {"0": {"a": 1}, "1": "b", "2": [3]}})
    code, report, _ = run(
        tmp_path, MICROTASK_INDEXES="0-2", MICROTASK_CALLABLE="mt_helpers:ok", MICROTASK_ITEMS=items
    )
    assert code == 0
    assert report.succeeded == IndexSet.parse("0-2")
    assert calls(tmp_path) == [[0, {"a": 1}], [1, "b"], [2, [3]]]  # items are JSON values


def test_python_mode_dotted_callable_and_flag(tmp_path: Path) -> None:
    code, _, _ = run(
        tmp_path, "--callable", "mt_helpers:Worker.run", "--indexes", "5", MICROTASK_INDEXES="0"
    )
    assert code == 0
    assert calls(tmp_path) == [[5, 5]]  # no items: the item is the index


def test_python_mode_exceptions(tmp_path: Path) -> None:
    code, report, stderr = run(
        tmp_path, MICROTASK_INDEXES="0-5", MICROTASK_CALLABLE="mt_helpers:flaky"
    )
    assert code == 10
    assert report.succeeded == IndexSet.parse("0,2,4")
    assert report.failed == {1: IndexSet.parse("1,3,5")}
    assert report.errors[1] == "index 1: ValueError: odd index 1"
    assert stderr.count("Traceback") == 1  # the first failure only
    assert "index 5 failed (exit 1" in stderr


def test_python_mode_system_exit(tmp_path: Path) -> None:
    items = json.dumps({"values": {"0": 0, "1": 3, "2": None, "3": "bye", "4": 300}})
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-4",
        MICROTASK_CALLABLE="mt_helpers:exits",
        MICROTASK_ITEMS=items,
    )
    assert code == 10
    assert report.succeeded == IndexSet.parse("0,2")
    assert report.failed == {3: IndexSet.parse("1"), 1: IndexSet.parse("3-4")}
    assert report.errors[3] == "index 1: SystemExit(3)"
    assert report.errors[1] == "index 3: SystemExit('bye')"


def test_python_mode_timeout(tmp_path: Path) -> None:
    began = time.monotonic()
    code, report, _ = run(
        tmp_path,
        MICROTASK_INDEXES="0-2",
        MICROTASK_CALLABLE="mt_helpers:sleepy",
        MICROTASK_TIMEOUT_SECONDS="0.3",
    )
    assert time.monotonic() - began < 5
    assert code == 10
    assert report.succeeded == IndexSet.parse("0,2")
    assert report.failed == {124: IndexSet.parse("1")}


# ------------------------------------------------------------- bad input


BAD_INPUTS: list[tuple[list[str], dict[str, str], str]] = [
    (["true"], {}, "MICROTASK_INDEXES is not set"),
    (["true"], {"MICROTASK_INDEXES": "0-9,5-3"}, "bad range '5-3' in index set"),
    (["true"], {"MICROTASK_INDEXES": "0-3", "MICROTASK_ITEMS": "{"}, "not valid JSON"),
    (
        ["true"],
        {"MICROTASK_INDEXES": "0-3", "MICROTASK_ITEMS": '{"values": {"0": 1}}'},
        "no item for indexes 1-3",
    ),
    (
        ["true"],
        {"MICROTASK_INDEXES": "0-3", "MICROTASK_ITEMS": '{"file": "/nonexistent/items"}'},
        "cannot read items file /nonexistent/items",
    ),
    (["true"], {"MICROTASK_INDEXES": "0", "MICROTASK_TIMEOUT_SECONDS": "soon"}, "not a number"),
    (["true"], {"MICROTASK_INDEXES": "0", "MICROTASK_TIMEOUT_SECONDS": "-1"}, "positive"),
    ([], {"MICROTASK_INDEXES": "0"}, "nothing to run"),
    (
        ["true"],
        {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "mt_helpers:ok"},
        "not both",
    ),
    (
        ["true"],
        {"MICROTASK_INDEXES": "0", "MICROTASK_OUTPUT_URL": "store", "MICROTASK_JOB": "j"},
        "MICROTASK_SHARD not",
    ),
    (
        ["true"],
        {
            "MICROTASK_INDEXES": "0",
            "MICROTASK_OUTPUT_URL": "store",
            "MICROTASK_JOB": "Not_A_Name",
            "MICROTASK_SHARD": "1",
        },
        "cannot name records",
    ),
    (["true"], {"MICROTASK_INDEXES": "0", "MICROTASK_ATTEMPT": "0"}, "not a positive integer"),
    (["true"], {"MICROTASK_INDEXES": "0", "MICROTASK_SHARD": "-1"}, "not a shard number"),
    (
        ["true"],
        {
            "MICROTASK_INDEXES": "0",
            "MICROTASK_OUTPUT_URL": "gs://bucket/x",
            "MICROTASK_JOB": "j",
            "MICROTASK_SHARD": "1",
        },
        "unsupported scheme gs://",
    ),
    ([], {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "mt_helpers"}, "module:function"),
    ([], {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "nope_xyz:f"}, "cannot import"),
    (
        [],
        {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "mt_broken:f"},
        "RuntimeError: this module is broken on purpose",
    ),
    ([], {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "mt_helpers:nope"}, "no attribute"),
    (
        [],
        {"MICROTASK_INDEXES": "0", "MICROTASK_CALLABLE": "mt_helpers:not_callable"},
        "not callable",
    ),
    (["--bogus", "true"], {"MICROTASK_INDEXES": "0"}, "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_runner_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    case: tuple[list[str], dict[str, str], str],
) -> None:
    args, env, message = case
    # In-process: the checks happen before anything runs, and this is much faster.
    for key in list(os.environ):
        if key.startswith("MICROTASK_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MICROTASK_REPORT_PATH", str(tmp_path / "report.json"))
    monkeypatch.syspath_prepend(HELPERS)
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    report = Report.decode((tmp_path / "report.json").read_text())
    assert report.runner_error is not None
    assert message in report.runner_error
    assert report.reported() == IndexSet.EMPTY
    assert message in capfd.readouterr().err


def test_bad_input_through_the_console_script(tmp_path: Path) -> None:
    code, report, stderr = run(tmp_path, "true", MICROTASK_INDEXES="1,x")
    assert code == 2
    assert report.runner_error == "MICROTASK_INDEXES: bad part 'x' in index set: not a number"
    assert "error: MICROTASK_INDEXES" in stderr


def test_help_and_version() -> None:
    for flag in ("--help", "--version"):
        proc = subprocess.run([*RUNNER, flag], capture_output=True, text=True, check=False)
        assert proc.returncode == 0
        assert "microtask-runner" in proc.stdout


def test_unwritable_report_path_does_not_stop_the_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*RUNNER, "true"],
        env=runner_env(
            tmp_path, MICROTASK_INDEXES="0-2", MICROTASK_REPORT_PATH="/nonexistent/dir/report"
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert "cannot write the report to /nonexistent/dir/report" in proc.stderr


# -------------------------------------------------- progress and signals


def test_partial_report_while_running_and_sigterm(
    tmp_path: Path, background: Callable[..., subprocess.Popen[str]]
) -> None:
    pid_file = tmp_path / "child.pid"
    script = f'if [ "$1" -ge 3 ]; then echo $$ > {pid_file}; exec sleep 30; fi'
    proc = background("sh", "-c", script, "sh", "$(MICROTASK_INDEX)", MICROTASK_INDEXES="0-9")
    path = tmp_path / "report.json"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")

    # While index 3 runs, the report already holds 0-2, and names 3 as running.
    partial = read_report(path)
    assert partial is not None
    assert partial.succeeded == IndexSet.parse("0-2")
    assert partial.current == 3

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 143
    report = read_report(path)
    assert report is not None
    assert report.succeeded == IndexSet.parse("0-2")
    assert report.failed == {}  # the interrupted microtask is not a failure
    assert report.current is None  # ... and is not charged
    assert report.unreported(IndexSet.parse("0-9")) == IndexSet.parse("3-9")
    # The signal was forwarded to the child.
    wait_for(lambda: gone(int(pid_file.read_text())), timeout=3)


def test_sigterm_report_is_written_before_a_stubborn_child_exits(
    tmp_path: Path, background: Callable[..., subprocess.Popen[str]]
) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; echo $$ > {pid_file}; sleep 30"
    proc = background("sh", "-c", script, MICROTASK_INDEXES="0-1")
    path = tmp_path / "report.json"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    report = read_report(path)
    assert report is not None and report.current == 0

    proc.send_signal(signal.SIGTERM)
    # Kubernetes would SIGKILL everything after the grace period; by then the
    # report must already say that nothing is to be charged.
    wait_for(lambda: (r := read_report(path)) is not None and r.current is None, timeout=3)
    assert proc.poll() is None
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    assert proc.wait(timeout=5) == 143


def test_sigterm_in_python_mode(
    tmp_path: Path, background: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = background(MICROTASK_INDEXES="0-5", MICROTASK_CALLABLE="mt_helpers:slow_from_two")
    wait_for(lambda: len(calls(tmp_path)) == 3)
    partial = read_report(tmp_path / "report.json")
    assert partial is not None and partial.current == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 143
    report = read_report(tmp_path / "report.json")
    assert report is not None
    assert report.succeeded == IndexSet.parse("0-1")
    assert report.failed == {}
    assert report.current is None
    _, stderr = proc.communicate()
    assert "stopped by SIGTERM" in stderr


def test_a_crash_leaves_current_for_attribution(
    tmp_path: Path, background: Callable[..., subprocess.Popen[str]]
) -> None:
    # SIGKILL (OOM, node loss) gives the runner no chance: the last report names index 2.
    proc = background(MICROTASK_INDEXES="0-5", MICROTASK_CALLABLE="mt_helpers:slow_from_two")
    wait_for(lambda: len(calls(tmp_path)) == 3)
    wait_for(lambda: (r := read_report(tmp_path / "report.json")) is not None and r.current == 2)
    proc.kill()
    proc.wait(timeout=5)
    report = read_report(tmp_path / "report.json")
    assert report is not None
    # Outcomes may lag a little behind (reporting is rate-limited); `current` never does.
    assert report.succeeded <= IndexSet.parse("0-1")
    assert report.current == 2


# ----------------------------------------------------------------- items


def test_item_text() -> None:
    assert item_text("a b") == "a b"
    assert item_text(5) == "5"
    assert item_text(None) == "null"
    assert item_text({"k": [1]}) == '{"k": [1]}'


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("[1]", "must be a JSON object"),
        ("{}", "exactly one of"),
        ('{"range": {}, "values": {}}', "exactly one of"),
        ('{"range": 5}', "range must be an object"),
        ('{"range": {"start": "0"}}', "range.start must be an integer"),
        ('{"values": 5}', "values must be an object"),
        ('{"values": {"x": 1}}', "is not an index"),
        ('{"file": ""}', "must be a path"),
        ('{"file": "f", "format": "csv"}', "'lines' or 'json'"),
    ],
)
def test_items_errors(spec: str, message: str) -> None:
    with pytest.raises(ItemsError, match=message):
        load_items(spec)


def test_items_sources(tmp_path: Path) -> None:
    assert load_items(None).get(7) == 7
    assert load_items("  ").get(7) == 7
    assert load_items('{"range": {"start": 10, "step": -2}}').get(3) == 4
    assert load_items('{"values": ["a", "b"]}').get(1) == "b"
    mapped = load_items('{"values": {"4": "x"}}')
    assert mapped.get(4) == "x"
    mapped.check(IndexSet.parse("4"))
    with pytest.raises(ItemsError, match="no item for index 5"):
        mapped.get(5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ItemsError, match="must hold a JSON array"):
        load_items(json.dumps({"file": str(bad), "format": "json"}))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ItemsError, match="not UTF-8"):
        load_items(json.dumps({"file": str(binary)}))
    lines = tmp_path / "lines"
    lines.write_text("a\nb")
    source = load_items(json.dumps({"file": str(lines)}))
    with pytest.raises(ItemsError, match=r"no item for indexes 2-3: .* has 2 items"):
        source.check(IndexSet.parse("0-3"))


# --------------------------------------------------------- executor internals


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_command_executor_with_and_without_pidfd(use_pidfd: bool) -> None:
    # Kernels or seccomp profiles without pidfd_open take the polling path.
    signals = Signals()
    try:
        executor = CommandExecutor(
            ["sh", "-c", 'echo "oops $1" >&2; sleep "$2"; exit "$3"', "sh", "$(MICROTASK_INDEX)"],
            os.environ,
            timeout=0.3,
            signals=signals,
            on_signal=lambda: None,
        )
        executor.use_pidfd = use_pidfd
        executor.command += ["0", "0"]
        assert executor.run(1, None) == Finished(0)
        executor.command[-2:] = ["0", "4"]
        assert executor.run(2, None) == Finished(
            4, error="index 2: exit code 4: oops 2", detail="exit code 4: oops 2"
        )
        executor.command[-2:] = ["5", "0"]
        began = time.monotonic()
        assert executor.run(3, None) == Finished(
            124,
            error="index 3: timed out after 0.3s: oops 3",
            detail="timed out after 0.3s: oops 3",
            timed_out=True,
        )
        assert time.monotonic() - began < 2
    finally:
        signals.restore()


def test_progress_throttles_expensive_encodes(tmp_path: Path) -> None:
    outcomes = Outcomes()
    file = ReportFile(str(tmp_path / "report.json"))
    progress = Progress(outcomes, file)
    # Scattered outcomes make every encode expensive; writes must stay cheap anyway.
    rng = random.Random(3)
    began = time.perf_counter()
    for index in range(4000):
        progress.write(current=index)
        outcomes.add(index, rng.choice([0, 0, 1, 2]), 0.0, "err")
    assert time.perf_counter() - began < 5
    report = read_report(tmp_path / "report.json")
    assert report is not None
    assert report.current == 3999  # always exact, even when outcomes lag behind
    progress.write(current=None, final=True)
    final = read_report(tmp_path / "report.json")
    assert final is not None and final.current is None and final.count == 4000
    file.close()
