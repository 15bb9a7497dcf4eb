"""The three PATCH flavours of the Kubernetes API: JSON merge, JSON patch and strategic merge.

Strategic merge patch is approximated by the patch-merge keys of the built-in types the
operator and the official client touch (containers by name, env by name, conditions by type,
ownerReferences by uid, finalizers as a set, ...), plus the ``$patch`` / ``$retainKeys`` /
``$deleteFromPrimitiveList`` directives. Like a real server, custom resources refuse it (415):
the official client sends merge patches for them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

__all__ = [
    "PatchError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]


class PatchError(Exception):
    """A patch that cannot be applied; ``code`` is the HTTP status the API server answers."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def apply_json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; a failed ``test`` or a missing path is 422, as kopf expects."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations", code=400)
    try:
        patch = jsonpatch.JsonPatch(ops)
        return patch.apply(target, in_place=False)
    except (
        jsonpatch.JsonPatchTestFailed,
        jsonpatch.JsonPatchConflict,
        jsonpointer.JsonPointerException,
    ) as exc:
        message = f"the server rejected our request due to an error in our request: {exc}"
        raise PatchError(message) from None
    except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as exc:
        raise PatchError(f"invalid json patch: {exc}", code=400) from None


# Patch-merge keys of lists in built-in types (by field name, which is unambiguous enough for
# the types involved here). Lists not named here are replaced wholesale, as for atomic lists.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "readinessGates": "conditionType",
    "resourceClaims": "name",
    "addresses": "type",
    "taints": "key",
}
# Primitive lists whose strategy is "merge" (a set union), the rest of primitive lists replace.
MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to a built-in object."""
    if not isinstance(patch, Mapping):
        raise PatchError("strategic merge patch must be a JSON object", code=400)
    return _smp_map(target if isinstance(target, Mapping) else {}, patch)


def _smp_map(target: Mapping[str, Any], patch: Mapping[str, Any]) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise PatchError(f"unknown patch directive {directive!r}", code=400)
    result: dict[str, Any] = dict(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            current = result.get(key)
            merged = _smp_map(current if isinstance(current, Mapping) else {}, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list: list[Any] = list(current) if isinstance(current, list) else []
    if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, Mapping) and "$patch" in i)]
    if field in MERGED_PRIMITIVE_LISTS:
        merged = list(current_list)
        merged.extend(item for item in patch if item not in merged)
        return merged
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(item, Mapping) for item in patch):
        return copy.deepcopy(patch)
    result = [copy.deepcopy(item) for item in current_list]
    for item in patch:
        if key not in item:
            raise PatchError(f"map: {dict(item)} does not contain declared merge key: {key}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, Mapping) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            result.append(_smp_map({}, item))
        else:
            result[index] = _smp_map(result[index], item)
    return result
