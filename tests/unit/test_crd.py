"""The MicrotaskJob CRD: generated from the model, structural, valid, and committed as generated."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from microtask_operator.api.crd import (
    REGENERATE_COMMAND,
    build_crd,
    openapi_schema,
    render_crd_yaml,
)
from microtask_operator.api.loading import validate_job
from microtask_operator.commands import crd as crd_command

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "crd.yaml"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
RULE_REASONS = (
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
)
FIXED_MESSAGE = (
    "{} cannot change once the job has started (status.startTime is set); create a new MicrotaskJob"
)


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.field`, `[]` for items, `.*` for map values)."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")


def cel_typed(node: dict[str, Any]) -> bool:
    """Whether the API server's CEL declares a field of this schema (it needs a type throughout)."""
    if node.get("x-kubernetes-int-or-string"):
        return True
    if "type" not in node:
        return False
    if node["type"] == "array":
        return cel_typed(node["items"])
    return True


def field_exists(node: dict[str, Any], field_path: str) -> bool:
    """Whether a rule's `fieldPath` (`.a.b`, properties only) names a field below `node`."""
    current: dict[str, Any] | None = node
    for name in field_path.lstrip(".").split("."):
        current = (current.get("properties") or {}).get(name) if current else None
    return current is not None


def structural_violations(schema: dict[str, Any]) -> list[str]:
    """The rules of a structural schema (apiextensions.k8s.io/v1) that `schema` breaks."""
    out: list[str] = []
    for path, node in nodes(schema):
        where = path or "<root>"
        preserve = node.get(PRESERVE)
        if (
            "type" not in node
            and preserve is not True
            and not node.get("x-kubernetes-int-or-string")
        ):
            out.append(f"{where}: no type")
        if preserve is not None and preserve is not True:
            out.append(f"{where}: {PRESERVE} must be true when set")
        for key in ("$ref", "$schema", "definitions", "dependencies", "id", "patternProperties"):
            if key in node:
                out.append(f"{where}: {key} is not allowed")
        for junctor in JUNCTORS:
            branches = node.get(junctor)
            if branches is None:
                continue
            if junctor == "anyOf" and node.get("x-kubernetes-int-or-string"):
                if branches != [{"type": "integer"}, {"type": "string"}]:
                    out.append(f"{where}: int-or-string with anyOf other than integer, string")
                continue
            # Structural schemas allow junctors of value validations only; `oneOf` of
            # `required` is how "exactly one of these fields" is said.
            if junctor != "oneOf" or any(set(b) != {"required"} for b in branches):
                out.append(f"{where}: {junctor} beyond oneOf-of-required")
            elif {f for b in branches for f in b["required"]} - set(node.get("properties") or {}):
                out.append(f"{where}: oneOf requires unknown fields")
        if node.get("uniqueItems"):
            out.append(f"{where}: uniqueItems is not allowed")
        if "properties" in node and "additionalProperties" in node:
            out.append(f"{where}: properties and additionalProperties together")
        if node.get("additionalProperties") is False:
            out.append(f"{where}: additionalProperties false is not allowed")
        if ("properties" in node or "additionalProperties" in node) and node.get(
            "type"
        ) != "object":
            out.append(f"{where}: properties on a non-object")
        if "items" in node and (node.get("type") != "array" or not isinstance(node["items"], dict)):
            out.append(f"{where}: items must be one schema on an array")
        if node.get("type") == "array" and "items" not in node:
            out.append(f"{where}: an array without items")
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            if flag in node and not isinstance(node[flag], bool):
                out.append(f"{where}: {flag} must be a boolean (OpenAPI v3.0)")
        if node.get("nullable") is not None and "default" in node and node["default"] is None:
            out.append(f"{where}: default null")
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "set" and node["items"].get("type") not in ("string", "integer", "number"):
            out.append(f"{where}: list-type set needs scalar items")
        if list_type == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            item = node["items"]
            if not keys or item.get("type") != "object":
                out.append(f"{where}: list-type map needs object items and keys")
            missing = [
                k
                for k in keys
                if k not in item.get("required", [])
                and "default" not in item.get("properties", {}).get(k, {})
            ]
            if missing:
                out.append(f"{where}: list-map keys {missing} must be required")
        if "default" in node:
            # Defaults are validated (and pruned) by the API server: they must fit their node.
            errors = list(jsonschema.Draft4Validator(node).iter_errors(node["default"]))
            if errors:
                out.append(f"{where}: default does not validate: {errors[0].message}")
        for rule in node.get("x-kubernetes-validations") or []:
            fields = set(re.findall(r"\b(?:self|oldSelf)\.([A-Za-z_][A-Za-z0-9_]*)", rule["rule"]))
            unknown = fields - set(node.get("properties") or {})
            if unknown:
                out.append(f"{where}: CEL rule names unknown fields {sorted(unknown)}")
            # CEL declares only fields with a type; a rule naming an untyped one (a list of
            # anything) does not compile, and the API server refuses the whole CRD.
            untyped = {f for f in fields - unknown if not cel_typed(node["properties"][f])}
            if untyped:
                out.append(f"{where}: CEL rule names fields CEL cannot type {sorted(untyped)}")
            if not rule.get("message"):
                out.append(f"{where}: CEL rule without a message")
            if rule.get("reason", "FieldValueInvalid") not in RULE_REASONS:
                out.append(
                    f"{where}: CEL rule reason {rule['reason']!r} is not one of {RULE_REASONS}"
                )
            if "fieldPath" in rule and not field_exists(node, rule["fieldPath"]):
                out.append(f"{where}: CEL rule fieldPath {rule['fieldPath']!r} names no field")
    metadata = schema["properties"]["metadata"]
    if set(metadata) - {"type", "properties"} or set(metadata.get("properties", {})) - {
        "name",
        "generateName",
    }:
        out.append("metadata: only name and generateName may be constrained")
    return out


