"""Render the chart's generated templates offline, for the tests.

Not a template engine: it understands exactly the constructs hack/gen-chart.py
emits and raises on anything else, so a template the generator never writes
(or a hand edit) fails loudly instead of rendering to something plausible:

* actions `{{ ... }}` with Go's whitespace trimming (`{{-` and `-}}`);
* values: `.Values.a.b`, `.Release.Name`, `.Release.Namespace`, `.Chart.AppVersion`,
  `.` and `$` (with paths), string and integer literals;
* functions: `quote`, `default`, `join`, `toYaml`, `nindent`, `.Files.Get`, and
  pipelines of them;
* blocks: `if` / `else` / `end`, `with` / `end`, `range` / `end` over lists.

Where Helm (Go templates, sprig) and Python differ in formatting (`toYaml` key
order, quoting style), the output differs in text but parses to the same objects,
and the tests compare parsed objects.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A construct the generator does not emit, or a value of the wrong shape."""


@dataclass
class _Node:
    kind: str  # text | expr | if | with | range
    arg: str = ""
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


def _tokens(source: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, with the whitespace that `{{-` and `-}}` remove removed."""
    out: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        position = match.end()
    rest = source[position:]
    out.append(("text", rest.lstrip() if trim_next else rest))
    return out


def _parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    for kind, text in _tokens(source):
        current = stack[-1][1]
        if kind == "text":
            if text:
                current.append(_Node("text", text))
            continue
        word, _, rest = text.partition(" ")
        if text.startswith("/*"):
            raise TemplateError("comments are not emitted by the generator")
        if word in ("if", "with", "range"):
            node = _Node(word, rest.strip())
            current.append(node)
            stack.append((node, node.body))
        elif word == "else":
            block = stack[-1][0]
            if block is None or block.kind != "if" or rest:
                raise TemplateError("`else` only closes an `if` here")
            stack[-1] = (block, block.orelse)
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError("`end` without a block")
            stack.pop()
        else:
            current.append(_Node("expr", text))
    if len(stack) != 1:
        raise TemplateError("unclosed block")
    return root


def _truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings/collections are false."""
    return bool(value)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _go_string(value: Any) -> str:
    if value is None:
        return ""  # Helm renders a missing value as an empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TemplateError(f"cannot print a {type(value).__name__} without toYaml")


@dataclass
class _Scope:
    dot: Any
    root: dict[str, Any]
    chart_dir: Path


def _lookup(base: Any, path: str) -> Any:
    value = base
    for part in filter(None, path.split(".")):
        if not isinstance(value, dict):
            raise TemplateError(f"cannot read .{part} of a {type(value).__name__}")
        value = value.get(part)
    return value


def _value(token: str, scope: _Scope) -> Any:
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token == "$" or token.startswith("$."):
        return _lookup(scope.root, token[1:])
    if token.startswith("."):
        return _lookup(scope.dot, token)
    raise TemplateError(f"unknown value {token!r}")


def _nindent(width: int, text: str) -> str:
    return "\n" + _indent(width, text)


def _indent(width: int, text: str) -> str:
    pad = " " * width
    return pad + text.replace("\n", "\n" + pad)


def _functions(scope: _Scope) -> dict[str, Callable[..., Any]]:
    def files_get(name: str) -> str:
        return (scope.chart_dir / name).read_text()

    return {
        "quote": lambda value: json.dumps(_go_string(value)),
        "default": lambda fallback, value: value if _truthy(value) else fallback,
        "join": lambda sep, items: sep.join(_go_string(item) for item in items or []),
        "toYaml": _to_yaml,
        "nindent": _nindent,
        "indent": _indent,
        ".Files.Get": files_get,
    }


def _pipeline(text: str, scope: _Scope) -> Any:
    functions = _functions(scope)
    result: Any = None
    commands = [c.strip() for c in text.split("|")]
    for index, command in enumerate(commands):
        words = shlex.split(command, posix=False)
        name, args = words[0], [_value(w, scope) for w in words[1:]]
        if name in functions:
            if index > 0:
                args.append(result)
            result = functions[name](*args)
        elif index == 0 and not args:
            result = _value(name, scope)
        else:
            raise TemplateError(f"unknown function {name!r}")
    return result


def _render(nodes: list[_Node], scope: _Scope) -> str:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.arg)
        elif node.kind == "expr":
            out.append(_go_string(_pipeline(node.arg, scope)))
        elif node.kind == "if":
            branch = node.body if _truthy(_pipeline(node.arg, scope)) else node.orelse
            out.append(_render(branch, scope))
        elif node.kind == "with":
            value = _pipeline(node.arg, scope)
            if _truthy(value):
                out.append(_render(node.body, _Scope(value, scope.root, scope.chart_dir)))
        elif node.kind == "range":
            items = _pipeline(node.arg, scope) or []
            if not isinstance(items, list):
                raise TemplateError("range is only used over lists")
            for item in items:
                out.append(_render(node.body, _Scope(item, scope.root, scope.chart_dir)))
    return "".join(out)


def render_template(
    source: str,
    values: dict[str, Any],
    *,
    chart_dir: Path,
    release_name: str,
    release_namespace: str,
    app_version: str,
) -> str:
    """The text of one template rendered with `values` for one release."""
    root = {
        "Values": values,
        "Release": {"Name": release_name, "Namespace": release_namespace},
        "Chart": {"AppVersion": app_version},
    }
    return _render(_parse(source), _Scope(root, root, chart_dir))


def merge_values(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values over the defaults: maps merge, the rest replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def render_chart(
    chart_dir: Path,
    overrides: dict[str, Any] | None = None,
    *,
    release_name: str = "microtask-operator",
    release_namespace: str = "microtask-system",
) -> list[dict[str, Any]]:
    """Every object the chart's templates render to (crds/ not included, as in Helm)."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = merge_values(yaml.safe_load((chart_dir / "values.yaml").read_text()), overrides or {})
    objects: list[dict[str, Any]] = []
    for path in sorted((chart_dir / "templates").glob("*.yaml")):
        text = render_template(
            path.read_text(),
            values,
            chart_dir=chart_dir,
            release_name=release_name,
            release_namespace=release_namespace,
            app_version=str(chart["appVersion"]),
        )
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects
