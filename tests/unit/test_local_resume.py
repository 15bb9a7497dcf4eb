"""`microtask run FILE --resume` and `microtask rerun FILE --failed` on local runs: what they run,
what they refuse, and one merged job in the run's folder afterwards."""

from __future__ import annotations

import json
from pathlib import Path

from test_local_support import counting, job_yaml, lines_of, run_cli, state, write

FLAKY_EXTRA = "  retry: {maxAttempts: 1, maxFailedMicrotasks: 100}\n"


def flaky_job(tmp_path: Path, out: Path) -> Path:
    """Indexes 2 and 7 fail until `fixed` exists; every finished index is appended to `out`."""
    fixed = tmp_path / "fixed"
    command = (
        f"if [ ! -e {fixed} ] && {{ [ $MICROTASK_INDEX = 2 ] || [ $MICROTASK_INDEX = 7 ]; }}; "
        f"then echo not yet >&2; exit 4; fi; {counting(out)}"
    )
    return write(tmp_path, job_yaml(total=10, per_shard=2, command=command, extra=FLAKY_EXTRA))


def test_rerun_failed_runs_only_the_failures_and_merges_into_one_job(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    path = flaky_job(tmp_path, out)
    folder = tmp_path / "microtask-runs" / "count"
    first = run_cli("run", path.name, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr  # two failures are tolerated
    assert json.loads(first.stdout)["failedIndexes"] == "2,7"
    assert "next: microtask rerun job.yaml --failed" in first.stderr
    shards_before = state(folder)["nextShard"]
    logs_before = {p.name for p in (folder / "logs").iterdir()}

    (tmp_path / "fixed").touch()
    rerun = run_cli("rerun", path.name, "--failed", "-o", "json", cwd=tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert "note: rerunning count: 2 of 10 microtasks to run (8 succeeded before)" in (rerun.stderr)
    assert sorted(map(int, lines_of(out))) == list(range(10))  # 2 and 7 ran once, after the fix
    summary = json.loads(rerun.stdout)
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (10, 10, 0)
    assert summary["succeededIndexes"] == "0-9" and summary["attempts"] == 12
    saved = state(folder)
    assert saved["status"]["failedIndexes"] == "" and saved["finished"] is True
    assert saved["nextShard"] > shards_before
    new_logs = {p.name for p in (folder / "logs").iterdir()} - logs_before
    assert new_logs == {f"count-{shards_before}.log"}  # one retry shard, a new id
    # The rerun's records join the earlier ones in the same store, under the new shard's name.
    records = {p.name for p in (folder / "records").iterdir()}
    assert f"000000000002-count-{shards_before}.jsonl" in records
    assert len(records) == shards_before + 1

    again = run_cli("rerun", path.name, "--failed", "--json", cwd=tmp_path)
    assert again.returncode == 0
    assert "count: nothing left to run in microtask-runs/count: 10 of 10 microtasks succeeded" in (
        again.stderr
    )
    assert json.loads(again.stdout)["phase"] == "Succeeded"


def test_resume_leaves_permanent_failures_alone(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    path = flaky_job(tmp_path, out)
    assert run_cli("run", path, cwd=tmp_path).returncode == 0
    resumed = run_cli("run", path, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0
    assert "nothing left to run" in resumed.stderr
    assert "2 failed for good: `microtask rerun" in resumed.stderr
    assert len(lines_of(out)) == 8


def test_a_changed_spec_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    path = flaky_job(tmp_path, out)
    assert run_cli("run", path, cwd=tmp_path).returncode == 0
    path.write_text(path.read_text().replace("microtasksPerShard: 2", "microtasksPerShard: 5"))
    for args in (("run", path, "--resume"), ("rerun", path, "--failed")):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "the spec of count changed since its run in microtask-runs/count" in result.stderr
    assert len(lines_of(out)) == 8  # nothing ran


def test_without_a_saved_run_there_is_nothing_to_resume_or_rerun(tmp_path: Path) -> None:
    path = write(tmp_path, job_yaml(total=2))
    result = run_cli("run", path.name, "--resume", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "error: no saved run of count in microtask-runs/count: nothing to resume; run it first "
        "(microtask run job.yaml)"
    ) in result.stderr
    result = run_cli("rerun", path.name, "--failed", "--output", "elsewhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "no saved run of count in elsewhere: nothing to rerun" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_rerun_options(tmp_path: Path) -> None:
    path = write(tmp_path, job_yaml(total=2))
    result = run_cli("rerun", path, cwd=tmp_path)
    assert result.returncode == 2 and "--failed" in result.stderr
    result = run_cli("rerun", path, "--failed", "-n", "team-a", cwd=tmp_path)
    assert result.returncode == 2
    assert "--namespace is for a MicrotaskJob on a cluster" in result.stderr
    assert "--watch" in run_cli("rerun", "--help", cwd=tmp_path).stdout
