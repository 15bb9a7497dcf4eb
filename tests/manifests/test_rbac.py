"""RBAC: the operator gets exactly what it calls, nothing dangerous, nowhere else."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.manifests.helm import render_chart
from tests.manifests.support import DEPLOY, deploy_objects, load_yaml_documents
from tests.rbac import Rule, operator_rules, rule_allows, rules_allow, service_account_rules

PEERING = "microtask-operator"

# Every API call the operator (and kopf under it) makes when it watches all
# namespaces: (verb, group, resource, subresource, object name for by-name rules).
OPERATOR_CALLS: list[tuple[str, str, str, str | None, str | None]] = [
    *((v, "microtask.dev", "microtaskjobs", None, None) for v in ("list", "watch", "patch")),
    ("patch", "microtask.dev", "microtaskjobs", "status", None),
    *(
        (v, "batch", "jobs", None, None)
        for v in ("create", "deletecollection", "get", "list", "watch", "patch")
    ),
    *((v, "", "pods", None, None) for v in ("list", "watch")),
    *((v, "", "nodes", None, None) for v in ("list", "watch")),
    *((v, "", "configmaps", None, None) for v in ("get", "create", "update")),
    *((v, "", "events", None, None) for v in ("create", "list")),
    *((v, "kopf.dev", "clusterkopfpeerings", None, None) for v in ("list", "watch", "create")),
    *((v, "kopf.dev", "clusterkopfpeerings", None, PEERING) for v in ("get", "patch")),
    *(
        (v, "apiextensions.k8s.io", "customresourcedefinitions", None, None)
        for v in ("list", "watch")
    ),
]

FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}
DANGEROUS_SUBRESOURCES = {
    "exec",
    "attach",
    "portforward",
    "proxy",
    "ephemeralcontainers",
    "eviction",
}


def granted(rules: Iterable[Rule]) -> set[tuple[str, str, str]]:
    """(verb, group, resource[/sub]) triples the rules grant (they hold no wildcard)."""
    return {
        (verb, group, resource)
        for rule in rules
        for verb in rule.get("verbs", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }


def expected_triples(
    calls: Iterable[tuple[str, str, str, str | None, str | None]],
) -> set[tuple[str, str, str]]:
    return {(verb, group, f"{res}/{sub}" if sub else res) for verb, group, res, sub, _ in calls}


# ----------------------------------------------------------- rules_allow itself


def test_rules_allow_matches_group_resource_and_verb() -> None:
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list"]}]
    assert rules_allow(rules, "get", "batch", "jobs")
    assert not rules_allow(rules, "delete", "batch", "jobs")
    assert not rules_allow(rules, "get", "", "jobs")  # the core group is "", not "batch"
    assert not rules_allow(rules, "get", "batch", "cronjobs")


def test_a_resource_rule_does_not_grant_its_subresources() -> None:
    rules = [{"apiGroups": ["microtask.dev"], "resources": ["microtaskjobs"], "verbs": ["patch"]}]
    assert rules_allow(rules, "patch", "microtask.dev", "microtaskjobs")
    assert not rules_allow(rules, "patch", "microtask.dev", "microtaskjobs", "status")
    status = [
        {"apiGroups": ["microtask.dev"], "resources": ["microtaskjobs/status"], "verbs": ["patch"]}
    ]
    assert rules_allow(status, "patch", "microtask.dev", "microtaskjobs", "status")
    assert not rules_allow(status, "patch", "microtask.dev", "microtaskjobs")


def test_wildcards_match_like_the_api_server() -> None:
    assert rules_allow(
        [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "create", "", "pods", "exec"
    )
    any_status = [{"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}]
    assert rules_allow(any_status, "get", "", "pods", "status")
    assert not rules_allow(any_status, "get", "", "pods")


def test_resource_names_restrict_to_named_requests() -> None:
    rule: dict[str, Any] = {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "resourceNames": ["mine"],
        "verbs": ["get", "patch", "list"],
    }
    assert rule_allows(rule, "patch", "kopf.dev", "clusterkopfpeerings", name="mine")
    assert not rule_allows(rule, "patch", "kopf.dev", "clusterkopfpeerings", name="other")
    # A list request names no object, so a by-name rule never allows it.
    assert not rule_allows(rule, "list", "kopf.dev", "clusterkopfpeerings")


def test_non_resource_rules_grant_no_resource() -> None:
    assert not rules_allow(
        [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}], "get", "", "metrics"
    )


# ------------------------------------------------------------------- deploy/


def test_operator_is_granted_exactly_the_calls_it_makes() -> None:
    rules = operator_rules()
    for verb, group, resource, subresource, name in OPERATOR_CALLS:
        assert rules_allow(rules, verb, group, resource, subresource, name=name), (verb, resource)
    extra = granted(rules) - expected_triples(OPERATOR_CALLS)
    assert extra == set(), f"granted but never called: {sorted(extra)}"


@pytest.mark.parametrize(
    ("verb", "group", "resource", "subresource"),
    [
        ("get", "", "secrets", None),
        ("list", "", "secrets", None),
        ("create", "", "pods", "exec"),
        ("create", "", "pods", None),
        ("delete", "", "pods", None),
        ("patch", "", "nodes", None),
        ("update", "microtask.dev", "microtaskjobs", None),
        ("create", "microtask.dev", "microtaskjobs", None),
        ("delete", "microtask.dev", "microtaskjobs", None),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions", None),
        ("list", "", "namespaces", None),  # a cluster-wide kopf never reads namespaces
        ("patch", "kopf.dev", "clusterkopfpeerings", None),  # only its own, by name
    ],
)
def test_operator_cannot(verb: str, group: str, resource: str, subresource: str | None) -> None:
    assert not rules_allow(operator_rules(), verb, group, resource, subresource)


def all_roles() -> list[dict[str, Any]]:
    return [o for o in deploy_objects() if o["kind"] in ("ClusterRole", "Role")]


def test_no_role_holds_a_wildcard_secrets_or_a_dangerous_permission() -> None:
    for role in all_roles():
        for rule in role["rules"]:
            where = f"{role['metadata']['name']}: {rule}"
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(field, [])), where
            assert "secrets" not in rule["resources"], where
            assert not FORBIDDEN_VERBS & set(rule["verbs"]), where
            assert not any(
                r.split("/")[-1] in DANGEROUS_SUBRESOURCES for r in rule["resources"] if "/" in r
            ), where
            assert "nonResourceURLs" not in rule, where


def test_user_roles_extend_the_built_in_roles() -> None:
    roles = {r["metadata"]["name"]: r for r in load_yaml_documents(DEPLOY / "21-user-roles.yaml")}
    labels = roles["microtask-edit"]["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert (
        roles["microtask-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"]
        == "true"
    )
    view = roles["microtask-view"]["rules"]
    assert rules_allow(view, "watch", "microtask.dev", "microtaskjobs")
    assert not rules_allow(view, "create", "microtask.dev", "microtaskjobs")
    assert rules_allow(roles["microtask-edit"]["rules"], "create", "microtask.dev", "microtaskjobs")


# ------------------------------------------------- the chart's watchNamespaces


def test_watching_some_namespaces_grants_namespaced_access_only_there() -> None:
    objects = render_chart({"watchNamespaces": ["team-a", "team-b"]})
    bound = list(service_account_rules(objects))
    cluster = [rule for rule, scope in bound if scope is None]
    for namespace in ("team-a", "team-b"):
        local = [rule for rule, scope in bound if scope == namespace]
        assert rules_allow(local, "create", "batch", "jobs")
        assert rules_allow(local, "patch", "microtask.dev", "microtaskjobs", "status")
        # kopf peers in each watched namespace, by name.
        assert rules_allow(local, "create", "kopf.dev", "kopfpeerings")
        assert rules_allow(local, "patch", "kopf.dev", "kopfpeerings", name=PEERING)
    # Nothing namespaced is granted cluster-wide any more.
    for verb, group, resource, subresource, _ in OPERATOR_CALLS:
        if resource in ("nodes", "customresourcedefinitions"):
            assert rules_allow(cluster, verb, group, resource, subresource)
        else:
            assert not rules_allow(cluster, verb, group, resource, subresource), (verb, resource)
    # Given exact namespace names, the operator turns kopf's namespace scanning off: it never
    # lists namespaces (tests/unit/test_operator_config.py), so nothing grants it.
    assert not rules_allow(cluster, "list", "", "namespaces")
    assert not rules_allow(cluster, "watch", "", "namespaces")
    assert {scope for _, scope in bound} == {None, "team-a", "team-b"}


def test_the_chart_grants_what_deploy_grants_by_default() -> None:
    rendered = [rule for rule, scope in service_account_rules(render_chart()) if scope is None]
    assert granted(rendered) == granted(operator_rules())
