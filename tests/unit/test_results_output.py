"""`microtask results`: the jsonl, csv and json outputs, --failed, --results-only, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from microtask_operator import cli
from microtask_operator.results import target
from microtask_operator.results.formats import CSV_COLUMNS
from test_results_support import CountingStore, Rec, write_records, write_run_state


def results(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, bytes, str]:
    code = cli.main(["results", *argv])
    captured = capsysbinary.readouterr()
    stderr = captured.err.decode()
    assert "Traceback" not in stderr
    return code, captured.out, stderr


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """0-4 first run (2 fails), 2 retried and succeeded, 4 failed twice, 5-9 never ran."""
    root = tmp_path / "run"
    write_records(
        root,
        [
            Rec(0, result={"n": 0}),
            Rec(1, result="one"),
            Rec(2, outcome="failed", error="bad"),
            Rec(3, result=[3]),
            Rec(4, outcome="failed", exit_code=3, error="Traceback\nValueError: four"),
        ],
        shard=0,
    )
    write_records(root, [Rec(2, 2, result=2), Rec(4, 2, "timeout")], shard=1)
    return root


def test_jsonl_is_each_final_record_as_stored(store: Path, capsysbinary):
    code, out, err = results(capsysbinary, "--store", str(store))
    assert (code, err) == (0, "")
    lines = out.decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["index"], r["attempt"], r["outcome"]) for r in records] == [
        (0, 1, "succeeded"),
        (1, 1, "succeeded"),
        (2, 2, "succeeded"),
        (3, 1, "succeeded"),
        (4, 2, "timeout"),
    ]
    stored = (store / "records" / "000000000000-job-0.jsonl").read_text().splitlines()
    assert lines[0] == stored[0]  # byte for byte


def test_json_is_one_array(store: Path, capsysbinary):
    code, out, _ = results(capsysbinary, "--store", str(store), "-o", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert records[2]["result"] == 2


def test_csv_has_the_documented_columns(store: Path, capsysbinary):
    code, out, _ = results(capsysbinary, "--store", str(store), "-o", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out.decode())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["result"] == '{"n":0}'
    assert rows[1]["result"] == '"one"'
    assert rows[4]["outcome"] == "timeout"
    assert rows[4]["exitCode"] == "124"
    assert rows[0]["error"] == ""
    assert (rows[0]["job"], rows[0]["shard"], rows[0]["pool"]) == ("job", "0", "cpu")


def test_failed_lists_failures_and_never_run_indexes(store: Path, capsysbinary):
    write_run_state(store, universe=None, total=10, succeededIndexes="0-3", succeeded=4, failed=1)
    code, out, err = results(capsysbinary, "--store", str(store), "--failed")
    assert (code, err) == (0, "")
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert rows[0]["index"] == 4
    assert rows[0]["exitCode"] == 124
    assert rows[1:] == [{"index": i, "outcome": "notRun"} for i in range(5, 10)]


def test_failed_in_csv_with_a_rerun_universe(store: Path, capsysbinary):
    # a rerun whose indexes are 3-6: only those count
    write_run_state(store, universe="3-6", total=4, succeededIndexes="3", succeeded=1)
    code, out, _ = results(capsysbinary, "--store", str(store), "--failed", "-o", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out.decode())))
    assert [(r["index"], r["outcome"]) for r in rows] == [
        ("4", "timeout"),
        ("5", "notRun"),
        ("6", "notRun"),
    ]


def test_failed_on_a_bare_store_says_never_run_indexes_are_unknown(store: Path, capsysbinary):
    code, out, err = results(capsysbinary, "--store", str(store), "--failed", "-o", "json")
    assert code == 0
    assert [r["index"] for r in json.loads(out)] == [4]
    assert "never ran are not listed" in err


def test_results_only(store: Path, capsysbinary):
    code, out, _ = results(capsysbinary, "--store", str(store), "--results-only")
    assert code == 0
    assert out.decode().splitlines() == ['{"n":0}', '"one"', "2", "[3]", "null"]


def test_results_only_takes_no_format(store: Path, capsysbinary):
    code, out, err = results(capsysbinary, "--store", str(store), "--results-only", "-o", "csv")
    assert (code, out) == (1, b"")
    assert "takes no -o" in err


def test_no_records_is_a_message_and_exit_1(tmp_path: Path, capsysbinary):
    (tmp_path / "records").mkdir()
    code, out, err = results(capsysbinary, "--store", str(tmp_path))
    assert (code, out) == (1, b"")
    assert f"no records in the store {tmp_path}: no microtask has finished" in err


def test_a_corrupt_line_is_skipped_with_a_warning(store: Path, capsysbinary):
    write_records(store, [Rec(7)], shard=2, extra=b"{oops\n")
    code, out, err = results(capsysbinary, "--store", str(store))
    assert code == 0
    assert len(out.decode().splitlines()) == 6
    assert err.count("warning") == 1
    assert "records/000000000007-job-2.jsonl line 2" in err


def test_an_unreadable_records_file_fails_the_command_after_the_rest(
    store: Path, capsysbinary, monkeypatch
):
    write_records(store, [Rec(9)], shard=5)
    real_open_store = target.open_store

    def failing_store(url: str, **options: object) -> CountingStore:
        wrapped = CountingStore(real_open_store(url, **options))
        real_open = wrapped.open

        def open_(name: str):  # type: ignore[no-untyped-def]
            if name.endswith("-job-5.jsonl"):
                raise OSError(5, "Input/output error")
            return real_open(name)

        wrapped.open = open_  # type: ignore[method-assign]
        return wrapped

    monkeypatch.setattr(target, "open_store", failing_store)
    code, out, err = results(capsysbinary, "--store", str(store))
    assert len(out.decode().splitlines()) == 5
    assert code == 1
    assert "cannot read records/000000000009-job-5.jsonl: Input/output error" in err
    assert "the output lacks their records" in err


def test_lone_surrogates_in_results_and_errors_are_escaped(tmp_path: Path, capsysbinary):
    line = (
        b'{"v":1,"index":0,"attempt":1,"outcome":"failed","error":"bad \\udc80",'
        b'"result":"\\ud800"}\n'
    )
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "000000000000-job-0.jsonl").write_bytes(line)
    code, out, _ = results(capsysbinary, "--store", str(tmp_path), "-o", "csv")
    assert code == 0
    assert out.decode().splitlines()[1].endswith(',"""\\ud800""",bad \\udc80')
    code, out, _ = results(capsysbinary, "--store", str(tmp_path), "--results-only")
    assert json.loads(out) == "\ud800"


# ------------------------------------------------------------------ finding the job


JOB_FILE = """\
apiVersion: microtask.dev/v1alpha1
kind: MicrotaskJob
metadata: {name: NAME}
spec:
  items: {range: {start: 0, end: 10}}
  template:
    spec:
      containers: [{name: worker, image: x, command: ["true"]}]
