"""The cluster file format: the documented examples load, and every mistake is named by its path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from microtask_operator.core.types import Pool
from microtask_operator.simulator import ClusterFileError, load_cluster
from microtask_operator.simulator.cluster import parse_cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def minimal(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "SimulatedCluster",
        "name": "t",
        "nodes": [{"name": "cpu", "count": 2, "pool": "cpu", "slots": 4}],
    }
    document.update(changes)
    return document


def problems_of(document: Any) -> list[str]:
    with pytest.raises(ClusterFileError) as caught:
        parse_cluster(document)
    return caught.value.problems


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_documented_examples_load(path: Path) -> None:
    cluster = load_cluster(path)

    assert cluster.nodes
    assert cluster.description


def test_realistic_example_is_8_gpu_and_32_cpu_nodes_with_one_loss() -> None:
    cluster = load_cluster(EXAMPLES / "realistic.yaml")

    assert sum(1 for n in cluster.nodes if n.pool is Pool.GPU) == 8
    assert sum(1 for n in cluster.nodes if n.pool is Pool.CPU) == 32
    assert len(cluster.node_losses) == 1
    assert cluster.workload.straggler_rate > 0


def test_groups_expand_to_numbered_nodes_and_rates_default_to_the_workload() -> None:
    cluster = parse_cluster(
        minimal(
            workload={"failureRate": 0.01, "stragglerRate": 0.1},
            nodes=[
                {"name": "cpu", "count": 3, "pool": "cpu", "slots": 2, "failureRate": 0.5},
                {"name": "gpu-a", "pool": "gpu", "gpus": 8, "speed": 2},
            ],
            nodeLosses=[{"node": "cpu-2", "at": 30, "deletedAfter": 5}],
        )
    )

    assert [n.name for n in cluster.nodes] == ["cpu-0", "cpu-1", "cpu-2", "gpu-a"]
    assert cluster.slots(Pool.CPU) == 6
    assert cluster.slots(Pool.GPU) == 8
    assert cluster.nodes[0].failure_rate == 0.5
    assert cluster.nodes[3].failure_rate is None  # the workload's 1% applies at run time
    assert cluster.node_losses[0].deleted_after == 5


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (minimal(kind="MicrotaskJob"), "kind: must be 'SimulatedCluster'"),
        (minimal(nodez=[]), "nodez: unknown field"),
        (minimal(nodes=[]), "nodes: must be a non-empty list"),
        (minimal(nodes=[{"name": "x", "pool": "tpu"}]), "nodes[0].pool: must be 'gpu' or 'cpu'"),
        (minimal(nodes=[{"name": "X_1", "pool": "cpu"}]), "nodes[0].name: must be a DNS-style"),
        (
            minimal(nodes=[{"name": "g", "pool": "gpu", "slots": 2}]),
            "nodes[0].slots: GPU nodes take `gpus`",
        ),
        (minimal(nodes=[{"name": "c", "pool": "cpu", "speed": 0}]), "nodes[0].speed: must be > 0"),
        (minimal(nodes=[{"name": "c", "pool": "cpu", "count": 0}]), "nodes[0].count: must be >= 1"),
        (
            minimal(nodes=[{"name": "c", "pool": "cpu", "failureRate": 1.5}]),
            "nodes[0].failureRate: must be <= 1",
        ),
        (
            minimal(
                nodes=[
                    {"name": "cpu", "count": 2, "pool": "cpu"},
                    {"name": "cpu-1", "pool": "cpu"},
                ]
            ),
            "node 'cpu-1' is defined twice",
        ),
        (minimal(workload={"jitter": "lots"}), "workload.jitter: must be a number"),
        (minimal(workload={"secondsPerMicrotask": {"tpu": 1}}), "secondsPerMicrotask.tpu"),
        (minimal(workload={"exitCodes": [0]}), "workload.exitCodes[0]: must be an exit code"),
        (minimal(nodeLosses=[{"node": "nope", "at": 1}]), "nodeLosses[0].node: must name a node"),
        (minimal(nodeLosses=[{"node": "cpu-0"}]), "nodeLosses[0].at: is required"),
        (minimal(limits={"maxSimulatedSeconds": 0}), "limits.maxSimulatedSeconds: must be > 0"),
        ([1, 2], "must be a mapping, got a list"),
        (None, "(file): is empty"),
    ],
)
def test_mistakes_are_reported_with_their_path(document: Any, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(document)), problems_of(document)


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(minimal(kind=None, nodes=[{"name": "c", "pool": "cpu", "speed": -1}]))

    assert len(problems) == 2


def test_unreadable_and_invalid_yaml_files_raise_cluster_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [unclosed\n", encoding="utf-8")

    with pytest.raises(ClusterFileError, match="invalid YAML at line 2"):
        load_cluster(broken)
    with pytest.raises(ClusterFileError, match="cannot read"):
        load_cluster(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"name": "c", "pool": "cpu", "count": -3}, "nodes[0].count: must be >= 1, got -3"),
        ({"name": "c", "pool": "cpu", "slots": 0}, "nodes[0].slots: must be >= 1, got 0"),
        ({"name": "g", "pool": "gpu", "gpus": 0}, "nodes[0].gpus: must be >= 1, got 0"),
        ({"name": "c", "pool": "cpu", "count": 2.5}, "nodes[0].count: must be an integer, got 2.5"),
        ({"name": "c", "pool": "cpu", "slots": "4"}, "nodes[0].slots: must be an integer, got '4'"),
    ],
)
def test_counts_and_slots_must_be_positive_integers(node: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(minimal(nodes=[node]))


def test_a_binary_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "cluster.bin"
    path.write_bytes(bytes(range(256)) * 8)

    with pytest.raises(ClusterFileError, match="binary data, not YAML text"):
        load_cluster(path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ClusterFileError, match="not UTF-8 text"):
        load_cluster(latin)


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.write(b"kind: SimulatedCluster\nnodes:\n")
        f.seek(50 * 1024 * 1024)
        f.write(b"\n")
    started = time.monotonic()

    with pytest.raises(ClusterFileError) as caught:
        load_cluster(path)

    assert time.monotonic() - started < 1.0
    assert caught.value.problems == [
        "the file is too large (50.0 MiB): a cluster file is at most 1 MiB"
    ]


def test_hostile_yaml_and_several_documents_are_problems(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
            for i in range(8)
        ),
        encoding="utf-8",
    )
    with pytest.raises(ClusterFileError, match="alias bomb"):
        load_cluster(bomb)
    two = tmp_path / "two.yaml"
    two.write_text("kind: SimulatedCluster\n---\nkind: SimulatedCluster\n", encoding="utf-8")
    with pytest.raises(ClusterFileError, match="holds 2 YAML documents"):
        load_cluster(two)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ClusterFileError, match="is a directory"):
        load_cluster(folder)
