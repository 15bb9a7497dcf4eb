"""The results commands as a user runs them: real `microtask` processes on a hand-made store."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_results_support import Rec, microtask_output, write_log, write_records, write_run_state

MICROTASK = Path(sys.executable).with_name("microtask")


def microtask(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(MICROTASK), *argv],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local run folder: 0-5 in two shards, 3 failed once and retried, 6-7 never ran."""
    root = tmp_path_factory.mktemp("run")
    write_records(root, [Rec(0, result={"w": 10}), Rec(1), Rec(2, result="two")], shard=0)
    write_records(
        root,
        [Rec(3, outcome="failed", error="KeyError: 3"), Rec(4), Rec(5, outcome="failed")],
        shard=1,
    )
    write_records(root, [Rec(3, 2, result=3)], shard=2)
    write_log(root, microtask_output(2, 1, ["making two", "done"]), shard=0)
    write_log(root, microtask_output(3, 1, ["oops"], exit_code=1), shard=1)
    write_log(root, microtask_output(3, 2, ["better"]), shard=2)
    write_run_state(
        root, universe=None, total=8, succeededIndexes="0-4", succeeded=5, failed=1, phase="Failed"
    )
    return root


def test_results_as_csv(run: Path):
    done = microtask("results", "--store", str(run), "-o", "csv")
    assert done.returncode == 0
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["index"], r["attempt"], r["outcome"]) for r in rows] == [
        ("0", "1", "succeeded"),
        ("1", "1", "succeeded"),
        ("2", "1", "succeeded"),
        ("3", "2", "succeeded"),
        ("4", "1", "succeeded"),
        ("5", "1", "failed"),
    ]
    assert rows[0]["result"] == '{"w":10}'


def test_results_failed_as_json(run: Path):
    done = microtask("results", "--store", str(run), "--failed", "-o", "json")
    assert done.returncode == 0
    assert [(r["index"], r["outcome"]) for r in json.loads(done.stdout)] == [
        (5, "failed"),
        (6, "notRun"),
        (7, "notRun"),
    ]


def test_results_failed_says_so_when_nothing_failed(tmp_path: Path):
    write_records(tmp_path, [Rec(0), Rec(1, outcome="failed")], shard=0)
    write_records(tmp_path, [Rec(1, 2)], shard=1)
    write_run_state(tmp_path, universe=None, total=2, succeededIndexes="0-1", succeeded=2)
    done = microtask("results", "--store", str(tmp_path), "--failed")
    assert (done.returncode, done.stdout) == (0, "")
    assert "no microtask of the local run in" in done.stderr
    assert "failed or is left to run" in done.stderr


def test_results_into_a_closed_pipe(run: Path):
    done = subprocess.run(
        f"'{MICROTASK}' results --store '{run}' | head -n 1",
        shell=True,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stdout)["index"] == 0
    assert done.stderr == ""


def test_logs_of_a_retried_microtask(run: Path):
    done = microtask("logs", "--store", str(run), "--index", "3")
    assert (done.returncode, done.stdout) == (0, "better\n")
    assert "ran 2 times" in done.stderr
    done = microtask("logs", "--store", str(run), "--index", "3", "--attempt", "1")
    assert (done.returncode, done.stdout) == (0, "oops\n")


def test_logs_of_an_index_that_never_ran(run: Path):
    done = microtask("logs", "--store", str(run), "--index", "7")
    assert done.returncode == 1
    assert "microtask 7 never ran (the job is Failed)" in done.stderr


def test_indexes_of_a_status(run: Path):
    status = json.loads((run / "run.json").read_text())["status"]
    done = microtask("indexes", "-", "--list", stdin=status["succeededIndexes"])
    assert (done.returncode, done.stdout.split()) == (0, ["0", "1", "2", "3", "4"])


def test_an_unreachable_cluster_is_a_message(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    done = subprocess.run(
        [str(MICROTASK), "results", "thumbs"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot reach the cluster (context 'x', server https://127.0.0.1:9)" in done.stderr
