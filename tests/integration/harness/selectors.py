"""Label and field selectors, parsed and matched the way the Kubernetes API server does.

Label selectors follow apimachinery's grammar: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x,y)``, ``a`` (exists), ``!a`` (does not exist), ``a>1`` / ``a<1``, comma-separated
(commas inside parentheses belong to the set). Field selectors accept ``=``, ``==`` and ``!=``
on a per-resource list of supported fields; anything else is a 400, as on a real server, so an
operator that filters on an unsupported field fails here exactly as it would in a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "SelectorError",
    "match_label_selector_dict",
]


class SelectorError(ValueError):
    """A selector that the API server would refuse with 400 BadRequest."""


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this clause (missing keys satisfy only != / notin / !)."""
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case ">" | "<":
                if not present or value is None:
                    return False
                try:
                    number = int(value)
                except ValueError:
                    return False
                bound = int(next(iter(self.values)))
                return number > bound if self.op == ">" else number < bound
        raise AssertionError(self.op)  # pragma: no cover - ops are validated at parse time


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``(...)`` sets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise SelectorError(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str, source: str) -> str:
    key = key.strip()
    if not key:
        raise SelectorError(f"unable to parse requirement: empty key in {source!r}")
    prefix, _, name = key.rpartition("/")
    if not name or not _LABEL_NAME.match(name) or len(name) > 63:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    if prefix and len(prefix) > 253:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str, source: str) -> str:
    value = value.strip()
    if len(value) > 63 or not _LABEL_NAME.match(value):
        raise SelectorError(
            f"unable to parse requirement: invalid label value {value!r} in {source!r}"
        )
    return value


_SET_RE = re.compile(r"^\s*(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_CMP_RE = re.compile(
    r"^\s*(?P<key>[^\s!=<>()]+)\s*(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s!=<>(),]*)\s*$"
)
_EXISTS_RE = re.compile(r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=<>(),]+)\s*$")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse a ``labelSelector`` query parameter (SelectorError on bad syntax)."""
        if text is None or not text.strip():
            return cls()
        requirements: list[Requirement] = []
        for part in _split_top_level(text):
            if not part.strip():
                raise SelectorError(f"unable to parse requirement: empty clause in {text!r}")
            if match := _SET_RE.match(part):
                key = _check_key(match["key"], text)
                values = frozenset(
                    _check_value(value, text) for value in match["values"].split(",")
                )
                requirements.append(Requirement(key, match["op"], values))
            elif match := _CMP_RE.match(part):
                key = _check_key(match["key"], text)
                op = "=" if match["op"] == "==" else match["op"]
                value = match["value"]
                if op in (">", "<"):
                    if not re.fullmatch(r"-?\d+", value):
                        raise SelectorError(
                            f"unable to parse requirement: for 'Gt', 'Lt' operators, "
                            f"the value must be an integer, got {value!r}"
                        )
                else:
                    value = _check_value(value, text)
                requirements.append(Requirement(key, op, frozenset({value})))
            elif match := _EXISTS_RE.match(part):
                key = _check_key(match["key"], text)
                requirements.append(Requirement(key, "!" if match["neg"] else "exists"))
            else:
                raise SelectorError(f"unable to parse requirement: {part!r}")
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether the labels satisfy every requirement."""
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def match_label_selector_dict(
    selector: Mapping[str, Any] | None, labels: Mapping[str, str]
) -> bool:
    """Match a structured ``metav1.LabelSelector`` (matchLabels + matchExpressions).

    An absent selector matches nothing (as for Job/PDB selectors); an empty one matches all.
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[
            expr["operator"]
        ]
        if not Requirement(expr["key"], op, frozenset(expr.get("values") or ())).matches(labels):
            return False
    return True


# Fields each built-in resource supports in field selectors (a subset of the real server's
# lists, covering what operators commonly use); every resource supports the metadata pair.
_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
SUPPORTED_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    ("", "events"): frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    ("", "nodes"): frozenset({"spec.unschedulable"}),
    ("", "namespaces"): frozenset({"status.phase"}),
    ("", "secrets"): frozenset({"type"}),
    ("batch", "jobs"): frozenset({"status.successful"}),
    ("events.k8s.io", "events"): frozenset(
        {"regarding.kind", "regarding.name", "regarding.namespace", "reason", "type"}
    ),
}


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    """Resolve a dotted path to the string the API server compares (missing -> "")."""
    if path == "source":  # core/v1 events expose source.component under this name
        path = "source.component"
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector; the empty selector matches everything."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None, group: str, plural: str) -> FieldSelector:
        """Parse a ``fieldSelector`` for a resource (SelectorError on unsupported fields)."""
        if text is None or not text.strip():
            return cls()
        supported = _COMMON_FIELDS | SUPPORTED_FIELDS.get((group, plural), frozenset())
        terms: list[tuple[str, bool, str]] = []
        for part in text.split(","):
            match = re.fullmatch(r"\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*", part)
            if match is None:
                raise SelectorError(f"invalid selector: {text!r}; can't understand {part!r}")
            field, op, value = match.groups()
            if field not in supported:
                raise SelectorError(f'field label not supported: "{field}"')
            terms.append((field, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object satisfies every term."""
        return all(
            (_field_value(obj, field) == value) == equal for field, equal, value in self.terms
        )

    def __bool__(self) -> bool:
        return bool(self.terms)
