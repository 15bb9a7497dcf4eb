"""deploy/: valid Kubernetes objects, installable with `kubectl apply -k` and `-f`, secure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kopf._cogs.structs import references as kopf_references

from tests.kube_tools import require
from tests.manifests.restricted import pod_spec_of, restricted_violations
from tests.manifests.support import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    ROOT,
    by_key,
    container,
    deploy_objects,
    deployment,
    env,
    kustomization,
    load_yaml_documents,
    validate,
)

# Extensions `kubectl apply -f DIR` reads (k8s.io/cli-runtime FileExtensions).
KUBECTL_FILE_EXTENSIONS = {".json", ".yaml", ".yml"}


def dashboard_configmap() -> dict[str, Any]:
    """The ConfigMap deploy/monitoring/Kustomization's configMapGenerator produces."""
    folder = DEPLOY / "monitoring"
    config = kustomization(folder)
    (generator,) = config["configMapGenerator"]
    ((data_key, source),) = (entry.split("=", 1) for entry in generator["files"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": generator["name"],
            "namespace": config["namespace"],
            "labels": generator["options"]["labels"],
        },
        "data": {data_key: (folder / source).read_text()},
    }


# ---------------------------------------------------------------- validity


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    objects = deploy_objects()
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    }
    for obj in [*objects, dashboard_configmap()]:
        validate(obj, version)


PROMETHEUS_DURATION = "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
# The fields of monitoring.coreos.com/v1 ServiceMonitor that deploy/ uses, from the
# Prometheus Operator's CRD (kubernetes-validate knows only built-in kinds).
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": PROMETHEUS_DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_service_monitor_selects_the_metrics_service() -> None:
    (monitor,) = load_yaml_documents(DEPLOY / "monitoring" / "servicemonitor.yaml")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    (service,) = [o for o in deploy_objects() if o["kind"] == "Service"]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_dashboard_is_grafana_json_over_the_operator_metrics() -> None:
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    # The series the operator exports: a renamed metric must be renamed here too,
    # or its panel silently shows nothing.
    from microtask_operator.metrics import Metrics

    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    known = {f.name + suffix for f in Metrics().registry.collect() for suffix in suffixes}
    used = {name for expr in exprs for name in re.findall(r"\bmicrotask_[a-z_]+", expr)}
    assert used <= known, used - known
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------- kubectl apply -k / -f


