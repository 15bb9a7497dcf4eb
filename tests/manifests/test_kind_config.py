"""kind-config.yaml: a valid kind Cluster whose GPU workers look like the chart expects."""

from __future__ import annotations

from typing import Any

import jsonschema
import yaml
from microtask_operator.settings import Settings

from tests.manifests.support import (
    KIND_CONFIG,
    container,
    deploy_objects,
    deployment,
    env,
    values_defaults,
)

# A Kubernetes label key or taint key: an optional DNS-subdomain prefix, then a name.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)

# The part of kind's v1alpha4 Cluster config (sigs.k8s.io/kind/pkg/apis/config/v1alpha4)
# that this file uses. kind rejects unknown fields, so they are errors here too.
KIND_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion", "nodes"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role"],
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": {"type": "string"},
                    "labels": {
                        "type": "object",
                        "propertyNames": {"pattern": LABEL_KEY},
                        "additionalProperties": {"type": "string", "maxLength": 63},
                    },
                    "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

# The kubeadm JoinConfiguration fields the node patches use (kubeadm v1beta3/v1beta4).
JOIN_PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "nodeRegistration"],
    "properties": {
        "kind": {"const": "JoinConfiguration"},
        "apiVersion": {"enum": ["kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4"]},
        "nodeRegistration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "taints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["key", "effect"],
                        "properties": {
                            "key": {"type": "string", "pattern": LABEL_KEY},
                            "value": {"type": "string", "maxLength": 63},
                            "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                        },
                    },
                }
            },
        },
    },
}


def config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(KIND_CONFIG.read_text())
    return data


def taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for patch in node.get("kubeadmConfigPatches", []):
        document = yaml.safe_load(patch)
        jsonschema.validate(document, JOIN_PATCH_SCHEMA)
        found.extend(document["nodeRegistration"].get("taints", []))
    return found


def test_kind_config_is_a_valid_kind_cluster() -> None:
    data = config()
    jsonschema.validate(data, KIND_CLUSTER_SCHEMA)
    roles = [node["role"] for node in data["nodes"]]
    assert roles.count("control-plane") == 1
    for node in data["nodes"]:
        taints(node)  # every kubeadm patch is a valid JoinConfiguration patch
        if node["role"] == "control-plane":
            # kind applies JoinConfiguration patches to joining nodes only.
            assert "kubeadmConfigPatches" not in node


def test_gpu_workers_carry_the_label_and_taint_of_the_defaults() -> None:
    """What the chart (and the operator's defaults) call a GPU node is what kind creates."""
    gpu = values_defaults()["gpu"]
    settings = env(container(deployment(deploy_objects()), "operator"))
    assert (settings["MICROTASK_GPU_NODE_LABEL"], settings["MICROTASK_GPU_TAINT_KEY"]) == (
        gpu["nodeLabel"],
        gpu["taintKey"],
    )
    workers = [node for node in config()["nodes"] if node["role"] == "worker"]
    gpu_workers = [n for n in workers if n.get("labels", {}).get(gpu["nodeLabel"]) == "true"]
    cpu_workers = [n for n in workers if n not in gpu_workers]
    assert len(gpu_workers) == 2
    assert len(cpu_workers) == 2
    # The operator's label value and taint effect (settings, not chart values) match too.
    defaults = Settings()
    assert defaults.gpu_node_label_value == "true"
    for node in gpu_workers:
        assert taints(node) == [
            {"key": gpu["taintKey"], "value": "present", "effect": defaults.gpu_taint_effect}
        ]
    for node in cpu_workers:
        assert gpu["nodeLabel"] not in node.get("labels", {})
        assert taints(node) == []
