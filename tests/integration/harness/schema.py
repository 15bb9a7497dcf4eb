"""Server-side schema work of the API server: pruning, defaulting and validation.

Custom resources are checked against their CRD's ``openAPIV3Schema`` the way the
apiextensions server does it, in the same order: unknown fields are pruned (unless
``x-kubernetes-preserve-unknown-fields``), ``default`` values are filled in, then the object
is validated; failures become ``causes`` with the field path (``spec.parallelism``) and the
wording of a real server, so an operator or a test can assert on them.

OpenAPI v3.0 is close to JSON Schema draft 4, so jsonschema's Draft4Validator does the
checking after ``nullable`` / ``x-kubernetes-int-or-string`` are translated. CEL rules
(``x-kubernetes-validations``) are not evaluated: there is no CEL interpreter here.

Object metadata (names, label keys and values, annotation size) is validated for every
resource, built-in or custom, because those limits bite operators in real clusters.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

__all__ = [
    "Cause",
    "CompiledSchema",
    "validate_metadata",
]


@dataclass(frozen=True)
class Cause:
    """One entry of a 422 Status's ``details.causes``."""

    reason: str
    message: str
    field: str

    def as_dict(self) -> dict[str, str]:
        """The JSON form used in Status bodies."""
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _to_jsonschema(node: Any) -> Any:
    """Translate one OpenAPI v3.0 (structural) schema node into JSON Schema draft 4."""
    if isinstance(node, list):
        return [_to_jsonschema(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue
        if key == "properties":
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif (key == "additionalProperties" and isinstance(value, Mapping)) or key in (
            "items",
            "not",
            "allOf",
            "anyOf",
            "oneOf",
        ):
            out[key] = _to_jsonschema(value)
        elif key == "format":
            continue  # formats are advisory here (int32, int64, date-time, ...)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _format_value(value: Any) -> str:
    """Render a value as the API server's Go formatting roughly does in messages."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_format_value(v)}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_format_value(v) for v in value) + "]"
    return json.dumps(value)


def _json_type(value: Any) -> str:
    """The JSON type name the API server reports for a value of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number" if isinstance(value, float) else "integer"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def format_path(parts: Iterable[Any]) -> str:
    """``["spec", "items", 0, "name"]`` -> ``spec.items[0].name``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _cause_for(error: jsonschema.ValidationError) -> list[Cause]:
    path = list(error.absolute_path)
    field = format_path(path)
    value = error.instance
    shown = f"{field} in body"
    match error.validator:
        case "required":
            missing = [name for name in error.validator_value if name not in (value or {})]
            return [
                Cause("FieldValueRequired", "Required value", format_path([*path, name]))
                for name in missing
            ]
        case "type":
            wanted = error.validator_value
            wanted = wanted[0] if isinstance(wanted, list) else wanted
            return [
                Cause(
                    "FieldValueTypeInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} must be of type {wanted}: "
                    f'"{_json_type(value)}"',
                    field,
                )
            ]
        case "enum":
            supported = ", ".join(_format_value(v) for v in error.validator_value)
            return [
                Cause(
                    "FieldValueNotSupported",
                    f"Unsupported value: {_format_value(value)}: supported values: {supported}",
                    field,
                )
            ]
        case "minimum":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} should be greater than "
                    f"or equal to {error.validator_value}",
                    field,
                )
            ]
        case "maximum":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} should be less than "
                    f"or equal to {error.validator_value}",
                    field,
                )
            ]
        case "maxLength":
            return [
                Cause(
                    "FieldValueTooLong",
                    f"Too long: may not be more than {error.validator_value} bytes",
                    field,
                )
            ]
        case "minLength":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} should be at least "
                    f"{error.validator_value} chars long",
                    field,
                )
            ]
        case "pattern":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} should match "
                    f"'{error.validator_value}'",
                    field,
                )
            ]
        case "maxItems":
            return [
                Cause(
                    "FieldValueTooMany",
                    f"Too many: {len(value)}: must have at most {error.validator_value} items",
                    field,
                )
            ]
        case "minItems":
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {len(value)}: {shown} should have at least "
                    f"{error.validator_value} items",
                    field,
                )
            ]
        case "oneOf" | "anyOf":
            which = (
                "one and only one schema (oneOf)"
                if error.validator == "oneOf"
                else ("at least one schema (anyOf)")
            )
            return [
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {_format_value(value)}: {shown} must validate {which}",
                    field,
                )
            ]
    return [
        Cause("FieldValueInvalid", f"Invalid value: {_format_value(value)}: {error.message}", field)
    ]


class CompiledSchema:
    """One CRD version's schema, ready to prune, default and validate objects."""

    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self.openapi: Mapping[str, Any] = openapi
        translated = _to_jsonschema(openapi)
        # The root's apiVersion/kind/metadata are the server's business, not the schema's.
        jsonschema.Draft4Validator.check_schema(translated)
        self._validator = jsonschema.Draft4Validator(translated)

    # --- pruning -------------------------------------------------------------------------------

    def prune(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Drop fields the schema does not know (root keeps apiVersion/kind/metadata)."""
        keep = {"apiVersion", "kind", "metadata"}
        pruned = _prune(obj, self.openapi, root=True)
        for key in keep:
            if key in obj:
                pruned[key] = obj[key]
        result: dict[str, Any] = pruned
        return result

    # --- defaulting ----------------------------------------------------------------------------

    def apply_defaults(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Fill ``default`` values of absent properties, recursively (returns a new object)."""
        result = copy.deepcopy(obj)
        _default(result, self.openapi)
        return result

    # --- validation ----------------------------------------------------------------------------

    def validate(self, obj: Mapping[str, Any]) -> list[Cause]:
        """Causes for every violation (empty when valid), ordered by field path."""
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        # A CRD schema may restrict metadata.name and metadata.generateName (nothing else of
        # metadata), and the server enforces those restrictions.
        if "metadata" in (self.openapi.get("properties") or {}):
            meta = obj.get("metadata") or {}
            body["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
        causes: list[Cause] = []
        for error in self._validator.iter_errors(body):
            causes.extend(_cause_for(error))
        causes.extend(_list_type_causes(body, self.openapi, []))
        unique: dict[tuple[str, str], Cause] = {}
        for cause in causes:
            unique.setdefault((cause.field, cause.message), cause)
        return sorted(unique.values(), key=lambda c: c.field)


def _prune(value: Any, schema: Mapping[str, Any], root: bool = False) -> Any:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return value
        props: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if key in props:
                out[key] = _prune(sub, props[key])
            elif isinstance(additional, Mapping):
                out[key] = _prune(sub, additional)
            elif (
                additional is True
                or schema.get("x-kubernetes-preserve-unknown-fields")
                or (root and key in ("apiVersion", "kind", "metadata"))
            ):
                out[key] = sub
            # else: unknown field, pruned
        return out
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [_prune(item, items) for item in value]
        return value
    return value


def _default(value: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key, sub_value in value.items():
                if key not in props:
                    _default(sub_value, additional)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for item in value:
                _default(item, items)


def _list_type_causes(value: Any, schema: Mapping[str, Any], path: list[Any]) -> list[Cause]:
    """``x-kubernetes-list-type: set|map`` uniqueness, which JSON Schema cannot express."""
    causes: list[Cause] = []
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[str] = set()
        for index, item in enumerate(value):
            if list_type == "set":
                key = json.dumps(item, sort_keys=True)
            elif list_type == "map" and isinstance(item, Mapping):
                keys = schema.get("x-kubernetes-list-map-keys") or []
                key = json.dumps([item.get(k) for k in keys])
            else:
                key = None
            if key is not None:
                if key in seen:
                    causes.append(
                        Cause(
                            "FieldValueDuplicate",
                            f"Duplicate value: {_format_value(item)}",
                            format_path([*path, index]),
                        )
                    )
                seen.add(key)
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                causes.extend(_list_type_causes(item, items, [*path, index]))
    elif isinstance(value, Mapping):
        props: Mapping[str, Any] = schema.get("properties") or {}
        for key, sub in props.items():
            if key in value:
                causes.extend(_list_type_causes(value[key], sub, [*path, key]))
    return causes


# --- metadata ------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_MAX_ANNOTATIONS_BYTES = 256 * 1024


def _qualified_name_causes(key: str, field: str) -> list[Cause]:
    prefix, slash, name = key.rpartition("/")
    problems: list[str] = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _LABEL_NAME.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return [
        Cause("FieldValueInvalid", f"Invalid value: {json.dumps(key)}: {problem}", field)
        for problem in problems
    ]


def validate_metadata(meta: Mapping[str, Any], *, dns_label_name: bool) -> list[Cause]:
    """Name, label and annotation rules every object is held to (causes, empty when valid).

    ``dns_label_name`` is for resources whose names must be RFC 1123 labels (namespaces,
    Jobs: their name becomes a label value), not just subdomains.
    """
    causes: list[Cause] = []
    name = meta.get("name")
    if name:
        if dns_label_name:
            if len(name) > 63:
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(name)}: must be no more than 63 characters",
                        "metadata.name",
                    )
                )
            elif not _DNS_LABEL.match(name):
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(name)}: a lowercase RFC 1123 label must "
                        "consist of lower case alphanumeric characters or '-', and must start "
                        "and end with an alphanumeric character",
                        "metadata.name",
                    )
                )
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain must "
                    "consist of lower case alphanumeric characters, '-' or '.', and must start "
                    "and end with an alphanumeric character",
                    "metadata.name",
                )
            )
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        causes.append(Cause("FieldValueTypeInvalid", "must be a map", "metadata.labels"))
        labels = {}
    for key, value in labels.items():
        causes.extend(_qualified_name_causes(key, "metadata.labels"))
        if not isinstance(value, str):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    f"Invalid value: {_format_value(value)}: must be a string",
                    f"metadata.labels.{key}",
                )
            )
        elif len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(value)}: a valid label must be an empty string "
                    "or consist of alphanumeric characters, '-', '_' or '.', and must start and "
                    "end with an alphanumeric character (at most 63 characters)",
                    "metadata.labels",
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        causes.append(Cause("FieldValueTypeInvalid", "must be a map", "metadata.annotations"))
        annotations = {}
    total = 0
    for key, value in annotations.items():
        causes.extend(_qualified_name_causes(key, "metadata.annotations"))
        if not isinstance(value, str):
            causes.append(
                Cause(
                    "FieldValueTypeInvalid",
                    f"Invalid value: {_format_value(value)}: must be a string",
                    f"metadata.annotations.{key}",
                )
            )
        else:
            total += len(key) + len(value.encode())
    if total > _MAX_ANNOTATIONS_BYTES:
        causes.append(
            Cause(
                "FieldValueTooLong",
                f"Too long: may not be more than {_MAX_ANNOTATIONS_BYTES} bytes",
                "metadata.annotations",
            )
        )
    return causes
