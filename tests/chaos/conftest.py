"""Fixtures of the chaos suite: its seed and one control plane for the whole folder.

The control plane lives as long as the folder's tests (package scope), so it never runs beside the
API-level tests' own. Its three CPU nodes are the chaos tests' to disturb: a test that loses or
deletes a node gives the cluster back with every node Ready (see ``healthy_nodes``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.support import SEED_ENV, chaos_seed
from tests.integration.harness.cluster import Cluster, start_cluster
from tests.integration.harness.kubelet import cpu_node, schedulable

NODES = ("cpu-0", "cpu-1", "cpu-2")


@pytest.fixture(scope="session")
def seed() -> int:
    value = chaos_seed()
    print(f"chaos seed {value} (set {SEED_ENV} to repeat or vary it)")
    return value


@pytest.fixture(scope="package")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(
        tmp_path_factory.mktemp("chaos-cluster"), nodes=[cpu_node(n) for n in NODES]
    ) as cluster:
        yield cluster


@pytest.fixture
def cluster(chaos_cluster: Cluster) -> Iterator[Cluster]:
    """A namespace (and a fault proxy) of the test's own on the chaos cluster."""
    view = chaos_cluster.view()
    try:
        yield view
    finally:
        view.close()


@pytest.fixture
def healthy_nodes(chaos_cluster: Cluster) -> Iterator[list[str]]:
    """The names of the Ready CPU nodes; afterwards every lost node is back and Ready."""
    yield [n for n, state in chaos_cluster.kubelet.nodes.items() if not state.deleted]
    for name, state in list(chaos_cluster.kubelet.nodes.items()):
        if state.lost and not state.deleted:
            chaos_cluster.set_node_ready(name, True)
    live = [n for n, state in chaos_cluster.kubelet.nodes.items() if not state.deleted]
    chaos_cluster.wait_for(
        lambda: schedulable(chaos_cluster.list("nodes", None), live),
        timeout=60,
        message="every node Ready and schedulable again",
    )
