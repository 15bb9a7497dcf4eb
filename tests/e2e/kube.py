"""Shared definitions of the real-cluster tests: settings, API clients, observations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

GROUP, VERSION, PLURAL = "microtask.dev", "v1alpha1", "microtaskjobs"
TERMINAL_PHASES = ("Succeeded", "Failed")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    """Where the operator runs and which image the test workers use (environment)."""

    operator_namespace: str = _env("MICROTASK_E2E_OPERATOR_NAMESPACE", "microtask-system")
    release: str = _env("MICROTASK_E2E_RELEASE", "microtask-operator")
    # Any image with python3 and microtask-runner on PATH (runner/Dockerfile).
    image: str = _env("MICROTASK_E2E_IMAGE", "microtask-runner:e2e")
    timeout: float = float(_env("MICROTASK_E2E_TIMEOUT", "300"))
    gpu_label: str = _env("MICROTASK_E2E_GPU_LABEL", "nvidia.com/gpu.present")
    gpu_resource: str = _env("MICROTASK_E2E_GPU_RESOURCE", "nvidia.com/gpu")


@dataclass
class Cluster:
    """API clients for the cluster of KUBECONFIG."""

    core: Any
    batch: Any
    apps: Any
    custom: Any
    settings: Settings = field(default_factory=Settings)


@dataclass
class Observation:
    """What was seen while a MicrotaskJob ran: its pods' nodes and its Jobs in flight."""

    final: dict[str, Any] = field(default_factory=dict)
    pod_nodes: dict[str, set[str]] = field(default_factory=dict)  # pool -> node names
    max_jobs_in_flight: int = 0
    job_names: set[str] = field(default_factory=set)


def finished(job: Any) -> bool:
    """Whether a batch/v1 Job has completed or failed."""
    conditions = job.status.conditions or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


def cluster_problem() -> str | None:
    """Why the cluster of KUBECONFIG cannot be used, or None when it answers."""
    from kubernetes import client, config

    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    except Exception as error:  # no file, no context, a bad file: all mean "no cluster here"
        return f"no cluster configured in KUBECONFIG ({type(error).__name__})"
    try:
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as error:
        return f"the cluster in KUBECONFIG is not reachable ({type(error).__name__})"
    return None