# `kubectl kustomize` of these folders is offline and instant; the bound only keeps a wedged
# binary from holding the suite.
KUBECTL_TIMEOUT_SECONDS = 60.0


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` builds, with the pinned kubectl (not PATH's)."""
    kubectl = require("kubectl")["kubectl"]
    result = subprocess.run(
        [str(kubectl), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"`kubectl kustomize {folder}` exited {result.returncode}:\n{result.stderr}"
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomize_builds_deploy_and_monitoring() -> None:
    """kubectl's own kustomize (offline) reads the `Kustomization` files as intended."""
    assert by_key(_kustomize(DEPLOY)) == by_key(deploy_objects())
    (monitor,) = load_yaml_documents(DEPLOY / "monitoring" / "servicemonitor.yaml")
    assert by_key(_kustomize(DEPLOY / "monitoring")) == by_key([monitor, dashboard_configmap()])


def test_kustomization_lists_every_manifest_of_the_folder() -> None:
    on_disk = {p.name for p in DEPLOY.iterdir() if p.suffix in KUBECTL_FILE_EXTENSIONS}
    assert set(kustomization()["resources"]) == on_disk


def test_apply_f_on_the_folder_reads_only_kubernetes_objects() -> None:
    """`kubectl apply -f deploy/` reads every *.yaml/*.yml/*.json at the top level."""
    # A kustomization.yaml would be read as an object of an unknown kind and fail.
    assert not {"kustomization.yaml", "kustomization.yml"} & {p.name for p in DEPLOY.iterdir()}
    crd_kinds = {
        o["spec"]["names"]["kind"]
        for o in deploy_objects()
        if o["kind"] == "CustomResourceDefinition"
    }
    for path in sorted(DEPLOY.iterdir()):
        if path.suffix not in KUBECTL_FILE_EXTENSIONS:
            continue
        for obj in load_yaml_documents(path):
            assert obj.get("apiVersion") and obj.get("kind"), path
            # An object of a CRD applied in the same run fails: kubectl maps every
            # kind before creating anything ("ensure CRDs are installed first").
            assert obj["kind"] not in crd_kinds, f"{path.name}: {obj['kind']} needs its CRD first"


def test_the_namespace_is_applied_before_what_lives_in_it() -> None:
    """kubectl -f applies files in name order, -k in the Kustomization's order."""
    files = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in KUBECTL_FILE_EXTENSIONS)
    for order in (files, kustomization()["resources"]):
        seen_namespaces: set[str] = set()
        for name in order:
            for obj in load_yaml_documents(DEPLOY / name):
                namespace = obj["metadata"].get("namespace")
                assert namespace is None or namespace in seen_namespaces, f"{name}: {namespace}"
                if obj["kind"] == "Namespace":
                    seen_namespaces.add(obj["metadata"]["name"])


def test_every_namespaced_object_names_its_namespace() -> None:
    """With -f there is no kustomize `namespace:`: objects must not land in the default one."""
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in deploy_objects():
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == "microtask-system", obj["metadata"]["name"]


def test_the_operator_namespace_enforces_restricted_pod_security() -> None:
    (namespace,) = [o for o in deploy_objects() if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------------------------------------- CRDs


def _structural_problems(schema: dict[str, Any], where: str) -> list[str]:
    """Nodes of an openAPIV3Schema that make it non-structural (no type, no escape hatch)."""
    problems = []
    escapes = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
    if "type" not in schema and not any(schema.get(e) for e in escapes):
        problems.append(f"{where}: no type")
    for name, sub in schema.get("properties", {}).items():
        problems += _structural_problems(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += _structural_problems(schema["items"], f"{where}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _structural_problems(schema["additionalProperties"], f"{where}{{}}")
    return problems


def crds() -> list[dict[str, Any]]:
    return [o for o in deploy_objects() if o["kind"] == "CustomResourceDefinition"]


def test_crds_have_structural_schemas() -> None:
    assert {c["metadata"]["name"] for c in crds()} >= {
        "microtaskjobs.microtask.dev",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }
    for crd in crds():
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
        storage = [v for v in crd["spec"]["versions"] if v["storage"]]
        assert len(storage) == 1
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            assert schema["type"] == "object"
            assert _structural_problems(schema, crd["metadata"]["name"]) == []


def test_peering_crds_are_the_ones_kopf_uses() -> None:
    """kopf finds them by group, version and plural; it patches `status` on the object itself."""
    by_plural = {
        c["spec"]["names"]["plural"]: c for c in crds() if c["spec"]["group"] == "kopf.dev"
    }
    expected = {
        kopf_references.CLUSTER_PEERINGS_K: "Cluster",
        kopf_references.NAMESPACED_PEERINGS_K: "Namespaced",
    }
    for selector, scope in expected.items():
        crd = by_plural[selector.any_name]
        assert crd["spec"]["group"] == selector.group
        assert crd["spec"]["versions"][0]["name"] == selector.version
        assert crd["spec"]["scope"] == scope
        (version,) = crd["spec"]["versions"]
        # With a status subresource kopf would patch /status, which peering does not use.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


# ------------------------------------------------------------- the operator


def test_operator_settings_probes_and_ports() -> None:
    objects = deploy_objects()
    deploy = deployment(objects)
    operator = container(deploy, "operator")
    settings = env(operator)
    # No value (not "", which the API server drops, so `kubectl apply` re-sends it): all.
    assert "MICROTASK_NAMESPACES" in settings and settings["MICROTASK_NAMESPACES"] is None
    assert settings["MICROTASK_PEERING"] == deploy["metadata"]["name"]
    assert settings["MICROTASK_METRICS_PORT"] == "8080"
    assert settings["MICROTASK_HEALTH_PORT"] == "8081"
    assert settings["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # The init container peers under the same name and namespaces as the operator.
    init = container(deploy, "ensure-peering", "initContainers")
    for name in ("MICROTASK_NAMESPACES", "MICROTASK_PEERING"):
        assert env(init)[name] == settings[name]
    assert init["image"] == operator["image"]

    template = deploy["spec"]["template"]
    assert (
        deploy["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_operator_reads_deploy_settings_as_meant() -> None:
    """deploy/'s environment, parsed by the operator's own config code, says what deploy/ means.

    A renamed variable would otherwise be silently ignored in favour of its default.
    """
    from microtask_operator.adapter.config import OperatorConfig
    from microtask_operator.settings import ENVIRONMENT, Settings

    deploy = deployment(deploy_objects())
    operator = container(deploy, "operator")
    variables = {k: v for k, v in env(operator).items() if isinstance(v, str)}
    config = OperatorConfig.from_env(variables)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert config.namespaces == ()
    assert (config.metrics_port, config.health_port) == (ports["metrics"], ports["health"])
    assert config.peering == deploy["metadata"]["name"]
    settings = Settings.from_env(variables)
    assert settings.gpu_resource_name == variables["MICROTASK_GPU_RESOURCE_NAME"]
    assert settings.gpu_node_label == variables["MICROTASK_GPU_NODE_LABEL"]
    assert settings.gpu_taint_key == variables["MICROTASK_GPU_TAINT_KEY"]
    known = {variable for variable, _ in ENVIRONMENT.values()} | {
        "MICROTASK_NAMESPACES",
        "MICROTASK_PEERING",
        "MICROTASK_METRICS_PORT",
        "MICROTASK_HEALTH_PORT",
    }
    assert {name for name in variables if name.startswith("MICROTASK_")} <= known


def test_operator_pod_passes_pod_security_restricted() -> None:
    deploy = deployment(deploy_objects())
    pod = pod_spec_of(deploy)
    assert pod is not None
    assert restricted_violations(pod) == []
    assert pod["securityContext"]["runAsUser"] == 65532
    for field in ("initContainers", "containers"):
        for spec in pod[field]:
            assert spec["securityContext"]["readOnlyRootFilesystem"] is True, spec["name"]
            assert spec["resources"]["requests"] and spec["resources"]["limits"]["memory"]


def test_versions_agree() -> None:
    """One version for the distribution, the chart's appVersion and deploy/'s images."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = load_yaml_documents(ROOT / "charts" / "microtask-operator" / "Chart.yaml")[0]
    assert chart["appVersion"] == project
    pod = deployment(deploy_objects())["spec"]["template"]["spec"]
    for spec in pod["initContainers"] + pod["containers"]:
        assert spec["image"].rsplit(":", 1)[1] == project


# ------------------------------------------------------ the init container


class _ApiException(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _run_init_script(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], status: int | None
) -> list[tuple[Any, ...]]:
    """Run the init container's script against a stub `kubernetes` client; return its calls."""
    init = container(deployment(deploy_objects()), "ensure-peering", "initContainers")
    assert init["command"][:2] == ["python", "-c"]
    calls: list[tuple[Any, ...]] = []

    class CustomObjectsApi:
        def create_cluster_custom_object(self, *args: Any) -> None:
            calls.append(("cluster", *args))
            if status:
                raise _ApiException(status)

        def create_namespaced_custom_object(self, *args: Any) -> None:
            calls.append(("namespaced", *args))
            if status:
                raise _ApiException(status)

    modules = {
        name: types.ModuleType(name)
        for name in (
            "kubernetes",
            "kubernetes.client",
            "kubernetes.config",
            "kubernetes.client.exceptions",
        )
    }
    vars(modules["kubernetes.client"]).update(CustomObjectsApi=CustomObjectsApi)
    vars(modules["kubernetes.config"]).update(load_incluster_config=lambda: None)
    vars(modules["kubernetes.client.exceptions"]).update(ApiException=_ApiException)
    vars(modules["kubernetes"]).update(
        client=modules["kubernetes.client"], config=modules["kubernetes.config"]
    )
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    exec(compile(init["command"][2], "ensure-peering", "exec"), {"__name__": "__main__"})
    return calls


def _body(kind: str) -> dict[str, Any]:
    return {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": "mt"}}


def test_init_container_creates_the_cluster_peering(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _run_init_script(
        monkeypatch, {"MICROTASK_PEERING": "mt", "MICROTASK_NAMESPACES": ""}, None
    )
    assert calls == [
        ("cluster", "kopf.dev", "v1", "clusterkopfpeerings", _body("ClusterKopfPeering"))
    ]


def test_init_container_creates_one_peering_per_watched_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {"MICROTASK_PEERING": "mt", "MICROTASK_NAMESPACES": "a, b"}
    calls = _run_init_script(monkeypatch, environ, None)
    assert calls == [
        ("namespaced", "kopf.dev", "v1", ns, "kopfpeerings", _body("KopfPeering"))
        for ns in ("a", "b")
    ]


def test_init_container_accepts_an_existing_peering(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _run_init_script(
        monkeypatch, {"MICROTASK_PEERING": "mt", "MICROTASK_NAMESPACES": ""}, 409
    )
    assert len(calls) == 1


def test_init_container_fails_until_the_peering_crd_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SystemExit, match="not served yet"):
        _run_init_script(monkeypatch, {"MICROTASK_PEERING": "mt", "MICROTASK_NAMESPACES": ""}, 404)


def test_init_container_reports_other_api_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(_ApiException):
        _run_init_script(monkeypatch, {"MICROTASK_PEERING": "mt", "MICROTASK_NAMESPACES": ""}, 403)
