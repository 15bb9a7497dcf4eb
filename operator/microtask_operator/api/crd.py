"""The MicrotaskJob CustomResourceDefinition, generated from the API model.

pydantic emits JSON Schema (draft 2020-12 flavoured, with `$ref`s, `anyOf` for optional fields and
`additionalProperties: false` for closed objects); the API server wants a *structural* OpenAPI v3
schema: every node typed, no `$ref`, no `anyOf` carrying types, `properties` never next to
`additionalProperties`, unknown content allowed only under `x-kubernetes-preserve-unknown-fields`.
`openapi_schema()` performs that translation and refuses anything it does not understand, so a
model change that cannot be expressed fails loudly here instead of at `kubectl apply`.

`deploy/crd.yaml` is the output of `microtask crd` (a test fails when it drifts).
"""

from __future__ import annotations

import copy
from typing import Any

from microtask_operator.api import limits, names

__all__ = ["REGENERATE_COMMAND", "build_crd", "openapi_schema", "render_crd_yaml"]

REGENERATE_COMMAND = "microtask crd > deploy/crd.yaml"

_PRESERVE = "x-kubernetes-preserve-unknown-fields"

# Keywords copied as they are (after conversion of their sub-schemas where relevant).
_PLAIN_KEYWORDS = {
    "type",
    "format",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "required",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}

# The job's start, as the operator records it; rules with `oldSelf` run on updates only.
_NOT_STARTED = "!has(oldSelf.status) || !has(oldSelf.status.startTime)"
# Fields fixed once the job runs: microtask i must keep its item, and its records their store.
_FIXED_ONCE_STARTED = {
    "items": "self.spec.items == oldSelf.spec.items",
    "output": "has(self.spec.output) == has(oldSelf.spec.output)"
    " && (!has(self.spec.output) || self.spec.output == oldSelf.spec.output)",
}

# Cross-field rules checked by the API server at admission (the model checks them too, with
# friendlier messages, for `microtask validate` and the operator).
_VALIDATIONS: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec", "items", "range"): [
        {
            "rule": "self.end > (has(self.start) ? self.start : 0)",
            "message": "end must be greater than start",
        }
    ],
    ("spec",): [
        {
            # microtasksPerShard is an int-or-string: a string is `auto` (its pattern says so).
            "rule": "!has(self.targetShardSeconds) || !has(self.microtasksPerShard)"
            " || type(self.microtasksPerShard) == string",
            "message": "targetShardSeconds applies only with microtasksPerShard: auto",
            "fieldPath": ".targetShardSeconds",
        }
    ],
    ("spec", "retry"): [
        {
            "rule": "!has(self.backoffSeconds) || !has(self.maxBackoffSeconds)"
            " || self.maxBackoffSeconds >= self.backoffSeconds",
            "message": "maxBackoffSeconds must be at least backoffSeconds",
        }
    ],
    ("spec", "rebalance", "badNodes"): [
        {
            "rule": "!has(self.softAfterFailures) || !has(self.hardAfterFailures)"
            " || self.hardAfterFailures >= self.softAfterFailures",
            "message": "hardAfterFailures must be at least softAfterFailures",
        }
    ],
    (): [
        {
            "rule": "!has(self.spec.dependsOn) || !(self.metadata.name in self.spec.dependsOn)",
            "message": "a MicrotaskJob cannot depend on itself",
            # A rule of the root needs metadata.name; fieldPath makes the API server's error
            # name the field at fault (`spec.dependsOn: Invalid value...`) instead of `<nil>`.
            "fieldPath": ".spec.dependsOn",
        },
        *(
            {
                # Transition rules of the root, the only node that sees both spec and status
                # (the model has no counterpart: it sees one object). A rule naming `items.list`
                # does not compile, but `==` on the whole `items` compares the list too, entry
                # types included (as kube-apiserver v1.33 evaluates it). A main-resource update
                # keeps the stored status, so `oldSelf.status` is what the operator recorded.
                "rule": f"{_NOT_STARTED} || ({rule})",
                "message": f"spec.{field} cannot change once the job has started "
                "(status.startTime is set); create a new MicrotaskJob",
                "fieldPath": f".spec.{field}",
                "reason": "FieldValueForbidden",
            }
            for field, rule in _FIXED_ONCE_STARTED.items()
        ),
    ],
}


# "Exactly one of" as OpenAPI `oneOf` over `required`, not CEL: CEL sees only fields it can type,
# and `items.list` (entries of any JSON type) has none, so a rule naming it does not compile.
_EXACTLY_ONE_OF: dict[tuple[str, ...], tuple[str, ...]] = {
    ("spec", "items"): ("range", "list", "configMapRef", "fromJob"),
    ("spec", "output"): ("s3", "volume"),
    ("spec", "output", "volume"): ("name", "claimName"),
}


