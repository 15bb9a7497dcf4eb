"""What a set of RBAC rules allows, decided the way the API server's authorizer does.

Used by the manifest tests (deploy/'s rules hold no wildcard and nothing beyond
the operator's needs) and by the API-level tests, which check every request the
operator made (from the real API server's audit log) with `rules_allow`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RBAC_MANIFEST = ROOT / "deploy" / "20-rbac.yaml"
OPERATOR_SERVICE_ACCOUNT = ("microtask-system", "microtask-operator")

Rule = Mapping[str, Any]


def _matches(allowed: Iterable[str], wanted: str) -> bool:
    allowed = list(allowed)
    return "*" in allowed or wanted in allowed


def rule_allows(
    rule: Rule,
    verb: str,
    api_group: str,
    resource: str,
    subresource: str | None = None,
    *,
    name: str | None = None,
) -> bool:
    """Whether one PolicyRule allows the request.

    `api_group` is "" for the core group. A rule with `resourceNames` only
    allows requests naming one of them (so never list, watch or create, whose
    requests carry no name), as the API server decides.
    """
    if "nonResourceURLs" in rule:
        return False
    wanted = f"{resource}/{subresource}" if subresource else resource
    resources = list(rule.get("resources", []))
    # "*" matches everything; "*/status" matches the status of every resource.
    resource_ok = (
        "*" in resources
        or wanted in resources
        or (subresource is not None and f"*/{subresource}" in resources)
    )
    if not resource_ok:
        return False
    if not _matches(rule.get("apiGroups", []), api_group):
        return False
    if not _matches(rule.get("verbs", []), verb):
        return False
    names = rule.get("resourceNames")
    return not names or (name is not None and name in names)


def rules_allow(
    rules: Iterable[Rule],
    verb: str,
    api_group: str,
    resource: str,
    subresource: str | None = None,
    *,
    name: str | None = None,
) -> bool:
    """Whether any of `rules` allows `verb` on `api_group`/`resource`[/`subresource`].

    RBAC is purely additive, so the union of the rules decides. Pass `name` for
    requests on one object (get, patch, delete, ...): rules with resourceNames
    allow only those.
    """
    return any(rule_allows(r, verb, api_group, resource, subresource, name=name) for r in rules)


def load_manifests(path: Path = RBAC_MANIFEST) -> list[dict[str, Any]]:
    """The objects of one manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def service_account_rules(
    objects: Iterable[Mapping[str, Any]],
    service_account: tuple[str, str] = OPERATOR_SERVICE_ACCOUNT,
) -> Iterator[tuple[Rule, str | None]]:
    """(rule, namespace) for every rule bound to the service account.

    namespace is None for rules that apply cluster-wide (a ClusterRoleBinding),
    or the namespace a RoleBinding grants them in.
    """
    objects = list(objects)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    namespace, name = service_account
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == name
            and s.get("namespace", binding["metadata"].get("namespace")) == namespace
            for s in binding.get("subjects", [])
        ):
            continue
        scope = (
            None if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        )
        ref = binding["roleRef"]
        role_namespace = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        role = roles.get((ref["kind"], role_namespace, ref["name"]))
        if role is None:
            raise LookupError(
                f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}"
            )
        for rule in role.get("rules", []):
            yield rule, scope


def operator_rules(path: Path = RBAC_MANIFEST) -> list[Rule]:
    """The rules deploy/ grants the operator's service account in every namespace."""
    return [rule for rule, scope in service_account_rules(load_manifests(path)) if scope is None]
