"""Reading MicrotaskJob files and reporting every problem with its place, never a traceback.

Files come from users and may be anything: binary data, a 50 MB log, a YAML "billion laughs"
bomb, text in another encoding. The pipeline defends in layers, each cheap:

1. size: at most `limits.MAX_FILE_BYTES` are read;
2. encoding: UTF-8 only (a BOM is allowed), no NUL bytes;
3. a streaming pre-scan of YAML events (libyaml when available) that stops as soon as the nesting
   depth, the number of documents or the number of nodes *after alias expansion* exceeds a limit,
   and rejects recursive aliases — so neither the recursive YAML composer nor anything after it
   ever sees a hostile structure;
4. loading with a safe loader that refuses duplicate keys and non-string keys, and does not turn
   dates into datetime objects (the API server would keep them as strings);
5. a check that every value is plain JSON (no `!!binary`, `!!set`, NaN...);
6. validation of each document by the API model, with errors turned into
   `FILE: doc N (name): field.path: message`.

The operator uses `validate_job`/`parse_job` on bodies from the API server; the CLI and the local
executor use `load_file`.
"""

from __future__ import annotations

import codecs
import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from microtask_operator.api import limits
from microtask_operator.api.names import API_VERSION, GROUP, KIND

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from microtask_operator.api.model import MicrotaskJob

