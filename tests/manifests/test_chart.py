"""The Helm chart: generated from deploy/, equal to it by default, valid with any good values.

The chart is rendered and linted by the real, pinned helm (tests/manifests/helm.py), so what
is checked here is what `helm install` would do, values schema included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from microtask_operator.adapter.config import OperatorConfig

from tests.manifests.helm import lint, render_chart, template
from tests.manifests.restricted import pod_spec_of, restricted_violations
from tests.manifests.support import (
    CHART,
    DEPLOY,
    KUBERNETES_VERSIONS,
    OLDEST_KUBERNETES,
    ROOT,
    by_key,
    container,
    deploy_objects,
    deployment,
    env,
    gen_chart,
    load_yaml_documents,
    validate,
    values_defaults,
)
from tests.manifests.test_deploy import dashboard_configmap

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


# ------------------------------------------------------------- generation


def test_generated_chart_files_are_up_to_date() -> None:
    """Fails when deploy/ (or the generator) changed without `python hack/gen-chart.py`."""
    generator = gen_chart()
    for name, text in generator.generate(ROOT).items():
        path = CHART / name
        assert path.exists(), f"{name} is missing: run python hack/gen-chart.py"
        assert path.read_text() == text, f"{name} is out of date: run python hack/gen-chart.py"
    assert generator.stale(ROOT) == [], "files the generator no longer writes"


def test_chart_crds_are_the_crds_of_deploy() -> None:
    """The CRDs helm installs (from crds/) are deploy/'s, and no template renders one.

    helm installs crds/ once and never upgrades or deletes it; a CRD rendered by a
    template would be deleted, with every MicrotaskJob, by `helm uninstall`.
    """
    assert [o for o in render_chart() if o["kind"] == "CustomResourceDefinition"] == []
    chart_crds = [
        o for o in render_chart(include_crds=True) if o["kind"] == "CustomResourceDefinition"
    ]
    deploy_crds = [o for o in deploy_objects() if o["kind"] == "CustomResourceDefinition"]
    assert by_key(chart_crds) == by_key(deploy_crds)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert chart["type"] == "application"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


# ------------------------------------------- default values give deploy/ exactly


def test_default_values_render_exactly_deploy() -> None:
    """What Helm installs with default values is what `kubectl apply -k deploy/` installs.

    Helm does not manage the release namespace (`helm install --create-namespace`)
    and installs CRDs from crds/, so those are compared separately.
    """
    expected = [
        o for o in deploy_objects() if o["kind"] not in ("Namespace", "CustomResourceDefinition")
    ]
    rendered = render_chart()
    assert by_key(rendered) == by_key(expected)


def test_kube_version_admits_the_versions_checked_here_and_nothing_older() -> None:
    """Chart.yaml's kubeVersion agrees with OLDEST_KUBERNETES, the floor the tests check.

    helm refuses to render (so to install) for a cluster outside kubeVersion: a floor set
    too high locks out clusters the manifests are valid for, one too low lets the chart
    onto clusters nobody checked.
    """
    for version in KUBERNETES_VERSIONS:
        run = template(kube_version=version)
        assert run.ok, run.explain()
    major, minor = OLDEST_KUBERNETES.split(".")
    older = template(kube_version=f"{major}.{int(minor) - 1}.0")
    assert not older.ok, older.explain()
    assert "chart requires kubeVersion" in older.stderr, older.explain()


def test_optional_add_ons_render_exactly_deploy_monitoring() -> None:
    overrides = {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "grafanaDashboard": {"enabled": True},
    }
    rendered = by_key(render_chart(overrides))
    (monitor,) = load_yaml_documents(DEPLOY / "monitoring" / "servicemonitor.yaml")
    dashboard = dashboard_configmap()
    for obj in (monitor, dashboard):
        assert (
            rendered.pop(
                (
                    obj["apiVersion"],
                    obj["kind"],
                    obj["metadata"]["namespace"],
                    obj["metadata"]["name"],
                )
            )
            == obj
        )
    assert rendered == by_key(render_chart())


def test_values_yaml_matches_deploy() -> None:
    """The defaults that are not templated fields but still describe deploy/."""
    values = values_defaults()
    operator = container(deployment(deploy_objects()), "operator")
    settings = env(operator)
    assert settings["MICROTASK_GPU_RESOURCE_NAME"] == values["gpu"]["resourceName"]
    assert settings["MICROTASK_GPU_NODE_LABEL"] == values["gpu"]["nodeLabel"]
    assert settings["MICROTASK_GPU_TAINT_KEY"] == values["gpu"]["taintKey"]
    assert operator["image"].rsplit(":", 1)[0] == values["image"]["repository"]


# ------------------------------------------------------- other good values


CUSTOM_VALUES: dict[str, Any] = {
    "image": {
        "repository": "registry.example:5000/team/microtask-operator",
        "tag": "1.2.3",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "replicaCount": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "metrics": {
        "port": 9090,
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}},
    },
    "health": {"port": 9091},
    "gpu": {
        "resourceName": "amd.com/gpu",
        "nodeLabel": "amd.com/gpu.present",
        "taintKey": "amd.com/gpu",
    },
    "extraEnv": [{"name": "MICROTASK_RESYNC_SECONDS", "value": "30"}],
    "resources": {
        "requests": {"cpu": "200m", "memory": "300Mi"},
        "limits": {"cpu": 1, "memory": "1Gi"},
    },
    "nodeSelector": {"kubernetes.io/os": "linux", "pool": "system"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                ]
            }
        }
    },
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/owner": "platform"},
    "userRoles": {"create": False},
    "grafanaDashboard": {
        "enabled": True,
        "namespace": "monitoring",
        "labels": {"grafana_dashboard": "1"},
    },
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overrides", [{}, CUSTOM_VALUES], ids=["defaults", "custom"])
def test_helm_lint_strict_passes(overrides: dict[str, Any], version: str) -> None:
    """Schema, templates (NOTES.txt too), YAML and deprecated APIs: not even a warning."""
    run = lint(overrides, kube_version=version)
    assert run.ok, run.explain()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overrides", [{}, CUSTOM_VALUES], ids=["defaults", "custom"])
def test_rendered_objects_validate(overrides: dict[str, Any], version: str) -> None:
    objects = render_chart(overrides, release_name="mt", namespace="ops", kube_version=version)
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":  # not a built-in kind; see test_deploy
            validate(obj, version)


def test_custom_values_reach_the_objects() -> None:
    objects = render_chart(CUSTOM_VALUES, release_name="mt", namespace="ops")
    deploy = deployment(objects)
    pod = deploy["spec"]["template"]
    operator = container(deploy, "operator")
    settings = env(operator)
    assert deploy["metadata"] == {
        "name": "mt",
        "namespace": "ops",
        "labels": {
            "app.kubernetes.io/name": "microtask-operator",
            "app.kubernetes.io/instance": "mt",
            "app.kubernetes.io/part-of": "microtask",
        },
    }
    assert deploy["spec"]["replicas"] == 2
    assert operator["image"] == "registry.example:5000/team/microtask-operator:1.2.3"
    assert operator["imagePullPolicy"] == "Always"
    assert settings["MICROTASK_NAMESPACES"] == "team-a,team-b"
    assert (
        env(container(deploy, "ensure-peering", "initContainers"))["MICROTASK_NAMESPACES"]
        == "team-a,team-b"
    )
    assert settings["MICROTASK_PEERING"] == "mt"
    assert settings["MICROTASK_METRICS_PORT"] == "9090"
    assert settings["MICROTASK_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert settings["MICROTASK_RESYNC_SECONDS"] == "30"
    assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {
        "metrics": 9090,
        "health": 9091,
    }
    # As the operator's own config code reads them:
    config = OperatorConfig.from_env({k: v for k, v in settings.items() if isinstance(v, str)})
    assert config.namespaces == ("team-a", "team-b")
    assert (config.metrics_port, config.health_port, config.peering) == (9090, 9091, "mt")
    assert operator["resources"] == CUSTOM_VALUES["resources"]
    spec = pod["spec"]
    assert spec["tolerations"] == CUSTOM_VALUES["tolerations"]
    assert spec["affinity"] == CUSTOM_VALUES["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == CUSTOM_VALUES["nodeSelector"]
    assert pod["metadata"]["annotations"] == {"example.com/owner": "platform"}
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ClusterRole", "microtask-edit") not in kinds  # userRoles.create: false
    assert ("ServiceMonitor", "mt") in kinds
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["ports"][0]["port"] == 9090
    (dashboard,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    json.loads(dashboard["data"]["microtask-operator.json"])
    assert restricted_violations(pod_spec_of(deploy) or {}) == []


# ----------------------------------------------------------------- bad values

# Values helm must refuse, with the JSON pointer (helm's way of naming a field) of the
# field its schema error names.
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"replicas": 2}, ""),  # a typo of replicaCount: unknown keys are errors (at the root)
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    (
        {"image": {"repository": "ghcr.io/org/operator:1.0"}},
        "/image/repository",
    ),  # tag belongs in image.tag
    ({"image": {"tag": "has spaces"}}, "/image/tag"),
    ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["team-a", "team-a"]}, "/watchNamespaces"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"metrics": {"port": "8080"}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
    (
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "/metrics/serviceMonitor/interval",
    ),
    ({"gpu": {"resourceName": ""}}, "/gpu/resourceName"),
    ({"gpu": {"nodeLabel": "has space/gpu"}}, "/gpu/nodeLabel"),
    ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
    ({"extraEnv": [{"name": "MICROTASK_NAMESPACES", "value": "a"}]}, "/extraEnv/0/name"),
    ({"extraEnv": [{"name": "PORT", "value": 8080}]}, "/extraEnv/0/value"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"resources": "small"}, "/resources"),
    ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "/tolerations/0/effect"),
    ({"nodeSelector": {"pool": 1}}, "/nodeSelector/pool"),
    ({"userRoles": {"create": "no"}}, "/userRoles/create"),
    ({"grafanaDashboard": {"namespace": "Monitoring"}}, "/grafanaDashboard/namespace"),
]


def _names_the_field(output: str, overrides: dict[str, Any], where: str) -> bool:
    """Whether helm's message names the offending field.

    An unknown key is reported at its parent (at the root: `at ''`) with its own name.
    """
    if where:
        return f"at '{where}'" in output
    return "at ''" in output and all(f"'{name}'" in output for name in overrides)


@pytest.mark.parametrize(("overrides", "where"), BAD_VALUES)
def test_bad_values_are_refused_by_helm_template(overrides: dict[str, Any], where: str) -> None:
    """helm checks the values against values.schema.json before rendering anything."""
    run = template(overrides)
    assert not run.ok, f"accepted {overrides}\n{run.explain()}"
    assert "don't meet the specifications of the schema" in run.stderr, run.explain()
    assert _names_the_field(run.stderr, overrides, where), run.explain()
    assert run.stdout == "", run.explain()  # nothing half-rendered to apply


@pytest.mark.parametrize(("overrides", "where"), BAD_VALUES)
def test_bad_values_are_refused_by_helm_lint(overrides: dict[str, Any], where: str) -> None:
    run = lint(overrides)
    assert not run.ok, f"accepted {overrides}\n{run.explain()}"
    assert "1 chart(s) failed" in run.stderr, run.explain()
    # lint reports its findings on stdout, as `[ERROR] values.yaml: - at '/field': ...`.
    assert "[ERROR] values.yaml" in run.stdout, run.explain()
    assert _names_the_field(run.stdout, overrides, where), run.explain()


def test_templates_are_only_generated_or_notes() -> None:
    names = {p.name for p in (CHART / "templates").iterdir()}
    generated = {
        Path(name).name for name in gen_chart().generate(ROOT) if name.startswith("templates/")
    }
    assert names == generated | {"NOTES.txt"}
