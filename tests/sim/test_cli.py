"""`microtask simulate`: figures as a table or JSON, byte-identical by seed, exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from microtask_operator.commands import simulate as command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"

JOB = """\
apiVersion: microtask.dev/v1alpha1
kind: MicrotaskJob
metadata: {name: thumbnails}
spec:
  items:
    range: {start: 0, end: 3000}
  microtasksPerShard: 20
  parallelism: 24
  template:
    spec:
      containers:
      - name: worker
        image: registry.example/thumbs:1.2
        command: ["python", "thumb.py", "$(MICROTASK_ITEM)"]
  placement:
    accelerator: auto
    fallbackAfterSeconds: 60
  retry:
    maxAttempts: 3
  speculation: {enabled: true, slowdownFactor: 3}
"""


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB, encoding="utf-8")
    return path


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="microtask simulate")
    command.configure(parser)
    return command.execute(parser.parse_args([str(a) for a in argv]))


def test_json_has_the_documented_figures(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(job_file, "--cluster", EXAMPLES / "small.yaml", "--json")

    out = capsys.readouterr().out
    figures = json.loads(out)
    assert code == 0
    for key in (
        "makespanSeconds",
        "lowerBoundSeconds",
        "succeeded",
        "failed",
        "attempts",
        "speculativeCopies",
        "rebalanced",
        "wastedSeconds",
    ):
        assert key in figures, key
    assert figures["succeeded"] == 3000 and figures["failed"] == 0
    assert figures["makespanSeconds"] >= figures["lowerBoundSeconds"] > 0
    assert figures["job"] == "thumbnails"


def test_same_seed_prints_the_same_bytes(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for seed in ("4", "4", "5"):
        run(job_file, "--cluster", EXAMPLES / "realistic.yaml", "--json", "--seed", seed)
        outputs.append(capsys.readouterr().out)

    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_the_table_names_the_figures(job_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(job_file, "--cluster", EXAMPLES / "gpu-full.yaml")

    out = capsys.readouterr().out
    assert code == 0
    for label in ("makespan", "lower bound", "attempts", "rebalanced", "wasted", "policies"):
        assert label in out
    # One GPU: placement sends what it cannot take to free CPU slots at once, no fallback.
    assert "completed on        cpu" in out
    assert "unschedulable_fallback" not in out


@pytest.mark.parametrize(
    "flags",
    [["--static"], ["--no-fallback"], ["--no-speculation"], ["--no-exclusion"]],
)
def test_policy_flags_and_static_run(
    job_file: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    code = run(job_file, "--cluster", EXAMPLES / "small.yaml", "--json", *flags)

    figures = json.loads(capsys.readouterr().out)
    assert code == 0
    assert figures["mode"] == ("static" if flags == ["--static"] else "core")
    flag = flags[0].removeprefix("--no-")
    if flag in figures["policies"]:
        assert figures["policies"][flag] is False


def test_compare_runs_every_combination_and_the_static_job_side_by_side(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(job_file, "--cluster", EXAMPLES / "realistic.yaml", "--compare", "--json")

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    labels = [r["label"] for r in document["runs"]]
    assert len(labels) == len(set(labels)) == 9
    assert labels[0] == "all on" and labels[-1] == "static Indexed Job"
    assert document["runs"][-1]["mode"] == "static"
    # Each row is the run its flags would give alone, from the same seed.
    run(job_file, "--cluster", EXAMPLES / "realistic.yaml", "--json", "--no-speculation")
    alone = json.loads(capsys.readouterr().out)
    [row] = [r for r in document["runs"] if r["label"] == "no speculation"]
    assert row["makespanSeconds"] == alone["makespanSeconds"]
    assert row["attempts"] == alone["attempts"]

    code = run(job_file, "--cluster", EXAMPLES / "realistic.yaml", "--compare")
    table = capsys.readouterr().out
    assert code == 0
    for label in labels:
        assert f"\n{label} " in table
    assert "static /" in table


def test_compare_with_policy_flags_is_a_usage_error(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--static", "--no-speculation"):
        code = run(job_file, "--cluster", EXAMPLES / "small.yaml", "--compare", flag)
        assert code == 2
        assert "--compare" in capsys.readouterr().err


def test_static_with_policy_flags_is_a_usage_error(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(job_file, "--cluster", EXAMPLES / "small.yaml", "--static", "--no-fallback")

    assert code == 2
    assert "--static" in capsys.readouterr().err


def test_an_invalid_cluster_file_exits_2_with_every_problem(
    job_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text(
        "kind: SimulatedCluster\nnodes:\n"
        "- {name: a, pool: tpu}\n- {name: b, pool: cpu, speed: 0}\n",
        encoding="utf-8",
    )

    code = run(job_file, "--cluster", bad)

    err = capsys.readouterr().err
    assert code == 2
    assert "nodes[0].pool" in err and "nodes[1].speed" in err
    assert "Traceback" not in err


HEADER = "apiVersion: microtask.dev/v1alpha1\nkind: MicrotaskJob\nmetadata: {name: j}\n"
TEMPLATE = "  template: {spec: {containers: [{name: w, image: x, command: [x]}]}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEADER + "spec:\n  items: {range: {start: 0}}\n" + TEMPLATE, "spec.items.range.end"),
        (HEADER + "spec:\n  items: {list: [1]}\n  parallelism: 0\n" + TEMPLATE, "spec.parallelism"),
        (
            HEADER + "spec:\n  items: {configMapRef: {name: cm, key: items}}\n" + TEMPLATE,
            "ConfigMap 'cm' is needed to count the items",
        ),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {}\n", "found 0"),
        ("spec: [unclosed\n", "invalid YAML"),
    ],
    ids=["range-without-end", "parallelism-0", "configmap-missing", "no-job", "bad-yaml"],
)
def test_an_invalid_job_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")

    code = run(path, "--cluster", EXAMPLES / "small.yaml")

    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize("path", sorted(EXAMPLES.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_jobs_simulate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(path, "--cluster", EXAMPLES / "realistic.yaml", "--json")

    figures = json.loads(capsys.readouterr().out)
    assert code == 0
    assert figures["phase"] == "Succeeded"
    assert figures["succeeded"] == figures["total"] > 0


def test_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "nope.yaml", "--cluster", EXAMPLES / "small.yaml") == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("accelerator", "flags"),
    [("gpu", []), ("auto", ["--static"]), ("auto", ["--no-fallback"])],
)
def test_a_job_that_cannot_run_on_the_cluster_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], accelerator: str, flags: list[str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("accelerator: auto", f"accelerator: {accelerator}"), "utf-8")

    code = run(path, "--cluster", EXAMPLES / "bad-node.yaml", *flags)

    assert code == 2
    assert "no gpu nodes" in capsys.readouterr().err


def test_a_job_stuck_for_good_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The only GPU node is lost before the job starts: GPU work can never run again.
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "kind: SimulatedCluster\nname: lost\n"
        "nodes: [{name: gpu, pool: gpu, gpus: 1}, {name: cpu, pool: cpu, slots: 2}]\n"
        "nodeLosses: [{node: gpu, at: 0, deletedAfter: 1}]\n",
        encoding="utf-8",
    )
    path = tmp_path / "job.yaml"
    path.write_text(JOB.replace("accelerator: auto", "accelerator: gpu"), "utf-8")

    code = run(path, "--cluster", cluster)

    captured = capsys.readouterr()
    assert code == 1
    assert "microtasks outstanding" in captured.err
    assert "unfinished" in captured.out


def test_the_command_module_imports_no_simulator_at_load_time() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, microtask_operator.commands.simulate; "
        "print(any(m.startswith('microtask_operator.simulator') for m in sys.modules), "
        "'yaml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_the_microtask_cli_runs_simulate(
    job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from microtask_operator.cli import main

    code = main(["simulate", str(job_file), "--cluster", str(EXAMPLES / "small.yaml"), "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 3000


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (bytes(range(256)) * 16, "binary data, not YAML text"),
        (b"\xff\xfe" + "kind: x\n".encode("utf-16-le"), "UTF-16"),
        (b"nodes: [unclosed\n", "invalid YAML at line 2"),
    ],
)
def test_an_unreadable_cluster_file_exits_2_without_a_traceback(
    job_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
) -> None:
    cluster = tmp_path / "cluster.bin"
    cluster.write_bytes(content)

    code = run(job_file, "--cluster", cluster)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert f"error: {cluster}: not a usable cluster file" in captured.err
    assert expected in captured.err
    assert "Traceback" not in captured.err


def test_a_50_megabyte_cluster_file_is_refused_at_once(
    job_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    cluster = tmp_path / "huge.yaml"
    with cluster.open("wb") as f:
        f.write((EXAMPLES / "small.yaml").read_bytes())
        f.seek(50 * 1024 * 1024)
        f.write(b"\n")
    started = time.monotonic()

    code = run(job_file, "--cluster", cluster)

    assert code == 2
    assert time.monotonic() - started < 1.0
    assert "the file is too large (50.0 MiB): a cluster file is at most 1 MiB" in (
        capsys.readouterr().err
    )


def test_compare_gives_no_ratios_for_runs_that_did_not_succeed(
    job_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hopeless = tmp_path / "hopeless.yaml"
    hopeless.write_text(
        (EXAMPLES / "small.yaml")
        .read_text(encoding="utf-8")
        .replace("  jitter: 0.2\n", "  jitter: 0.2\n  permanentFailureRate: 1.0\n"),
        encoding="utf-8",
    )
    run(job_file, "--cluster", hopeless, "--compare")

    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if " Failed " in line]
    assert len(rows) == 9, table
    for row in rows:
        # makespan, then "/ bound" and "static /": both "-" for a failed run.
        assert row.split()[-5:-3] == ["-", "-"], row


@pytest.mark.parametrize(
    ("name", "policy_off"),
    [("stragglers", "no speculation"), ("bad-node", "no exclusion"), ("mixed", "no fallback")],
)
def test_each_example_cluster_has_a_job_whose_policy_shows(
    name: str, policy_off: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = EXAMPLES / "jobs" / f"{name}.yaml"
    code = run(job, "--cluster", EXAMPLES / f"{name}.yaml", "--compare", "--json")

    runs = {r["label"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert code == 0
    best, without = runs["all on"], runs[policy_off]
    assert best["phase"] == "Succeeded"
    assert without["phase"] != "Succeeded" or (
        without["makespanSeconds"] > 1.2 * best["makespanSeconds"]
    )