"""


def job_file(path: Path, *names: str) -> Path:
    path.write_text("---\n".join(JOB_FILE.replace("NAME", n) for n in names))
    return path


def test_a_job_file_finds_its_run_in_the_default_folder(tmp_path, monkeypatch, capsysbinary):
    monkeypatch.chdir(tmp_path)
    write_records(tmp_path / "microtask-runs" / "squares", [Rec(0), Rec(1)], job="squares")
    write_run_state(tmp_path / "microtask-runs" / "squares", job="squares", universe=None, total=2)
    code, out, _ = results(capsysbinary, str(job_file(tmp_path / "job.yaml", "squares")))
    assert code == 0
    assert len(out.splitlines()) == 2


def test_output_and_name_choose_the_run(tmp_path, capsysbinary):
    write_records(tmp_path / "elsewhere", [Rec(4)], job="cubes")
    file = job_file(tmp_path / "jobs.yaml", "squares", "cubes")
    code, out, _ = results(
        capsysbinary, str(file), "--name", "cubes", "--output", str(tmp_path / "elsewhere")
    )
    assert code == 0
    assert json.loads(out)["index"] == 4


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (
            lambda tmp: job_file(tmp / "j.yaml", "squares"),
            ["j.yaml"],
            "no local run of 'squares' in microtask-runs/squares (start one with "
            "`microtask run j.yaml`, or pass --output DIR",
        ),
        (
            lambda tmp: job_file(tmp / "j.yaml", "a", "b"),
            ["j.yaml"],
            "holds several MicrotaskJobs (a, b); choose one with --name",
        ),
        (
            lambda tmp: job_file(tmp / "j.yaml", "a"),
            ["j.yaml", "--name", "zz"],
            "holds no MicrotaskJob named 'zz' (it holds: a)",
        ),
        (
            lambda tmp: (tmp / "j.yaml").write_text("kind: ConfigMap\n"),
            ["j.yaml"],
            "holds no MicrotaskJob",
        ),
        (lambda tmp: None, ["missing.yaml"], "missing.yaml: no such file"),
        (lambda tmp: None, ["Not_A_Name"], "no such file, and not the name of a MicrotaskJob"),
        (lambda tmp: None, ["--store", "nowhere"], "no result store at nowhere: no such folder"),
        (lambda tmp: None, ["--store", "ftp://x/y"], "not a result store"),
        (lambda tmp: None, [], "name a job"),
        (
            lambda tmp: (tmp / "d").mkdir(),
            ["d"],
            "d is a folder; to read a store folder, pass --store d",
        ),
        (
            lambda tmp: ((tmp / "d").mkdir(), (tmp / "job.yaml").write_text("")),
            ["job.yaml", "--store", "d"],
            "either a job file or --store URL, not both",
        ),
    ],
)
def test_job_resolution_errors(tmp_path, monkeypatch, capsysbinary, setup, argv, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    code, out, err = results(capsysbinary, *argv)
    assert (code, out) == (1, b"")
    assert message in err


def test_a_cluster_name_without_a_kubeconfig_is_a_message(tmp_path, monkeypatch, capsysbinary):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, _, err = results(capsysbinary, "thumbs")
    assert code == 1
    assert "kubeconfig" in err
