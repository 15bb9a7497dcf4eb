"""`microtask logs`: cutting one microtask's output out of a shard log, choosing the attempt."""

from __future__ import annotations

from pathlib import Path

import pytest
from microtask_operator import cli
from microtask_operator.results.logcut import cut, split_lines
from microtask_runner.contract import begin_line, end_line
from test_results_support import Rec, microtask_output, write_log, write_records, write_run_state

LOG = (
    "runner: shard 0 of job, 3 microtasks\n"
    + microtask_output(0, 1, ["zero", "  indented"])
    + microtask_output(1, 1, [])
    + microtask_output(2, 1, ["two: failing", "Traceback ..."], exit_code=1)
    + "runner: done\n"
)


def cut_text(text: str, index: int, attempt: int = 1, **options: bool):  # type: ignore[no-untyped-def]
    written: list[bytes] = []
    lines = split_lines([text.encode()])
    result = cut(lines, index=index, attempt=attempt, write=written.append, **options)
    return b"".join(written).decode(), result


def test_the_lines_between_the_delimiters():
    text, found = cut_text(LOG, 0)
    assert text == "zero\n  indented\n"
    assert (found.found, found.ended, found.exit_code, found.lines) == (True, True, 0, 2)


def test_with_delimiters():
    text, found = cut_text(LOG, 2, with_delimiters=True)
    assert text.splitlines() == [
        begin_line(2, 1),
        "two: failing",
        "Traceback ...",
        end_line(2, 1, 1, 0.5),
    ]
    assert found.exit_code == 1


def test_an_index_that_printed_nothing():
    text, found = cut_text(LOG, 1)
    assert (text, found.found, found.ended, found.lines) == ("", True, True, 0)


def test_the_attempt_is_matched():
    log = microtask_output(5, 1, ["first try"]) + microtask_output(5, 2, ["second try"])
    assert cut_text(log, 5, 2)[0] == "second try\n"
    assert cut_text(log, 5, 1)[0] == "first try\n"
    assert cut_text(log, 5, 3)[1].found is False


def test_a_log_cut_short_gives_what_is_there():
    log = microtask_output(0, 1, ["a"]) + begin_line(1, 1) + "\nhalf\nno newline at the end"
    text, found = cut_text(log, 1)
    assert text == "half\nno newline at the end"
    assert (found.found, found.ended, found.ends_with_newline) == (True, False, False)


def test_a_killed_attempt_followed_by_a_restart_stops_at_the_next_delimiter():
    log = begin_line(3, 1) + "\npartial\n" + microtask_output(3, 2, ["again"])
    text, found = cut_text(log, 3)
    assert (text, found.ended) == ("partial\n", False)


def test_delimiter_look_alikes_and_other_bytes_pass_through():
    inner = ["::microtask:: something else", "caf\xe9", begin_line(4, 1) + " trailing"]
    text, _ = cut_text(microtask_output(4, 1, inner), 4)
    assert text.splitlines() == inner


def test_split_lines_across_chunks():
    chunks = [b"ab", b"c\nd", b"", b"e\n\nf"]
    assert list(split_lines(chunks)) == [b"abc\n", b"de\n", b"\n", b"f"]


# ------------------------------------------------------------------ the command


