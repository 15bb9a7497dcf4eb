"""A stand-in for a Kubernetes cluster: an API server emulator plus a fake control plane.

Nothing of Kubernetes itself can run on the project's machines, so the API-level tests run
the real operator (kopf + the official client) against this harness over HTTP:

* :mod:`.emulator` - the API server (kmock's scaffold + :mod:`.store`), request log, faults;
* :mod:`.controlplane` - job controller, scheduler, kubelet (real local processes), nodes;
* :mod:`.cluster` - both in a background thread, with a kubeconfig and test helpers;
* :mod:`.kopf_runner` - a kopf operator in a thread, with its log records captured.

Typical use (the ``cluster`` fixture of ``tests/integration/conftest.py`` does the first
line)::

    with Cluster(crds=[Path("deploy/crd.yaml")]) as cluster:
        cluster.create({"apiVersion": "microtask.dev/v1alpha1", "kind": "MicrotaskJob", ...})
        with KopfRunner(cluster, registry=registry) as operator:
            cluster.wait_for(lambda: cluster.list("jobs", "default"), timeout=10)
            operator.assert_clean()
        writes = cluster.count_writes()  # Counter of (verb, resource, subresource)
"""

from __future__ import annotations

from .cluster import Cluster, load_crds
from .controlplane import (
    ControlPlane,
    ControlPlaneSettings,
    NodeBehaviour,
    NodeSpec,
    cpu_node,
    default_nodes,
    gpu_node,
)
from .emulator import ApiEmulator, ApiRequest, ApiServer, Fault, RequestLog
from .kopf_runner import KopfRunner
from .store import ApiError, Store

__all__ = [
    "ApiEmulator",
    "ApiError",
    "ApiRequest",
    "ApiServer",
    "Cluster",
    "ControlPlane",
    "ControlPlaneSettings",
    "Fault",
    "KopfRunner",
    "NodeBehaviour",
    "NodeSpec",
    "RequestLog",
    "Store",
    "cpu_node",
    "default_nodes",
    "gpu_node",
    "load_crds",
]