# --- generation and the committed copy ------------------------------------------------------------


def test_committed_crd_is_the_generated_one() -> None:
    assert COMMITTED.exists(), f"deploy/crd.yaml is missing; generate it with: {REGENERATE_COMMAND}"
    assert COMMITTED.read_text(encoding="utf-8") == render_crd_yaml(), (
        f"deploy/crd.yaml is out of date with the API model; regenerate it with: "
        f"{REGENERATE_COMMAND}"
    )


def test_crd_command_prints_exactly_the_committed_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    crd_command.configure(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert crd_command.execute(parser.parse_args([])) == 0
    assert out.getvalue() == render_crd_yaml()
    target = tmp_path / "crd.yaml"
    assert crd_command.execute(parser.parse_args(["-o", str(target)])) == 0
    assert target.read_text(encoding="utf-8") == render_crd_yaml()
    assert crd_command.execute(parser.parse_args(["-o", str(tmp_path / "no" / "x")])) == 1


def test_generation_is_deterministic_and_yaml_has_no_anchors() -> None:
    text = render_crd_yaml()
    assert text == render_crd_yaml()
    assert "&id" not in text and "*id" not in text
    assert text.startswith("# ")
    assert REGENERATE_COMMAND in text.splitlines()[1]
    assert yaml.safe_load(text) == build_crd()
    assert len(text) < 100_000


# --- the CRD object -------------------------------------------------------------------------------


def test_names_printer_columns_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "microtaskjobs.microtask.dev"
    spec = crd["spec"]
    assert spec["group"] == "microtask.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "MicrotaskJob"
    assert spec["names"]["plural"] == "microtaskjobs"
    assert spec["names"]["shortNames"] == ["mtj"]
    assert "microtask" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    default_columns = [
        c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert default_columns == ["Phase", "Succeeded", "Total", "Failed", "Age"]
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Succeeded"]["jsonPath"] == ".status.succeeded"
    assert columns["Total"]["jsonPath"] == ".status.total"
    assert columns["Failed"]["jsonPath"] == ".status.failed"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize("version", ["1.29", "1.33", kubernetes_validate.utils.latest_version()])
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(build_crd(), version, strict=True)


def test_schema_is_structural() -> None:
    assert structural_violations(openapi_schema()) == []


def test_the_structural_checker_catches_violations() -> None:
    schema = copy.deepcopy(openapi_schema())
    spec = schema["properties"]["spec"]["properties"]
    del spec["parallelism"]["type"]
    spec["retry"]["additionalProperties"] = {"type": "string"}
    spec["suspend"]["anyOf"] = [{"type": "boolean"}]
    spec["microtasksPerShard"]["exclusiveMinimum"] = 0
    spec["keepFailedShards"]["default"] = "three"
    schema["properties"]["metadata"]["properties"]["labels"] = {"type": "object"}
    found = "\n".join(structural_violations(schema))
    for words in (
        ".spec.parallelism: no type",
        ".spec.retry: properties and additionalProperties",
        ".spec.suspend: anyOf",
        ".spec.microtasksPerShard: exclusiveMinimum must be a boolean",
        ".spec.keepFailedShards: default does not validate",
        "metadata: only name",
    ):
        assert words in found


def test_items_and_output_are_fixed_once_the_job_started() -> None:
    transitions = [
        rule for rule in openapi_schema()["x-kubernetes-validations"] if "oldSelf" in rule["rule"]
    ]
    assert {rule["fieldPath"] for rule in transitions} == {".spec.items", ".spec.output"}
    for rule in transitions:
        field = rule["fieldPath"].lstrip(".")
        # Only once started: before, the job may still be edited freely.
        assert rule["rule"].startswith("!has(oldSelf.status) || !has(oldSelf.status.startTime) ||")
        assert f"self.{field} == oldSelf.{field}" in rule["rule"]
        assert rule["message"] == FIXED_MESSAGE.format(field)
        assert rule["reason"] == "FieldValueForbidden"


def test_the_structural_checker_catches_bad_rules() -> None:
    schema = copy.deepcopy(openapi_schema())
    schema["x-kubernetes-validations"] = [
        {"rule": "self.spec == oldSelf.spec", "message": "m", "reason": "Nope"},
        {"rule": "oldSelf.nothing == 1", "message": "m"},
        {"rule": "true", "message": "m", "fieldPath": ".spec.nothing"},
    ]
    found = "\n".join(structural_violations(schema))
    assert "reason 'Nope'" in found
    assert "unknown fields ['nothing']" in found
    assert "fieldPath '.spec.nothing' names no field" in found


def test_schema_is_a_valid_json_schema() -> None:
    # OpenAPI v3.0 schemas are JSON Schema draft 4 with extensions (x-*, nullable, format).
    jsonschema.Draft4Validator.check_schema(openapi_schema())


def test_free_form_only_where_kubernetes_owns_the_content() -> None:
    preserved = {path for path, node in nodes(openapi_schema()) if node.get(PRESERVE)}
    assert preserved == {
        ".spec.items.list[]",
        # a rerun's copy of the items it reruns
        ".status.source.items.list[]",
        ".spec.template.metadata",
        ".spec.template.spec",
        ".spec.template.spec.containers[]",
        ".spec.template.spec.containers[].env[]",
    }


def test_fields_are_described() -> None:
    schema = openapi_schema()
    spec = schema["properties"]["spec"]
    undocumented = [
        path
        for path, node in nodes(spec, ".spec")
        if not node.get("description")
        and not path.endswith(("[]", ".*"))
        and not path.startswith(".spec.template.spec.containers[].")
    ]
    assert undocumented == []


def test_limits_and_defaults_are_in_the_schema() -> None:
    spec = openapi_schema()["properties"]["spec"]["properties"]
    assert spec["parallelism"]["default"] == 10
    assert (spec["parallelism"]["minimum"], spec["parallelism"]["maximum"]) == (1, 10000)
    assert spec["items"]["properties"]["list"]["maxItems"] == 10000
    assert spec["placement"]["properties"]["accelerator"]["enum"] == ["gpu", "cpu", "auto"]
    assert spec["placement"]["properties"]["accelerator"]["default"] == "cpu"
    assert spec["retry"]["properties"]["maxAttempts"]["maximum"] == 100
    codes = spec["retry"]["properties"]["nonRetryableExitCodes"]
    assert codes["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
    assert spec["speculation"]["properties"]["slowdownFactor"]["exclusiveMinimum"] is True
    assert spec["dependsOn"]["x-kubernetes-list-type"] == "set"
    name = openapi_schema()["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] == 45
    status = openapi_schema()["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["startTime"]["format"] == "date-time"


# --- schema and model agree -----------------------------------------------------------------------


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(openapi_schema())
    return [error.message for error in validator.iter_errors(document)]


def examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") == "MicrotaskJob":
                found.append(document)
    return found


GOOD: dict[str, Any] = {
    "apiVersion": "microtask.dev/v1alpha1",
    "kind": "MicrotaskJob",
    "metadata": {"name": "ok"},
    "spec": {
        "items": {"range": {"end": 10}},
        "template": {"spec": {"containers": [{"name": "w", "image": "x", "command": ["a"]}]}},
    },
}


@pytest.mark.parametrize("document", [GOOD, *examples()], ids=lambda d: d["metadata"]["name"])
def test_valid_jobs_pass_the_schema(document: dict[str, Any]) -> None:
    assert validate_job(document)[1] == []
    assert schema_errors(document) == []


@pytest.mark.parametrize(
    "change",
    [
        {"parallelism": 0},
        {"microtasksPerShard": 10001},
        {"placement": {"accelerator": "tpu"}},
        {"retry": {"nonRetryableExitCodes": [300]}},
        {"template": {"spec": {"containers": []}}},
        {"template": None},
        {"items": {"range": {"end": 10, "step": 0}}},
        {"speculation": {"maxFraction": 0}},
        {"dependsOn": ["Not-A-Name"]},
        {"callable": "no callable here"},
    ],
)
def test_invalid_jobs_fail_the_schema_and_the_model(change: dict[str, Any]) -> None:
    document = copy.deepcopy(GOOD)
    for key, value in change.items():
        if value is None:
            del document["spec"][key]
        else:
            document["spec"][key] = value
    assert validate_job(document)[1], "the model accepted it"
    assert schema_errors(document), "the schema accepted it"


def test_long_names_fail_the_schema_and_the_model() -> None:
    document = copy.deepcopy(GOOD)
    document["metadata"]["name"] = "n" * 46
    assert validate_job(document)[1]
    assert schema_errors(document)
