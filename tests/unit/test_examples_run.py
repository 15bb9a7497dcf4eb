"""Every example runs with `microtask run` and ends as its comments say (the README promises it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
#: Examples whose failures are the point, tolerated by their retry policy: name -> failed indexes.
TOLERATED_FAILURES = {"results-s3": "0,13,26,39,52,65,78,91"}


def run(example: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "microtask_operator.cli",
            "run",
            str(example),
            "--json",
            "--output",
            str(output),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_succeeds_locally(example: Path, tmp_path: Path) -> None:
    result = run(example, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["kind"] == "RunSummary"
    assert summary["phase"] == "Succeeded"
    failed = TOLERATED_FAILURES.get(example.stem)
    if failed is None:
        assert summary["succeeded"] == summary["total"] > 0
        assert summary["failed"] == summary["notRun"] == 0
    else:  # Succeeded with failures, as the example's comments say
        assert summary["failedIndexes"] == failed
        assert summary["succeeded"] + summary["failed"] == summary["total"] > summary["failed"]
        assert summary["notRun"] == 0
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "run.json").is_file()


def test_the_retry_example_retries_only_the_failed_microtasks(tmp_path: Path) -> None:
    result = run(ROOT / "examples" / "flaky-retry.yaml", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    failing_first = [i for i in range(100) if i % 7 == 3]
    assert summary["attempts"] == 100 + len(failing_first)
    assert summary["succeededAfterRetry"] == len(failing_first)
    assert f"retried, then succeeded  {len(failing_first)} microtasks" in result.stderr
    assert "transient failure" in result.stderr  # why they were retried is in the summary
    # Each retried by its own pod (no retry shard): the results show the second attempts, run
    # in the shard of the first.
    results = subprocess.run(
        [
            sys.executable,
            "-m",
            "microtask_operator.cli",
            "results",
            "--store",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    records = [json.loads(line) for line in results.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(100))
    assert all(r["outcome"] == "succeeded" for r in records)
    assert [r["index"] for r in records if r["attempt"] == 2] == failing_first
    assert all(r["shard"] == r["index"] // 10 for r in records)


def test_a_failing_job_exits_1_and_invalid_input_exits_2(tmp_path: Path) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        (ROOT / "examples" / "checksums.yaml")
        .read_text()
        .replace('"import hashlib, sys;', '"import sys; sys.exit(3);')
        + "  retry: {maxAttempts: 1}\n"
    )
    result = run(failing, tmp_path / "run", "--workers", "2")
    assert result.returncode == 1, result.stderr[-2000:]
    assert json.loads(result.stdout)["phase"] == "Failed"
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: microtask.dev/v1alpha1\nkind: MicrotaskJob\nspec: {}\n")
    result = run(broken, tmp_path / "broken-run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "spec.items" in result.stderr
