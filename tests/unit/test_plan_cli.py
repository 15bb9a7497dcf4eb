"""`microtask plan`: the first Jobs the operator would create, as YAML, or exit 2 with problems."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from microtask_operator.commands import plan as plan_command
from microtask_runner.indexset import IndexSet

from tests.manifests.restricted import pod_spec_of, restricted_violations

ROOT = Path(__file__).resolve().parents[2]

JOB = """\
apiVersion: microtask.dev/v1alpha1
kind: MicrotaskJob
metadata:
  name: squares
spec:
  items:
    range: {start: 0, end: 95}
  microtasksPerShard: 10
  parallelism: 4
  placement: {accelerator: ACCELERATOR}
  template:
    spec:
      containers:
      - name: worker
        image: python:3.12-slim
        command: [python3, -c, "print($(MICROTASK_ITEM) ** 2)"]
"""


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    plan_command.configure(parser)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = plan_command.execute(parser.parse_args(list(argv)))
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, content: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def jobs_of(output: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.mark.parametrize(("accelerator", "pool"), [("cpu", "cpu"), ("gpu", "gpu"), ("auto", "gpu")])
def test_first_shards_on_the_starting_pool(tmp_path: Path, accelerator: str, pool: str) -> None:
    path = write(tmp_path, JOB.replace("ACCELERATOR", accelerator))
    code, out, err = run(str(path))
    assert (code, err) == (0, "")
    jobs = jobs_of(out)
    assert [j["metadata"]["name"] for j in jobs] == [f"squares-s{i}" for i in range(4)]
    for shard, job in enumerate(jobs):
        kubernetes_validate.validate(job, kubernetes_validate.utils.latest_version(), strict=True)
        labels = job["metadata"]["labels"]
        assert labels["microtask.dev/pool"] == pool
        assert labels["microtask.dev/attempt"] == "1"
        assert labels["microtask.dev/shard"] == str(shard)
        indexes = IndexSet.from_compact(job["metadata"]["annotations"]["microtask.dev/indexes"])
        assert indexes == IndexSet.from_range(shard * 10, shard * 10 + 10)
        assert job["metadata"]["namespace"] == "default"
        pod = pod_spec_of(job)
        assert pod is not None and restricted_violations(pod) == []
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        assert ("nvidia.com/gpu" in limits) == (pool == "gpu")
    assert out.startswith("# MicrotaskJob squares: 95 microtasks in 10 shards of up to 10;")


def test_fewer_shards_than_parallelism(tmp_path: Path) -> None:
    content = JOB.replace("ACCELERATOR", "cpu").replace("end: 95", "end: 25")
    code, out, _ = run(str(write(tmp_path, content)))
    assert code == 0
    jobs = jobs_of(out)
    assert len(jobs) == 3
    last = jobs[-1]["metadata"]["annotations"]["microtask.dev/indexes"]
    assert last == "20-24"


def test_auto_sized_shards_start_as_small_probes(tmp_path: Path) -> None:
    content = JOB.replace("ACCELERATOR", "cpu").replace("end: 95", "end: 1000")
    content = content.replace("microtasksPerShard: 10", "targetShardSeconds: 30")
    code, out, _ = run(str(write(tmp_path, content)))
    assert code == 0
    jobs = jobs_of(out)
    # 1,000 microtasks over 8 shards per slot would be 32 each: a probe holds 16 at most.
    assert [j["metadata"]["annotations"]["microtask.dev/indexes"] for j in jobs] == [
        "0-15",
        "16-31",
        "32-47",
        "48-63",
    ]
    assert "(microtasksPerShard: auto)" in out.splitlines()[0]
    assert "sized to run about 30 s" in out.splitlines()[0] + out.splitlines()[1]


def test_namespace_uid_and_job_selection(tmp_path: Path) -> None:
    content = JOB.replace("ACCELERATOR", "cpu")
    other = content.replace("name: squares", "name: cubes\n  namespace: team-b")
    path = write(tmp_path, content + "---\n" + other)
    code, out, _ = run(str(path))
    assert code == 0
    jobs = jobs_of(out)
    assert {j["metadata"]["namespace"] for j in jobs} == {"default", "team-b"}
    assert out.count("# MicrotaskJob ") == 2
    code, out, _ = run(str(path), "--job", "cubes", "-n", "prod", "--uid", "1234-abcd")
    assert code == 0
    jobs = jobs_of(out)
    assert {j["metadata"]["name"] for j in jobs} == {f"cubes-s{i}" for i in range(4)}
    assert {j["metadata"]["namespace"] for j in jobs} == {"prod"}
    assert {j["metadata"]["ownerReferences"][0]["uid"] for j in jobs} == {"1234-abcd"}
    assert "placeholder" not in out
    code, out, err = run(str(path), "--job", "missing")
    assert (code, out) == (2, "")
    assert "no MicrotaskJob named 'missing'" in err


def test_config_map_items(tmp_path: Path) -> None:
    job = JOB.replace("ACCELERATOR", "cpu").replace(
        "range: {start: 0, end: 95}", "configMapRef: {name: words, key: words.txt}"
    )
    code, out, err = run(str(write(tmp_path, job)))
    assert (code, out) == (2, "")
    assert "ConfigMap 'words' is needed" in err and "--total" in err
    code, out, _ = run(str(write(tmp_path, job)), "--total", "12")
    assert code == 0 and len(jobs_of(out)) == 2
    config_map = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: words}\n"
        "data:\n  words.txt: |\n" + "".join(f"    w{i}\n" for i in range(31))
    )
    code, out, _ = run(str(write(tmp_path, config_map + "---\n" + job)))
    assert code == 0
    jobs = jobs_of(out)
    assert len(jobs) == 4
    assert "31 microtasks in 4 shards" in out
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "words"
    code, out, err = run(str(write(tmp_path, job)), "--total", "-1")
    assert code == 2 and "--total" in err


def test_suspended_and_dependent_jobs_are_explained(tmp_path: Path) -> None:
    content = JOB.replace("ACCELERATOR", "cpu").replace(
        "  parallelism: 4", "  parallelism: 4\n  suspend: true\n  dependsOn: [prepare]"
    )
    code, out, _ = run(str(write(tmp_path, content)))
    assert code == 0
    assert "# spec.suspend is true" in out
    assert "# Created once prepare succeeded." in out


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "no YAML documents"),
        ("\x00\x01garbage", "binary data"),
        (JOB.replace("ACCELERATOR", "tpu"), "spec.placement.accelerator: must be"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "no MicrotaskJob in the file"),
    ],
)
def test_invalid_input_exits_2_with_problems_on_stderr(
    tmp_path: Path, content: str, words: str
) -> None:
    code, out, err = run(str(write(tmp_path, content)))
    assert (code, out) == (2, "")
    assert words in err
    assert "Traceback" not in err


def test_missing_file(tmp_path: Path) -> None:
    code, out, err = run(str(tmp_path / "nope.yaml"))
    assert (code, out) == (2, "")
    assert "cannot read" in err


def test_bad_operator_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTASK_GPU_TAINT_EFFECT", "Never")
    code, out, err = run(str(write(tmp_path, JOB.replace("ACCELERATOR", "gpu"))))
    assert (code, out) == (2, "")
    assert "MICROTASK_GPU_TAINT_EFFECT" in err


def test_settings_shape_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROTASK_RUNNER_COMMAND", "python3 -m microtask_runner")
    monkeypatch.setenv("MICROTASK_GPU_RESOURCE_NAME", "amd.com/gpu")
    code, out, _ = run(str(write(tmp_path, JOB.replace("ACCELERATOR", "gpu"))))
    assert code == 0
    worker = jobs_of(out)[0]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"] == ["python3", "-m", "microtask_runner"]
    assert worker["resources"]["limits"] == {"amd.com/gpu": "1"}


EXAMPLES = sorted(
    path
    for path in (ROOT / "examples").glob("*.yaml")
    if "kind: MicrotaskJob" in path.read_text(encoding="utf-8")
)


@pytest.mark.skipif(not EXAMPLES, reason="no examples yet")
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_plans(example: Path) -> None:
    code, out, err = run(str(example))
    assert code == 0, err
    jobs = jobs_of(out)
    assert jobs
    for job in jobs:
        pod = pod_spec_of(job)
        assert pod is not None and restricted_violations(pod) == []


@pytest.mark.parametrize("accelerator", ["cpu", "gpu", "auto"])
def test_plan_matches_the_cores_first_decision(tmp_path: Path, accelerator: str) -> None:
    """What `plan` prints is what the operator's core launches first on a fresh job."""
    from microtask_operator.api.convert import to_core_spec
    from microtask_operator.api.loading import load_file
    from microtask_operator.core.planner import plan
    from microtask_operator.core.state import CoreState
    from microtask_operator.core.types import ClusterView, CreateShard

    path = write(tmp_path, JOB.replace("ACCELERATOR", accelerator))
    loaded = load_file(str(path)).jobs[0]
    decision = plan(to_core_spec(loaded.job), CoreState.initial(), [], ClusterView(), 0.0)
    expected = [
        (a.plan.shard_id, a.plan.indexes.to_compact(), str(a.plan.attempt), a.plan.pool.value)
        for a in decision.actions
        if isinstance(a, CreateShard)
    ]
    code, out, _ = run(str(path))
    assert code == 0
    printed = [
        (
            int(j["metadata"]["labels"]["microtask.dev/shard"]),
            j["metadata"]["annotations"]["microtask.dev/indexes"],
            j["metadata"]["labels"]["microtask.dev/attempt"],
            j["metadata"]["labels"]["microtask.dev/pool"],
        )
        for j in jobs_of(out)
    ]
    assert printed == expected
