"""The Helm chart: generated from deploy/, equal to it by default, valid with any good values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from microtask_operator.adapter.config import OperatorConfig

from tests.manifests.helmlite import TemplateError, merge_values, render_chart, render_template
from tests.manifests.restricted import pod_spec_of, restricted_violations
from tests.manifests.support import (
    CHART,
    DEPLOY,
    KUBERNETES_VERSIONS,
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


def schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]


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
    chart_crds = sorted(
        (doc for p in (CHART / "crds").glob("*.yaml") for doc in load_yaml_documents(p)),
        key=lambda d: d["metadata"]["name"],
    )
    deploy_crds = sorted(
        (o for o in deploy_objects() if o["kind"] == "CustomResourceDefinition"),
        key=lambda d: d["metadata"]["name"],
    )
    assert chart_crds == deploy_crds


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
    rendered = render_chart(CHART)
    assert by_key(rendered) == by_key(expected)


def test_optional_add_ons_render_exactly_deploy_monitoring() -> None:
    overrides = {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "grafanaDashboard": {"enabled": True},
    }
    rendered = by_key(render_chart(CHART, overrides))
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
    assert rendered == by_key(render_chart(CHART))


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


def test_custom_values_pass_the_schema() -> None:
    assert schema_errors(merge_values(values_defaults(), CUSTOM_VALUES)) == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overrides", [{}, CUSTOM_VALUES], ids=["defaults", "custom"])
def test_rendered_objects_validate(overrides: dict[str, Any], version: str) -> None:
    for obj in render_chart(CHART, overrides, release_name="mt", release_namespace="ops"):
        if obj["kind"] != "ServiceMonitor":  # not a built-in kind; see test_deploy
            validate(obj, version)


def test_custom_values_reach_the_objects() -> None:
    objects = render_chart(CHART, CUSTOM_VALUES, release_name="mt", release_namespace="ops")
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


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"replicaCount": -1}, "replicaCount"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicas": 2}, ""),  # a typo of replicaCount: unknown keys are errors
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        (
            {"image": {"repository": "ghcr.io/org/operator:1.0"}},
            "image.repository",
        ),  # tag belongs in image.tag
        ({"image": {"tag": "has spaces"}}, "image.tag"),
        ({"watchNamespaces": "team-a"}, "watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0"),
        ({"watchNamespaces": ["team-a", "team-a"]}, "watchNamespaces"),
        ({"metrics": {"port": 70000}}, "metrics.port"),
        ({"metrics": {"port": "8080"}}, "metrics.port"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "metrics.serviceMonitor.enabled"),
        (
            {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
            "metrics.serviceMonitor.interval",
        ),
        ({"gpu": {"resourceName": ""}}, "gpu.resourceName"),
        ({"gpu": {"nodeLabel": "has space/gpu"}}, "gpu.nodeLabel"),
        ({"extraEnv": [{"value": "x"}]}, "extraEnv.0"),
        ({"extraEnv": [{"name": "MICROTASK_NAMESPACES", "value": "a"}]}, "extraEnv.0.name"),
        ({"extraEnv": [{"name": "PORT", "value": 8080}]}, "extraEnv.0.value"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory"),
        ({"resources": "small"}, "resources"),
        ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "tolerations.0.effect"),
        ({"nodeSelector": {"pool": 1}}, "nodeSelector.pool"),
        ({"userRoles": {"create": "no"}}, "userRoles.create"),
        ({"grafanaDashboard": {"namespace": "Monitoring"}}, "grafanaDashboard.namespace"),
    ],
)
def test_bad_values_are_rejected(overrides: dict[str, Any], where: str) -> None:
    errors = schema_errors(merge_values(values_defaults(), overrides))
    assert errors, f"accepted {overrides}"
    assert any(e.startswith(f"{where}:") for e in errors), errors


def test_defaults_pass_the_schema() -> None:
    assert schema_errors(values_defaults()) == []


# -------------------------------------------------------------- the renderer


def _render(source: str, values: dict[str, Any] | None = None) -> str:
    return render_template(
        source,
        values or {},
        chart_dir=CHART,
        release_name="rel",
        release_namespace="ns",
        app_version="9.9.9",
    )


def test_renderer_trims_whitespace_like_go_templates() -> None:
    source = "a:\n  {{- if .Values.on }}\n  b: {{ .Values.on }}\n  {{- end }}\nc: 1\n"
    assert _render(source, {"on": 1}) == "a:\n  b: 1\nc: 1\n"
    assert _render(source, {"on": 0}) == "a:\nc: 1\n"


def test_renderer_pipelines_and_scopes() -> None:
    values = {"tag": "", "names": ["a", "b"], "map": {"k": "v"}}
    assert _render("{{ .Values.tag | default .Chart.AppVersion }}", values) == "9.9.9"
    assert _render('{{ join "," .Values.names | quote }}', values) == '"a,b"'
    assert _render(
        "{{- range .Values.names }}\n- {{ . }}-{{ $.Release.Name }}\n{{- end }}", values
    ) == ("\n- a-rel\n- b-rel")
    assert (
        _render("x:\n{{- with .Values.map }}\n  {{- toYaml . | nindent 2 }}\n{{- end }}", values)
        == "x:\n  k: v"
    )


def test_renderer_refuses_what_the_generator_never_emits() -> None:
    for source in (
        '{{ include "x" . }}',
        "{{ .Values.a | upper }}",
        "{{/* note */}}",
        "{{ if .Values.a }}",
        "{{ end }}",
    ):
        with pytest.raises(TemplateError):
            _render(source, {"a": "b"})


def test_generator_emits_only_what_the_renderer_knows() -> None:
    """Every template renders with defaults and with all optional parts switched on."""
    for overrides in ({}, CUSTOM_VALUES):
        for path in sorted((CHART / "templates").glob("*.yaml")):
            _render(path.read_text(), merge_values(values_defaults(), overrides))


def test_templates_are_only_generated_or_notes() -> None:
    names = {p.name for p in (CHART / "templates").iterdir()}
    generated = {
        Path(name).name for name in gen_chart().generate(ROOT) if name.startswith("templates/")
    }
    assert names == generated | {"NOTES.txt"}
