"""Scheduling predicates of kube-scheduler, as pure functions over Pod and Node dicts.

Filters: node readiness and ``spec.unschedulable``, taints vs tolerations (NoSchedule and
NoExecute; PreferNoSchedule only scores), ``nodeSelector``, required node affinity
(In / NotIn / Exists / DoesNotExist / Gt / Lt on labels, ``matchFields`` on metadata.name),
and resource fit (cpu, memory, pods and extended resources such as ``nvidia.com/gpu``).
Scoring: preferred node affinity weights, then the least loaded node, then the name, so
placement is deterministic for a given cluster state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "check_node",
    "choose_node",
    "node_is_ready",
    "parse_quantity",
    "pod_requests",
    "unschedulable_message",
]

_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``, ``1e3``) as a float."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", text)
    if match is None:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = match.groups()
    if suffix and suffix not in _SUFFIXES:
        raise ValueError(f"invalid quantity suffix in {value!r}")
    return float(number) * _SUFFIXES.get(suffix, 1.0)


def pod_requests(pod: Mapping[str, Any]) -> dict[str, float]:
    """What a pod asks of a node: summed container requests (limits when requests are absent)."""
    total: dict[str, float] = {"pods": 1.0}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        requests = dict(resources.get("limits") or {})
        requests.update(resources.get("requests") or {})
        for key, value in requests.items():
            total[key] = total.get(key, 0.0) + parse_quantity(value)
    return total


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """Whether the node's Ready condition is True."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key")
        if operator == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (toleration.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def _match_expression(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key", ""), expr.get("operator")
    values = list(expr.get("values") or [])
    present = key in labels
    match op:
        case "In":
            return present and labels[key] in values
        case "NotIn":
            return not present or labels[key] not in values
        case "Exists":
            return present
        case "DoesNotExist":
            return not present
        case "Gt" | "Lt":
            if not present or len(values) != 1:
                return False
            try:
                number, bound = int(labels[key]), int(values[0])
            except ValueError:
                return False
            return number > bound if op == "Gt" else number < bound
    return False


def _match_term(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """A NodeSelectorTerm: all expressions and fields must match; an empty term matches nothing."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    name_labels = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    return all(_match_expression(e, labels) for e in exprs) and all(
        _match_expression(f, name_labels) for f in fields
    )


def _affinity(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity")) or {}


def preferred_score(pod: Mapping[str, Any], node: Mapping[str, Any]) -> int:
    """Sum of the weights of the pod's preferred node-affinity terms the node matches."""
    prefs = _affinity(pod).get("preferredDuringSchedulingIgnoredDuringExecution") or []
    return sum(
        int(p.get("weight", 0)) for p in prefs if _match_term(p.get("preference") or {}, node)
    )


def check_node(
    pod: Mapping[str, Any], node: Mapping[str, Any], used: Mapping[str, float]
) -> list[str]:
    """Reasons the node cannot run the pod now (empty list: it fits)."""
    spec = pod.get("spec") or {}
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    if (node.get("spec") or {}).get("unschedulable"):
        return ["node(s) were unschedulable"]
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            tolerations, taint
        ):
            return [
                f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
            ]
    if not node_is_ready(node):
        return ["node(s) were not ready"]
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return ["node(s) didn't match Pod's node affinity/selector"]
    required = _affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        if not any(_match_term(term, node) for term in terms):
            return ["node(s) didn't match Pod's node affinity/selector"]
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    reasons = []
    for key, wanted in pod_requests(pod).items():
        if wanted <= 0:
            continue
        available = parse_quantity(allocatable.get(key, 0)) - used.get(key, 0.0)
        if wanted > available + 1e-9:
            reasons.append("Too many pods" if key == "pods" else f"Insufficient {key}")
    return reasons


def choose_node(
    pod: Mapping[str, Any],
    nodes: Sequence[Mapping[str, Any]],
    usage: Mapping[str, Mapping[str, float]],
) -> tuple[str | None, dict[str, int]]:
    """The best node for the pod, or None with the count of nodes per failure reason."""
    candidates: list[tuple[int, int, float, str]] = []
    failures: dict[str, int] = {}
    for node in nodes:
        name = node["metadata"]["name"]
        used = usage.get(name, {})
        reasons = check_node(pod, node, used)
        if reasons:
            for reason in reasons:
                failures[reason] = failures.get(reason, 0) + 1
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        cpu = parse_quantity(allocatable.get("cpu", 1)) or 1.0
        soft_taints = sum(
            1
            for t in (node.get("spec") or {}).get("taints") or []
            if t.get("effect") == "PreferNoSchedule"
            and not _tolerates((pod.get("spec") or {}).get("tolerations") or [], t)
        )
        load = used.get("pods", 0.0) + used.get("cpu", 0.0) / cpu
        candidates.append((-preferred_score(pod, node), soft_taints, load, name))
    if not candidates:
        return None, failures
    candidates.sort()
    return candidates[0][3], failures


def unschedulable_message(total: int, failures: Mapping[str, int]) -> str:
    """kube-scheduler's FailedScheduling wording."""
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(failures.items()))
    return (
        f"0/{total} nodes are available: {parts}." if parts else f"0/{total} nodes are available."
    )
