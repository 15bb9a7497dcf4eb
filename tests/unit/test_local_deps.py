"""`microtask run` and the spec fields that gate a job: suspend, dependsOn and items.fromJob."""

from __future__ import annotations

import json
from pathlib import Path

from test_local_support import job_yaml, lines_of, run_cli, state, write


def chain(tmp_path: Path, jobs: list[tuple[str, list[str], str]]) -> Path:
    """A file of small jobs (name, dependencies, command); each appends its name to order.txt."""
    order = tmp_path / "order.txt"
    documents = []
    for name, depends, command in jobs:
        extra = f"  dependsOn: {json.dumps(depends)}\n" if depends else ""
        body = f"echo {name} >> {order}; {command}" if command else f"echo {name} >> {order}"
        documents.append(job_yaml(name, total=1, per_shard=1, command=body, extra=extra))
    return write(tmp_path, "---\n".join(documents))


def test_dependencies_in_the_file_run_first_in_order(tmp_path: Path) -> None:
    path = chain(
        tmp_path, [("report", ["merge", "fetch"], ""), ("merge", ["fetch"], ""), ("fetch", [], "")]
    )
    result = run_cli("run", path.name, "-o", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert lines_of(tmp_path / "order.txt") == ["fetch", "merge", "report"]
    document = json.loads(result.stdout)
    assert document["kind"] == "List"
    assert [item["job"] for item in document["items"]] == ["fetch", "merge", "report"]
    assert "note: running fetch first: report depends on it (spec.dependsOn)" in result.stderr
    for name in ("fetch", "merge", "report"):
        assert state(tmp_path / "microtask-runs" / name)["finished"] is True
        assert f"MicrotaskJob {name}: Succeeded" in result.stderr
    # --name picks one job (and its dependencies only).
    (tmp_path / "order.txt").unlink()
    result = run_cli("run", path.name, "--name", "merge", cwd=tmp_path)
    assert result.returncode == 0
    assert lines_of(tmp_path / "order.txt") == ["fetch", "merge"]
    assert "next: microtask results job.yaml --name merge" in result.stderr


def test_a_failed_dependency_stops_the_chain(tmp_path: Path) -> None:
    path = chain(tmp_path, [("b", ["a"], ""), ("a", [], "exit 9")])
    no_retries = "metadata: {name: a}\nspec:\n  retry: {maxAttempts: 1}\n"
    path.write_text(path.read_text().replace("metadata: {name: a}\nspec:\n", no_retries))
    result = run_cli("run", path, cwd=tmp_path)
    assert result.returncode == 1
    assert "error: dependency a did not succeed: b was not run" in result.stderr
    assert lines_of(tmp_path / "order.txt") == ["a"]
    assert not (tmp_path / "microtask-runs" / "b").exists()


def test_a_dependency_outside_the_file_is_refused(tmp_path: Path) -> None:
    path = chain(tmp_path, [("b", ["prepare"], "")])
    result = run_cli("run", path, cwd=tmp_path)
    assert result.returncode == 2
    assert "b depends on MicrotaskJob 'prepare', which is not in the file" in result.stderr
    assert not (tmp_path / "order.txt").exists()


def test_a_dependency_cycle_is_named_and_refused(tmp_path: Path) -> None:
    path = chain(tmp_path, [("a", ["b"], ""), ("b", ["c"], ""), ("c", ["a"], "")])
    result = run_cli("run", path, "--name", "a", cwd=tmp_path, timeout=20)
    assert result.returncode == 2
    assert "dependency cycle: a -> b -> c -> a" in result.stderr
    assert not (tmp_path / "order.txt").exists()


def test_a_suspended_job_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, job_yaml(total=2, extra="  suspend: true\n"))
    result = run_cli("run", path, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "count: spec.suspend is true: nothing would run; set it to false to run it here"
        in result.stderr
    )
    assert not (tmp_path / "microtask-runs").exists()


def test_a_rerun_of_another_job_points_to_rerun_failed(tmp_path: Path) -> None:
    text = job_yaml("again", total=2).replace(
        "items: {range: {start: 0, end: 2}}", "items: {fromJob: {name: count}}"
    )
    path = write(tmp_path, text)
    result = run_cli("run", path, cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.items.fromJob" in result.stderr
    assert "`microtask rerun FILE --failed`" in result.stderr