def logs(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["logs", *argv])
    captured = capsysbinary.readouterr()
    err = captured.err.decode()
    assert "Traceback" not in err
    return code, captured.out.decode(), err


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A local run: 0-2 in shard 0 (2 fails), 2 retried in shard 1; run.json says 0-4."""
    root = tmp_path / "run"
    write_records(root, [Rec(0), Rec(1), Rec(2, outcome="failed")], shard=0)
    write_records(root, [Rec(2, 2)], shard=1)
    write_log(root, LOG, shard=0)
    write_log(root, microtask_output(2, 2, ["two, second time"]), shard=1)
    write_run_state(
        root, universe=None, total=5, succeededIndexes="0-2", succeeded=3, phase="Succeeded"
    )
    return root


def test_logs_prints_the_final_attempt_and_lists_the_others(run: Path, capsysbinary):
    code, out, err = logs(capsysbinary, "--store", str(run), "--index", "2")
    assert (code, out) == (0, "two, second time\n")
    assert (
        "microtask 2 ran 2 times: attempt 1 (failed, exit 1, shard 0 of job); "
        "attempt 2 (succeeded, shard 1 of job)"
    ) in err
    assert "Showing attempt 2" in err


def test_logs_of_an_earlier_attempt(run: Path, capsysbinary):
    code, out, _ = logs(capsysbinary, "--store", str(run), "--index", "2", "--attempt", "1")
    assert (code, out) == (0, "two: failing\nTraceback ...\n")


def test_logs_of_a_missing_attempt(run: Path, capsysbinary):
    code, out, err = logs(capsysbinary, "--store", str(run), "--index", "2", "--attempt", "3")
    assert (code, out) == (1, "")
    assert "microtask 2 has no attempt 3 (its attempts: 1, 2)" in err


def test_logs_of_an_index_that_printed_nothing(run: Path, capsysbinary):
    code, out, err = logs(capsysbinary, "--store", str(run), "--index", "1")
    assert (code, out) == (0, "")
    assert "printed nothing" in err


def test_logs_with_delimiters(run: Path, capsysbinary):
    _, out, _ = logs(capsysbinary, "--store", str(run), "--index", "0", "--with-delimiters")
    assert out.splitlines()[0] == begin_line(0, 1)


def test_logs_of_a_killed_shard_say_it_was_cut_short(run: Path, capsysbinary):
    write_records(run, [Rec(3, outcome="failed", exit_code=137)], shard=2)
    write_log(run, begin_line(3, 1) + "\nworking on 3\n", shard=2)
    code, out, err = logs(capsysbinary, "--store", str(run), "--index", "3")
    assert (code, out) == (0, "working on 3\n")
    assert "cut short" in err


@pytest.mark.parametrize(
    ("index", "status", "message"),
    [
        (9, {"phase": "Succeeded"}, "microtask 9 is not part of the job (its indexes: 0-4)"),
        (4, {"phase": "Failed"}, "microtask 4 never ran (the job is Failed)"),
        (4, {"phase": "Running"}, "microtask 4 has no record yet: the job is still running"),
        (
            1,
            {"phase": "Succeeded"},
            "microtask 1 succeeded, but its record is not in the result store",
        ),
    ],
)
def test_logs_without_a_record_say_why(tmp_path: Path, capsysbinary, index, status, message):
    write_records(tmp_path, [Rec(0)])
    write_run_state(tmp_path, universe=None, total=5, succeededIndexes="0-1", succeeded=2, **status)
    if status["phase"] == "Running":
        state = (tmp_path / "run.json").read_text().replace('"finished": true', '"finished": false')
        (tmp_path / "run.json").write_text(state)
    code, out, err = logs(capsysbinary, "--store", str(tmp_path), "--index", str(index))
    assert (code, out) == (1, "")
    assert message in err


def test_logs_without_a_record_or_a_status(tmp_path: Path, capsysbinary):
    write_records(tmp_path, [Rec(0)])
    code, _, err = logs(capsysbinary, "--store", str(tmp_path), "--index", "7")
    assert code == 1
    assert "no record of microtask 7" in err


def test_logs_when_the_log_is_gone(run: Path, capsysbinary):
    (run / "logs" / "job-1.log").unlink()
    code, _, err = logs(capsysbinary, "--store", str(run), "--index", "2")
    assert code == 1
    assert "no log of shard 1 of job 'job'" in err
    assert "logs/job-1.log (not there)" in err


def test_logs_when_the_log_lacks_the_microtask(run: Path, capsysbinary):
    write_log(run, "nothing framed here\n", shard=1)
    code, _, err = logs(capsysbinary, "--store", str(run), "--index", "2")
    assert code == 1
    assert "microtask 2 (attempt 2) is not in the log of shard 1 of job 'job'" in err
    assert "(no output of it)" in err
