"""Fixtures of the API-level tests: the real control plane, our kubelet, a namespace per test.

``cluster`` is a view of one cluster shared by the whole run (started once: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, the project's CRDs and RBAC from deploy/, our kubelet
with two CPU and two GPU nodes), with a namespace of its own. Tests that change nodes (capacity,
loss, behaviour) or watch every namespace take ``cluster_factory`` instead, which starts a
cluster of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness.cluster import Cluster, start_cluster


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(tmp_path_factory.mktemp("shared-cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Iterator[Cluster]:
    """A namespace of its own in the shared cluster (deleted afterwards)."""
    view = shared_cluster.view()
    try:
        yield view
    finally:
        view.close()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make(nodes=..., settings=...)`` starts a cluster of the test's own."""
    with ExitStack() as stack:
        count = 0

        def make(**kwargs: Any) -> Cluster:
            nonlocal count
            count += 1
            return stack.enter_context(start_cluster(tmp_path / f"cluster-{count}", **kwargs))

        yield make
