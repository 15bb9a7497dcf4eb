"""Fixtures of the API-level tests: an emulated cluster (API server + fake control plane).

``cluster`` is a running :class:`~tests.integration.harness.cluster.Cluster` with the
project's CRDs applied (``deploy/crd.yaml`` and the kopf peering CRDs, when present), two
CPU and two GPU nodes, and the ``default`` namespace. ``cluster_factory`` builds clusters
with other nodes, CRDs or settings; every cluster is stopped (processes killed, threads
joined) when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CRD_FILES = (
    ROOT / "deploy" / "crd.yaml",
    ROOT / "deploy" / "10-kopf-peering-crds.yaml",
)


def project_crds() -> list[Path]:
    """The project's CRD manifests that exist in this checkout."""
    return [path for path in PROJECT_CRD_FILES if path.exists()]


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., Cluster]]:
    """``make(**kwargs)`` starts a :class:`Cluster` (project CRDs unless ``crds=`` is given)."""
    started: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        kwargs.setdefault("crds", project_crds())
        cluster = Cluster(**kwargs).start()
        started.append(cluster)
        return cluster

    yield make
    errors: list[BaseException] = []
    for cluster in reversed(started):
        try:
            cluster.stop()
        except BaseException as exc:  # stop them all, then report the first problem
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running emulated cluster with the default nodes and the project's CRDs."""
    return cluster_factory()