__all__ = [
    "Document",
    "InvalidSpecError",
    "LoadResult",
    "LoadedJob",
    "Problem",
    "format_path",
    "load_file",
    "load_text",
    "parse_documents",
    "parse_job",
    "validate_documents",
    "validate_job",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located as precisely as possible."""

    message: str
    path: str = ""
    """Field path like `spec.retry.maxAttempts`; empty when about the document or file."""
    document: int | None = None
    """1-based position of the YAML document in its file."""
    name: str | None = None
    """metadata.name of the document, when it has one."""
    source: str | None = None
    """File name."""

    def __str__(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if self.document is not None:
            parts.append(f"doc {self.document}" + (f" ({self.name})" if self.name else ""))
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


class InvalidSpecError(ValueError):
    """A MicrotaskJob that does not validate; `problems` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid MicrotaskJob")


@dataclass(frozen=True)
class Document:
    """One YAML document of a file."""

    index: int
    """1-based position in the file."""
    body: Any
    """The parsed document (plain JSON values; not necessarily a mapping)."""

    @property
    def kind(self) -> str | None:
        value = self.body.get("kind") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def api_version(self) -> str | None:
        value = self.body.get("apiVersion") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        return _meta_str(self.body, "name")

    @property
    def namespace(self) -> str | None:
        return _meta_str(self.body, "namespace")


@dataclass(frozen=True)
class LoadedJob:
    """A valid MicrotaskJob of a file."""

    document: Document
    job: MicrotaskJob


@dataclass
class LoadResult:
    """Everything read from one file: the valid jobs, the ConfigMaps, and every problem."""

    source: str
    documents: list[Document] = field(default_factory=list)
    jobs: list[LoadedJob] = field(default_factory=list)
    config_maps: dict[tuple[str | None, str], dict[str, str]] = field(default_factory=dict)
    """ConfigMaps of the file by (namespace, name): their `data`."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def config_map_data(self, loaded: LoadedJob) -> dict[str, str] | None:
        """`data` of the ConfigMap a job's `configMapRef` names, if the file holds it."""
        ref = loaded.job.spec.items.config_map_ref
        if ref is None:
            return None
        found = self.config_maps.get((loaded.job.metadata.namespace, ref.name))
        if found is None:
            # A ConfigMap without a namespace lands in the job's (`kubectl apply -n`).
            found = self.config_maps.get((None, ref.name))
        return found


def _meta_str(body: Any, key: str) -> str | None:
    meta = body.get("metadata") if isinstance(body, dict) else None
    value = meta.get(key) if isinstance(meta, dict) else None
    if isinstance(value, str) and value:
        if not value.isprintable():
            value = repr(value)  # one problem, one line, whatever the name holds
        return value if len(value) <= 80 else value[:77] + "..."
    return None


# --- paths and messages ---------------------------------------------------------------------------

_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(loc: Sequence[str | int]) -> str:
    """`("spec", "containers", 0, "image")` -> `spec.containers[0].image`; odd keys quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional, so a loc can be followed through the model's types."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _fields_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The camelCase field names of the model reached by following `loc` from `root`."""
    from pydantic import BaseModel

    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            match = [f for n, f in tp.model_fields.items() if (f.alias or n) == part]
            if not match:
                return []
            tp = match[0].annotation
        elif origin is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict and isinstance(part, str):
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _suggest(name: str, choices: Sequence[str]) -> str | None:
    def normal(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    for choice in choices:
        if normal(choice) == normal(name):
            return choice
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return close[0] if close else None


def problems_from_error(
    exc: ValidationError, root: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(field path, message) pairs for a pydantic ValidationError, in plain words."""
    from microtask_operator.api.model import FIELD_ERROR_TYPE

    out: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc: list[str | int] = list(error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        value = error.get("input")
        if kind == FIELD_ERROR_TYPE:
            loc.extend(ctx.get("path", ()))
            message = str(ctx.get("message", error["msg"]))
        elif kind == "extra_forbidden":
            message = "unknown field"
            key = loc[-1] if loc else None
            if root is not None and isinstance(key, str):
                choice = _suggest(key, _fields_at(root, loc[:-1]))
                if choice:
                    message += f" (did you mean {choice!r}?)"
        elif kind == "missing":
            message = "required field is missing"
        elif kind in _EXPECTED:
            message = f"must be {_EXPECTED[kind]}, not {_json_type(value)}"
        elif kind == "value_error":
            message = str(ctx.get("error", error["msg"]))
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}, not {_shown(value)}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            bound = next(iter(ctx.values()), "?")
            words = {
                "greater_than_equal": "at least",
                "greater_than": "greater than",
                "less_than_equal": "at most",
                "less_than": "less than",
            }[kind]
            message = f"must be {words} {bound}, not {_shown(value)}"
        elif kind in ("too_long", "too_short"):
            bound = ctx.get("max_length" if kind == "too_long" else "min_length")
            words = "at most" if kind == "too_long" else "at least"
            noun = "entry" if bound == 1 else "entries"
            message = f"must have {words} {bound} {noun}, not {ctx.get('actual_length')}"
        elif kind in ("string_too_long", "string_too_short"):
            bound = ctx.get("max_length" if kind == "string_too_long" else "min_length")
            words = "at most" if kind == "string_too_long" else "at least"
            message = f"must have {words} {bound} character{'' if bound == 1 else 's'}"
        else:
            message = str(error["msg"])
        out.append((format_path(loc), message))
    return out


# --- YAML -----------------------------------------------------------------------------------------


def _loader_class() -> type[Any]:
    """A safe loader (libyaml when available) that keeps JSON semantics."""
    import yaml
    from yaml.constructor import ConstructorError

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    timestamp = "tag:yaml.org,2002:timestamp"
    merge = "tag:yaml.org,2002:merge"

    class Loader(base):  # type: ignore[misc]
        # Dates stay strings, as they do when kubectl sends YAML to the API server as JSON.
        yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != timestamp]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[str, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == merge:
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise ConstructorError(
                        None,
                        None,
                        f"mapping keys must be strings, not {_json_type(key)} "
                        f"({_shown(key)}); quote the key",
                        key_node.start_mark,
                    )
                if key in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {_shown(key)}", key_node.start_mark
                    )
                seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return Loader


def _yaml_problem(exc: Exception, text: str) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        lines = text.split("\n", mark.line + 1)
        line = lines[mark.line] if mark.line < len(lines) else ""
        if line[mark.column : mark.column + 1] == "\t":
            what += " (a tab: YAML is indented with spaces)"
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "integer string conversion" in message:
        # Python refuses to read integers of thousands of digits; no field takes one anyway.
        message = "an integer with thousands of digits"
    return f"invalid YAML: {message}"


def _line(event: Any) -> str:
    mark = getattr(event, "start_mark", None) or getattr(event, "problem_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


def _prescan(text: str, loader: type[Any]) -> Problem | None:
    """Walk the YAML events once, refusing deep, huge, bomb-like or recursive input early."""
    import yaml

    depth = documents = nodes = 0
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for, once complete
    open_collections: list[tuple[str | None, int]] = []  # (anchor, node count at its start)
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                sizes.clear()  # anchors are scoped to their document
                if documents > limits.MAX_DOCUMENTS:
                    return Problem(f"more than {limits.MAX_DOCUMENTS} YAML documents")
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                nodes += 1
                depth += 1
                if depth > limits.MAX_YAML_DEPTH:
                    return Problem(
                        f"YAML nested more than {limits.MAX_YAML_DEPTH} levels deep{_line(event)}",
                        document=documents,
                    )
                open_collections.append((event.anchor, nodes))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, start = open_collections.pop()
                if anchor:
                    sizes[anchor] = nodes - start + 1
            elif isinstance(event, yaml.AliasEvent):
                anchor = event.anchor
                if anchor not in sizes:
                    if any(a == anchor for a, _ in open_collections):
                        message = f"recursive YAML alias *{anchor}{_line(event)}"
                    else:
                        message = f"YAML alias *{anchor} has no anchor{_line(event)}"
                    return Problem(message, document=documents)
                nodes += sizes[anchor]
            if nodes > limits.MAX_YAML_NODES:
                return Problem(
                    f"more than {limits.MAX_YAML_NODES:,} YAML nodes (after expanding aliases); "
                    "the file is too large or an alias bomb",
                    document=documents or None,
                )
    except yaml.YAMLError as exc:
        if "nesting depth" in str(getattr(exc, "problem", "")):
            # PyYAML 6.0.4+ stops deep flow nesting itself, before its events reach our count.
            return Problem(
                f"YAML nested more than {limits.MAX_YAML_DEPTH} levels deep{_line(exc)}",
                document=documents or None,
            )
        return Problem(_yaml_problem(exc, text), document=documents or None)
    if documents == 0:
        return Problem("no YAML documents (the file is empty)")
    return None


def _json_problem(body: Any) -> tuple[str, str] | None:
    """The first value that is not plain JSON (YAML tags like !!binary, !!set; NaN, infinity)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    seen: set[int] = set()  # aliased subtrees are shared objects: check each once
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, (*path, key)) for key, child in items)
        elif isinstance(value, float):
            if not math.isfinite(value):
                return format_path(path), f"{value} is not a JSON number"
        elif value is not None and not isinstance(value, str | int | bool):
            return (
                format_path(path),
                f"a {type(value).__name__} value is not JSON (drop the YAML tag, e.g. !!binary)",
            )
    return None


def _decode(data: bytes) -> str | Problem:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Problem("the file is UTF-16 text; save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        return Problem(f"binary data, not YAML text (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        )


def parse_documents(data: bytes | str, source: str | None = None) -> LoadResult:
    """Parse possibly hostile YAML into documents; problems instead of exceptions."""
    result = LoadResult(source=source or "<input>")

    def fail(problem: Problem) -> LoadResult:
        result.problems.append(
            Problem(problem.message, problem.path, problem.document, problem.name, source)
        )
        return result

    if isinstance(data, str):
        if len(data) > limits.MAX_FILE_BYTES:
            return fail(Problem(_too_big(None)))
        text = data.lstrip("\ufeff")
        if "\x00" in text:
            return fail(Problem("binary data, not YAML text (NUL character)"))
    else:
        if len(data) > limits.MAX_FILE_BYTES:
            return fail(Problem(_too_big(None)))
        decoded = _decode(data)
        if isinstance(decoded, Problem):
            return fail(decoded)
        text = decoded
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        return fail(Problem("PyYAML is not installed"))
    loader = _loader_class()
    problem = _prescan(text, loader)
    if problem is not None:
        return fail(problem)
    index = 0
    try:
        for index, body in enumerate(yaml.load_all(text, Loader=loader), start=1):
            result.documents.append(Document(index, body))
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        # ValueError/TypeError: constructors of odd scalars (e.g. a huge !!int) raise them.
        return fail(Problem(_yaml_problem(exc, text), document=index + 1))
    return result


def _too_big(size: int | None) -> str:
    limit = f"{limits.MAX_FILE_BYTES // 1024 // 1024} MiB"
    if size is None:  # only the first bytes past the limit were read
        return f"the file is larger than the {limit} limit"
    return f"the file is too large ({size / 1024 / 1024:.1f} MiB): at most {limit}"


# --- validation -----------------------------------------------------------------------------------


def _plain(value: Any, depth: int = 0) -> Any:
    """Mappings and sequences of any kind (e.g. kopf bodies) as plain dicts and lists."""
    if depth > 100:
        raise ValueError("nested too deeply")
    if isinstance(value, Mapping):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return value


def validate_job(
    body: Mapping[str, Any], *, include_status: bool = False
) -> tuple[MicrotaskJob | None, list[Problem]]:
    """Validate one MicrotaskJob object; the model, or None and the problems (paths only).

    The status is ignored unless `include_status`: it is written by the operator, and a spec
    must not become invalid because of it.
    """
    from pydantic import ValidationError

    from microtask_operator.api.model import MicrotaskJob

    plain = _plain(body)
    if not include_status and isinstance(plain, dict):
        plain.pop("status", None)
    try:
        return MicrotaskJob.model_validate(plain), []
    except ValidationError as exc:
        pairs = problems_from_error(exc, MicrotaskJob)
    except (RecursionError, ValueError) as exc:
        pairs = [("", f"cannot validate: {exc}")]
    name = _meta_str(plain, "name")
    return None, [Problem(message, path, name=name) for path, message in pairs]


def parse_job(body: Mapping[str, Any]) -> MicrotaskJob:
    """The validated MicrotaskJob of an API object; InvalidSpecError listing every problem."""
    job, problems = validate_job(body)
    if job is None:
        raise InvalidSpecError(problems)
    return job


def _check_kind(document: Document) -> list[tuple[str, str]] | None:
    """Problems of a document that is not a MicrotaskJob of this API; None when it is one."""
    body = document.body
    if not isinstance(body, dict):
        return [("", f"the document is {_json_type(body)}, not a mapping (a Kubernetes object)")]
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if kind == KIND:
        if api_version == API_VERSION:
            return None
        if isinstance(api_version, str) and api_version.startswith(f"{GROUP}/"):
            message = f"unsupported version {_shown(api_version)}; this is {API_VERSION}"
        else:
            message = f"must be {API_VERSION}, not {_shown(api_version)}"
        return [("apiVersion", message)]
    if kind == "ConfigMap" and api_version == "v1":
        return _check_config_map(body)
    if kind is None and api_version is None:
        return [
            (
                "",
                f"not a Kubernetes object: apiVersion and kind are missing (a MicrotaskJob "
                f"starts with apiVersion: {API_VERSION} and kind: {KIND})",
            )
        ]
    return [
        (
            "kind",
            f"{_shown(kind)} ({_shown(api_version)}) is not a MicrotaskJob; files hold "
            f"MicrotaskJobs ({API_VERSION}) and the ConfigMaps (v1) they use",
        )
    ]


def _check_config_map(body: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        problems.append(("metadata.name", "required field is missing"))
    data = body.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(("data", f"must be a mapping, not {_json_type(data)}"))
    else:
        for key, value in data.items():
            if not isinstance(value, str):
                problems.append(
                    (format_path(["data", key]), f"must be a string, not {_json_type(value)}")
                )
    return problems


def validate_documents(result: LoadResult) -> LoadResult:
    """Validate the parsed documents of `result` in place (and return it)."""
    from microtask_operator.api.items import ItemsError, total_microtasks

    source = result.source

    def add(document: Document, pairs: Sequence[tuple[str, str]]) -> None:
        shown = list(pairs[: limits.MAX_PROBLEMS_PER_DOCUMENT])
        if len(pairs) > len(shown):
            shown.append(("", f"... and {len(pairs) - len(shown)} more problems"))
        for path, message in shown:
            result.problems.append(Problem(message, path, document.index, document.name, source))

    jobs_by_key: dict[tuple[str | None, str], LoadedJob] = {}
    config_map_docs: dict[tuple[str | None, str], Document] = {}
    bodies = [d for d in result.documents if d.body is not None]  # `---` alone: an empty doc
    if not bodies and not result.problems:
        result.problems.append(Problem("no YAML documents (the file is empty)", source=source))
    for document in bodies:
        not_a_job = _check_kind(document)
        if not_a_job is not None:
            add(document, not_a_job)
            if not not_a_job and document.kind == "ConfigMap":
                key = (document.namespace, document.name or "")
                if key in config_map_docs:
                    other = config_map_docs[key].index
                    add(document, [("metadata.name", f"a ConfigMap of doc {other} has this name")])
                else:
                    config_map_docs[key] = document
                    data = document.body.get("data") or {}
                    result.config_maps[key] = dict(data)
            continue
        problem = _json_problem(document.body)
        if problem is not None:
            add(document, [problem])
            continue
        job, problems = validate_job(document.body, include_status=True)
        if job is None:
            add(document, [(p.path, p.message) for p in problems])
            continue
        key = (job.metadata.namespace, job.metadata.name)
        if key in jobs_by_key:
            other = jobs_by_key[key].document.index
            add(document, [("metadata.name", f"the MicrotaskJob of doc {other} has this name")])
            continue
        loaded = LoadedJob(document, job)
        jobs_by_key[key] = loaded
        result.jobs.append(loaded)

    # Checks that need the whole file: ConfigMaps it holds, dependency cycles within it.
    for loaded in result.jobs:
        data = result.config_map_data(loaded)
        if data is not None:
            try:
                total_microtasks(loaded.job, data)
            except ItemsError as exc:
                add(loaded.document, [("spec.items.configMapRef", str(exc))])
    for cycle in _dependency_cycles(jobs_by_key):
        first = jobs_by_key[cycle[0]]
        path = " -> ".join(name for _, name in (*cycle, cycle[0]))
        add(first.document, [("spec.dependsOn", f"dependency cycle: {path}")])
    return result


def _dependency_cycles(
    jobs: dict[tuple[str | None, str], LoadedJob],
) -> Iterator[list[tuple[str | None, str]]]:
    """Each dependency cycle among the jobs of one file, once."""
    done: set[tuple[str | None, str]] = set()
    for start in jobs:
        if start in done:
            continue
        # Iterative DFS; `path` is the current chain, `on_path` its members.
        path: list[tuple[str | None, str]] = []
        on_path: set[tuple[str | None, str]] = set()
        stack: list[tuple[tuple[str | None, str], Iterator[tuple[str | None, str]]]] = []

        def children(key: tuple[str | None, str]) -> Iterator[tuple[str | None, str]]:
            namespace = key[0]
            for dep in jobs[key].job.spec.depends_on:
                if (namespace, dep) in jobs:
                    yield (namespace, dep)

        path.append(start)
        on_path.add(start)
        stack.append((start, children(start)))
        while stack:
            key, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(key)
                done.add(key)
            elif child in on_path:
                yield path[path.index(child) :]
            elif child not in done:
                path.append(child)
                on_path.add(child)
                stack.append((child, children(child)))


def load_text(data: bytes | str, source: str = "<input>") -> LoadResult:
    """Parse and validate the content of a file."""
    result = parse_documents(data, source)
    if result.problems:
        return result
    return validate_documents(result)


def read_bounded(path: str) -> bytes | Problem:
    """At most `MAX_FILE_BYTES + 1` bytes of `path` (`-` is standard input), or a problem."""
    import os
    import stat

    try:
        if path == "-":
            return sys.stdin.buffer.read(limits.MAX_FILE_BYTES + 1)
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                return Problem("is a directory")
            if stat.S_ISREG(info.st_mode) and info.st_size > limits.MAX_FILE_BYTES:
                return Problem(_too_big(info.st_size))
            return f.read(limits.MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        return Problem("is a directory")
    except OSError as exc:
        return Problem(f"cannot read: {exc.strerror or exc}")


def load_file(path: str) -> LoadResult:
    """Read, parse and validate a file (`-` is standard input); never raises for bad input."""
    source = "<stdin>" if path == "-" else path
    data = read_bounded(path)
    if isinstance(data, Problem):
        return LoadResult(source=source, problems=[Problem(data.message, source=source)])
    return load_text(data, source)
