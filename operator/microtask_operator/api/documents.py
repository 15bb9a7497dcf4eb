"""Reading possibly hostile files into YAML documents, never a traceback.

Files come from users and may be anything: binary data, a 50 MB log, a YAML "billion laughs"
bomb, text in another encoding. The reading defends in layers, each cheap:

1. size: at most `limits.MAX_FILE_BYTES` are read (`read_bounded`);
2. encoding: UTF-8 only (a BOM is allowed), no NUL bytes (`decode`);
3. a streaming pre-scan of YAML events (libyaml when available) that stops as soon as the nesting
   depth, the number of documents or the number of nodes *after alias expansion* exceeds a limit,
   and rejects recursive aliases (`prescan`) — so neither the recursive YAML composer nor anything
   after it ever sees a hostile structure;
4. loading with a safe loader that refuses duplicate keys and non-string keys, and does not turn
   dates into datetime objects (the API server would keep them as strings).

`parse_documents` returns the documents of a file in a `LoadResult`, which `loading` fills with
the valid jobs.
"""

from __future__ import annotations

import codecs
import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from microtask_operator.api import limits
from microtask_operator.api.problems import Problem, format_path, json_type, shown

if TYPE_CHECKING:
    from microtask_operator.api.model import MicrotaskJob


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
        return meta_str(self.body, "name")

    @property
    def namespace(self) -> str | None:
        return meta_str(self.body, "namespace")


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


def meta_str(body: Any, key: str) -> str | None:
    meta = body.get("metadata") if isinstance(body, dict) else None
    value = meta.get(key) if isinstance(meta, dict) else None
    if isinstance(value, str) and value:
        if not value.isprintable():
            value = repr(value)  # one problem, one line, whatever the name holds
        return value if len(value) <= 80 else value[:77] + "..."
    return None


# --- paths and messages ---------------------------------------------------------------------------


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
                        f"mapping keys must be strings, not {json_type(key)} "
                        f"({shown(key)}); quote the key",
                        key_node.start_mark,
                    )
                if key in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {shown(key)}", key_node.start_mark
                    )
                seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return Loader


def yaml_problem(exc: Exception, text: str) -> str:
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


def prescan(text: str, loader: type[Any]) -> Problem | None:
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
        return Problem(yaml_problem(exc, text), document=documents or None)
    if documents == 0:
        return Problem("no YAML documents (the file is empty)")
    return None


def json_problem(body: Any) -> tuple[str, str] | None:
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


def decode(data: bytes) -> str | Problem:
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
            return fail(Problem(too_big(None)))
        text = data.lstrip("\ufeff")
        if "\x00" in text:
            return fail(Problem("binary data, not YAML text (NUL character)"))
    else:
        if len(data) > limits.MAX_FILE_BYTES:
            return fail(Problem(too_big(None)))
        decoded = decode(data)
        if isinstance(decoded, Problem):
            return fail(decoded)
        text = decoded
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        return fail(Problem("PyYAML is not installed"))
    loader = _loader_class()
    problem = prescan(text, loader)
    if problem is not None:
        return fail(problem)
    index = 0
    try:
        for index, body in enumerate(yaml.load_all(text, Loader=loader), start=1):
            result.documents.append(Document(index, body))
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        # ValueError/TypeError: constructors of odd scalars (e.g. a huge !!int) raise them.
        return fail(Problem(yaml_problem(exc, text), document=index + 1))
    return result


def too_big(size: int | None) -> str:
    limit = f"{limits.MAX_FILE_BYTES // 1024 // 1024} MiB"
    if size is None:  # only the first bytes past the limit were read
        return f"the file is larger than the {limit} limit"
    return f"the file is too large ({size / 1024 / 1024:.1f} MiB): at most {limit}"


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
                return Problem(too_big(info.st_size))
            return f.read(limits.MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        return Problem("is a directory")
    except OSError as exc:
        return Problem(f"cannot read: {exc.strerror or exc}")