class SchemaError(ValueError):
    """The model uses a construct the structural-schema translation does not support."""


def _convert(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """A complete structural schema node for a JSON Schema node."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        out = _convert(defs[ref.rsplit("/", 1)[-1]], defs, where)
        # Field-level keywords (description, default) win over the referenced model's.
        out.update(_keywords(node, defs, where))
        return _ordered(out)
    if node.get("x-kubernetes-int-or-string"):
        # The one union a structural schema allows: integer or string, told apart by a rule.
        any_of = node.pop("anyOf")
        return _ordered({**_keywords(node, defs, where), "anyOf": any_of})
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        # Optional fields are `X | None`: the API server omits them instead of storing null.
        options = [o for o in any_of if o != {"type": "null"}]
        if len(options) != 1:
            raise SchemaError(f"{where}: a union of several types is not structural")
        out = _convert(options[0], defs, where)
        out.update(_keywords(node, defs, where))
        return _ordered(out)
    return _complete(_keywords(node, defs, where), where)


# Conventional keyword order, so the generated YAML reads like a hand-written CRD.
_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "properties",
    "additionalProperties",
    "required",
]


def _description(text: str) -> str:
    # Docstrings wrap lines for the source; a description wraps where the reader's terminal does.
    paragraphs = text.strip().split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _complete(out: dict[str, Any], where: str) -> dict[str, Any]:
    if "type" not in out and "enum" not in out and not out.get(_PRESERVE):
        if "properties" in out or "additionalProperties" in out:
            out["type"] = "object"
        elif not out.keys() - {"description", "default"}:
            out[_PRESERVE] = True  # Any: a free-form JSON value
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        if kinds == {str}:
            out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out[_PRESERVE] = True  # dict[str, Any]
    if "type" not in out and not out.get(_PRESERVE):
        raise SchemaError(f"{where}: no type")
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _keywords(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """The keywords of one node, translated (sub-schemas converted completely)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs", "examples"):
            continue
        if key == "default":
            if value is not None:
                out["default"] = value
        elif key == "description":
            out["description"] = _description(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 gives the bound; OpenAPI v3.0 a flag next to minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, f"{where}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{where}[]")
        elif key == "additionalProperties":
            if value is True:
                out[_PRESERVE] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{where}.*")
            # False: closed object; the API server prunes (or, with strict field validation,
            # rejects) unknown fields of a structural schema anyway.
        elif key in _PLAIN_KEYWORDS or key.startswith("x-kubernetes-"):
            out[key] = copy.deepcopy(value)  # never shared between nodes (no YAML anchors)
        else:
            raise SchemaError(f"{where}: unsupported schema keyword {key!r}")
    return out


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path:
        schema = schema["properties"][part]
    return schema


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of MicrotaskJob."""
    from microtask_operator.api.model import MicrotaskJob

    raw = MicrotaskJob.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs, "MicrotaskJob")
    properties = schema["properties"]
    properties["apiVersion"] = {"description": names.API_VERSION, "type": "string"}
    properties["kind"] = {"description": names.KIND, "type": "string"}
    # At the root, only metadata.name and generateName may be constrained.
    properties["metadata"] = {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": limits.MAX_NAME_LENGTH,
                "pattern": properties["metadata"]["properties"]["name"]["pattern"],
            }
        },
    }
    schema["required"] = ["spec"]
    for path, rules in _VALIDATIONS.items():
        _node(schema, path)["x-kubernetes-validations"] = copy.deepcopy(rules)
    for path, fields in _EXACTLY_ONE_OF.items():
        _node(schema, path)["oneOf"] = [{"required": [field]} for field in fields]
    return schema


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "microtask",
                "app.kubernetes.io/part-of": "microtask",
            },
        },
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": names.LIST_KIND,
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
                "categories": list(names.CATEGORIES),
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
                        {"name": "Total", "type": "integer", "jsonPath": ".status.total"},
                        {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
                        {
                            "name": "Running",
                            "type": "integer",
                            "jsonPath": ".status.running",
                            "priority": 1,
                        },
                        {
                            "name": "Message",
                            "type": "string",
                            "jsonPath": ".status.message",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as YAML, exactly as committed in deploy/crd.yaml."""
    import yaml

    header = (
        "# The MicrotaskJob CustomResourceDefinition, generated from the API model.\n"
        f"# Do not edit; regenerate with: {REGENERATE_COMMAND}\n"
    )

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # kubectl and humans read it; anchors would only obscure it

    body = yaml.dump(build_crd(), Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body
