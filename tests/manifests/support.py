"""Shared helpers of the manifest tests: where things are, loading, validating."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "charts" / "microtask-operator"
KIND_CONFIG = ROOT / "kind-config.yaml"

# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest
# the installed kubernetes-validate knows: manifests must be valid for both.
OLDEST_KUBERNETES = "1.29"
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, ".".join(NEWEST_KUBERNETES.split(".")[:2]))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path = DEPLOY) -> dict[str, Any]:
    """A folder's kustomization (deploy/ names it `Kustomization`; see that file)."""
    data: dict[str, Any] = yaml.safe_load((folder / "Kustomization").read_text())
    return data


def deploy_objects() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/` applies (before kustomize's reordering)."""
    return [
        doc for name in kustomization()["resources"] for doc in load_yaml_documents(DEPLOY / name)
    ]


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """A sort/identity key of an object: apiVersion, kind, namespace, name."""
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Objects indexed by `key`, refusing duplicates (kubectl would apply only one)."""
    indexed: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for obj in objects:
        assert key(obj) not in indexed, f"duplicate object {key(obj)}"
        indexed[key(obj)] = obj
    return indexed


def validate(obj: dict[str, Any], version: str) -> None:
    """Validate one object against the Kubernetes OpenAPI schema (strict: no unknown fields)."""
    kubernetes_validate.validate(obj, version, strict=True)


@cache
def gen_chart() -> ModuleType:
    """hack/gen-chart.py as a module (its file name is not an importable name)."""
    path = ROOT / "hack" / "gen-chart.py"
    spec = importlib.util.spec_from_file_location("gen_chart", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_chart"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def values_defaults() -> dict[str, Any]:
    """The chart's values.yaml."""
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The single Deployment among `objects`."""
    (found,) = [o for o in objects if o["kind"] == "Deployment"]
    return found


def container(deploy: dict[str, Any], name: str, field: str = "containers") -> dict[str, Any]:
    """One container of a Deployment by name."""
    found: list[dict[str, Any]] = [
        c for c in deploy["spec"]["template"]["spec"][field] if c["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


def env(container_spec: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}
