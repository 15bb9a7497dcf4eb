"""`microtask run FILE`: the output folder, the saved state, the summary and the conventions of a
command line, with real `microtask` processes on small jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_local_support import SUMMARY_KEYS, counting, job_yaml, lines_of, run_cli, state, write

STATE_KEYS = {
    "job",
    "file",
    "specDigest",
    "universe",
    "status",
    "nextShard",
    "finished",
    "interrupted",
    "startedAt",
    "endedAt",
    "version",
}
PROGRESS = re.compile(
    r"^(?P<name>[a-z0-9-]+): (?P<ok>\d+)/(?P<total>\d+) succeeded, \d+ failed, \d+ running, "
    r"[\d.,]+/s, ETA \S+$"
)


def test_a_run_fills_its_default_folder_and_saves_its_state(tmp_path: Path) -> None:
    path = write(tmp_path, job_yaml(total=6, per_shard=2))
    result = run_cli("run", path, "-o", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    folder = tmp_path / "microtask-runs" / "count"
    summary = json.loads(result.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert summary["apiVersion"] == "microtask.dev/v1alpha1" and summary["kind"] == "RunSummary"
    assert (summary["phase"], summary["total"], summary["succeeded"]) == ("Succeeded", 6, 6)
    assert (summary["failed"], summary["notRun"], summary["succeededIndexes"]) == (0, 0, "0-5")
    assert summary["output"] == str(folder.resolve())
    assert set(summary["resources"]) >= {"cpuSeconds", "wastedCpuSeconds"}

    saved = state(folder)
    assert set(saved) == STATE_KEYS
    assert saved["job"] == "count" and saved["file"] == str(path.resolve())
    assert re.fullmatch(r"[0-9a-f]{64}", saved["specDigest"])
    assert saved["universe"] is None
    assert (saved["finished"], saved["interrupted"], saved["nextShard"]) == (True, False, 3)
    assert saved["status"]["succeededIndexes"] == "0-5" and saved["endedAt"]
    # Each shard's output in its log (with the runner's delimiters), records in the store.
    logs = sorted(p.name for p in (folder / "logs").iterdir())
    assert logs == ["count-0.log", "count-1.log", "count-2.log"]
    assert "::microtask:: index=0 attempt=1 begin" in (folder / "logs" / "count-0.log").read_text()
    assert (folder / "records").is_dir()
    assert not (folder / ".work").exists()
    # --help documents the default folder.
    assert "microtask-runs/JOB" in run_cli("run", "--help", cwd=tmp_path).stdout


def test_a_job_file_in_another_folder_runs_with_the_default_folder_here(tmp_path: Path) -> None:
    # The runners work in the job file's folder; the run's folder is relative to where
    # `microtask run` was started, so every path they get must be absolute.
    (tmp_path / "jobs").mkdir()
    path = write(tmp_path / "jobs", job_yaml(total=4, per_shard=2))
    result = run_cli("run", "jobs/job.yaml", "-o", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["succeeded"] == 4
    assert (tmp_path / "microtask-runs" / "count" / "run.json").is_file()
    assert not (path.parent / "microtask-runs").exists()


def test_a_new_run_clears_the_previous_one_in_the_same_folder(tmp_path: Path) -> None:
    path = write(tmp_path, job_yaml(total=8, per_shard=1, parallelism=4))
    out = tmp_path / "out"
    assert run_cli("run", path, "--output", out, cwd=tmp_path).returncode == 0
    assert len(list((out / "logs").iterdir())) == 8
    write(tmp_path, job_yaml(total=8, per_shard=4))
    # The former option name still works, with a warning.
    result = run_cli("run", path, "--log-dir", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--log-dir is deprecated: use --output" in result.stderr
    assert f"note: cleared the previous run of count in {out}" in result.stderr
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["count-0.log", "count-1.log"]
    assert len(list((out / "records").iterdir())) == 2
    assert state(out)["nextShard"] == 2


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("a-file", "error: a-file exists and is not a folder"),
        ("a-file/below", "error: cannot create the output folder a-file/below: Not a directory"),
        ("/sys/microtask-test", "error: cannot create the output folder /sys/microtask-test:"),
        ("json", "error: --output names the run's folder; for a JSON summary use -o json"),
    ],
)
@pytest.mark.parametrize("option", ["--output", "--log-dir"])
def test_an_unusable_output_folder_exits_2_without_a_traceback(
    tmp_path: Path, output: str, expected: str, option: str
) -> None:
    if output.startswith("/sys/") and not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    (tmp_path / "a-file").write_text("not a folder")
    path = write(tmp_path, job_yaml(total=2))
    result = run_cli("run", path, option, output, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "microtask-runs").exists()


def test_a_folder_of_another_job_or_of_other_files_is_not_cleared(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write(tmp_path, job_yaml("first", total=2), "first.yaml")
    assert run_cli("run", first, "--output", out, cwd=tmp_path).returncode == 0
    second = write(tmp_path, job_yaml("second", total=2), "second.yaml")
    result = run_cli("run", second, "--output", out, cwd=tmp_path)
    assert result.returncode == 2
    assert "holds a run of MicrotaskJob 'first', not 'second'" in result.stderr
    assert state(out)["job"] == "first"
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "logs" / "precious.txt").write_text("keep me")
    result = run_cli("run", second, "--output", mine, cwd=tmp_path)
    assert result.returncode == 2 and "not the folder of a run" in result.stderr
    assert (mine / "logs" / "precious.txt").read_text() == "keep me"


def test_the_summary_of_a_job_that_succeeded_after_retries(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    # Every third microtask fails its first attempt.
    command = (
        f"if [ $((MICROTASK_INDEX % 3)) = 0 ] && [ ! -e {marks}/$MICROTASK_INDEX ]; then "
        f"touch {marks}/$MICROTASK_INDEX; echo flaky disk >&2; exit 5; fi"
    )
    extra = "  retry: {maxAttempts: 3, backoffSeconds: 0.05}\n"
    path = write(tmp_path, job_yaml(total=9, per_shard=3, command=command, extra=extra))
    result = run_cli("run", path.name, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["phase"], summary["succeeded"], summary["failed"]) == ("Succeeded", 9, 0)
    assert summary["succeededAfterRetry"] == 3 and summary["attempts"] == 12
    err = result.stderr
    assert "retried, then succeeded  3 microtasks" in err
    assert "flaky disk" in err  # why they were retried
    # Nothing failure-looking for a job that succeeded.
    assert not re.search(r"^\s+failed\s", err, re.MULTILINE)
    assert "failed attempt" not in err and "rerun" not in err
    assert "next: microtask results job.yaml" in err


def test_the_summary_of_a_failed_job_says_what_failed_and_what_to_type(tmp_path: Path) -> None:
    command = "if [ $MICROTASK_INDEX = 4 ]; then echo disk full >&2; exit 3; fi"
    extra = "  retry: {maxAttempts: 2, backoffSeconds: 0.05}\n"
    path = write(tmp_path, job_yaml(total=6, per_shard=2, command=command, extra=extra))
    result = run_cli("run", path.name, "-o", "yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    summary = yaml.safe_load(result.stdout)
    assert summary["kind"] == "RunSummary" and summary["phase"] == "Failed"
    assert summary["failedIndexes"] == "4" and summary["failed"] == 1
    kinds = summary["failureSummary"]
    assert kinds and kinds[0]["exitCode"] == 3 and kinds[0]["sampleIndex"] == 4
    err = result.stderr
    assert re.search(r"^  failed\s+1  \(indexes 4\)$", err, re.MULTILINE), err
    assert "2 failed attempts, 1 microtask failed for good; e.g. index 4:" in err
    assert "disk full" in err
    for command in (
        "microtask results job.yaml",
        "microtask logs job.yaml --index 4",
        "microtask rerun job.yaml --failed",
    ):
        assert f"next: {command}\n" in err


def test_a_job_stopped_early_shows_what_never_ran(tmp_path: Path) -> None:
    extra = "  retry: {maxAttempts: 1}\n"
    path = write(
        tmp_path, job_yaml(total=40, per_shard=2, parallelism=1, command="exit 7", extra=extra)
    )
    result = run_cli("run", path, "--workers", "1", "--json", cwd=tmp_path)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["failed"] >= 1 and summary["notRun"] > 0
    assert summary["succeeded"] + summary["failed"] + summary["notRun"] == 40
    assert "(the job stopped early)" in result.stderr


def test_progress_lines_move_per_microtask_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    # One shard of eight microtasks: a per-shard count would jump from 0 to 8.
    command = "sleep 0.2"
    path = write(tmp_path, job_yaml(total=8, per_shard=8, parallelism=1, command=command))
    result = run_cli("run", path, "--progress-interval", "0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    matches = [m for line in result.stderr.splitlines() if (m := PROGRESS.match(line))]
    assert matches, result.stderr
    assert {m["name"] for m in matches} == {"count"} and {m["total"] for m in matches} == {"8"}
    assert any(0 < int(m["ok"]) < 8 for m in matches), result.stderr
    path = write(tmp_path, job_yaml(total=2, per_shard=1, command="sleep 0.3"))
    quiet = run_cli("run", path, "--progress-interval", "0", cwd=tmp_path)
    assert not [line for line in quiet.stderr.splitlines() if PROGRESS.match(line)]


def test_blank_lines_of_a_config_map_are_not_items(tmp_path: Path) -> None:
    from microtask_operator.api.items import parse_config_map_items
    from microtask_runner.items import load_items

    text = "alpha\n\n   \nbeta\r\n\t\ngamma\n\n"
    config_map = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: words}\n"
        f"data:\n  words: {json.dumps(text)}\n---\n"
    )
    out = tmp_path / "items.txt"
    job = job_yaml("words", command=f"echo $MICROTASK_ITEM >> {out}").replace(
        "items: {range: {start: 0, end: 12}}", "items: {configMapRef: {name: words, key: words}}"
    )
    path = write(tmp_path, config_map + job)
    result = run_cli("run", path, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 3
    assert sorted(lines_of(out)) == ["alpha", "beta", "gamma"]
    # The operator and the runner count the same way.
    assert parse_config_map_items(text, "lines") == ["alpha", "beta", "gamma"]
    items_file = tmp_path / "words.txt"
    items_file.write_text(text)
    source = load_items(json.dumps({"file": str(items_file), "format": "lines"}))
    assert [source.get(i) for i in range(3)] == ["alpha", "beta", "gamma"]


def test_errors_are_plain_lines_on_stderr(tmp_path: Path) -> None:
    broken = write(
        tmp_path,
        "apiVersion: microtask.dev/v1alpha1\nkind: MicrotaskJob\nmetadata: {name: b}\nspec: {}\n",
    )
    result = run_cli("run", broken, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert f"invalid: {broken}: doc 1 (b): spec.items: required field" in result.stderr
    assert "[red]" not in result.stderr and "[/]" not in result.stderr
    # A long message stays on one line, whatever the terminal width says.
    deep = tmp_path / ("a-rather-long-folder-name-" * 4)
    deep.mkdir()
    missing = deep / "missing.yaml"
    result = run_cli("run", missing, cwd=tmp_path)
    assert result.returncode == 2
    assert f"invalid: {missing}: cannot read: No such file or directory\n" in result.stderr
    result = run_cli("run", broken, "--workers", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--workers: must be at least 1" in result.stderr
    result = run_cli("run", write(tmp_path, job_yaml(), "ok.yaml"), "-o", "xml", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr


def test_a_config_map_missing_from_the_file_is_refused_by_run_and_validate(
    tmp_path: Path,
) -> None:
    job = job_yaml().replace(
        "items: {range: {start: 0, end: 12}}", "items: {configMapRef: {name: urls, key: list}}"
    )
    path = write(tmp_path, job)
    ran = run_cli("run", path, cwd=tmp_path)
    validated = run_cli("validate", path, cwd=tmp_path)
    assert ran.returncode == validated.returncode == 2
    for err in (ran.stderr, validated.stderr):
        assert "spec.items.configMapRef: ConfigMap 'urls' is not in" in err


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"microtask {version('microtask')}"


def test_a_counting_command_runs_each_index_once(tmp_path: Path) -> None:
    out = tmp_path / "count.txt"
    path = write(tmp_path, job_yaml(total=10, per_shard=3, command=counting(out)))
    assert run_cli("run", path, cwd=tmp_path).returncode == 0
    assert sorted(map(int, lines_of(out))) == list(range(10))
