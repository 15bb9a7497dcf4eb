"""The cluster commands' answers that need no cluster: bad files, bad options, no server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from microtask_operator.cli import build_parser, main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kubeconfig whose server does not listen."""
    server = f"https://127.0.0.1:{closed_port()}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "x"}}],
        "current-context": "here",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return server


def job_yaml(name: str = "thumbs", parallelism: int = 2) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "microtask.dev/v1alpha1",
            "kind": "MicrotaskJob",
            "metadata": {"name": name},
            "spec": {
                "items": {"range": {"start": 0, "end": 10}},
                "parallelism": parallelism,
                "template": {
                    "spec": {"containers": [{"name": "w", "image": "i", "command": ["true"]}]}
                },
            },
        }
    )


def test_submit_refuses_an_invalid_file_before_any_call(
    tmp_path: Path, nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(job_yaml(parallelism=0))
    assert main(["submit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.parallelism" in err
    assert "cannot reach" not in err  # the file was refused here, the server never asked


def test_submit_watch_follows_one_job(
    tmp_path: Path, nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(job_yaml("a") + "---\n" + job_yaml("b"))
    assert main(["submit", str(path), "--watch"]) == 2
    assert "--watch follows one MicrotaskJob" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["get"], ["get", "thumbs", "-o", "wide"], ["watch", "thumbs"], ["delete", "thumbs"]],
)
def test_an_unreachable_server_is_one_line(
    nowhere: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: cannot reach the Kubernetes API server at {nowhere}: connection refused "
        "(is the cluster running, and is the kubeconfig's context the right one?)"
    ]
    assert captured.out == ""


def test_get_by_name_in_every_namespace_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "thumbs", "-A"]) == 1
    assert "cannot be retrieved by name across all namespaces" in capsys.readouterr().err


def test_an_unknown_context_is_named(nowhere: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "--context", "there"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: no context 'there' in the kubeconfig (contexts: here)"
    )


def test_help_names_the_kubectl_plugin_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/kubectl-microtask", "get"])
    assert build_parser().format_usage().startswith("usage: kubectl microtask ")
    monkeypatch.setattr("sys.argv", ["/venv/bin/microtask"])
    assert build_parser().format_usage().startswith("usage: microtask ")


@pytest.mark.parametrize("command", ["submit", "get", "watch", "delete"])
def test_every_cluster_command_takes_namespace_and_context(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    options = sub.choices[command]._option_string_actions  # type: ignore[index]
    assert {"-n", "--namespace", "--context"} <= set(options)
