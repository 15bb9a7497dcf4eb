"""Loading MicrotaskJob files and objects: every problem with its place, never a traceback.

`documents` reads a file into YAML documents safely and `problems` words what is wrong; this
module checks what they hold:

1. every value is plain JSON (no `!!binary`, `!!set`, NaN...);
2. each document is a MicrotaskJob (or a ConfigMap its items read) of the right kind and version;
3. each job validates against the API model, with errors turned into
   `FILE: doc N (name): field.path: message`;
4. across documents: names are unique, a ConfigMap's items suit the job that reads them, and
   `dependsOn` forms no cycle.

The operator uses `validate_job`/`parse_job` on bodies from the API server; the CLI and the local
executor use `load_file`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from microtask_operator.api import limits
from microtask_operator.api.documents import (
    Document,
    LoadedJob,
    LoadResult,
    json_problem,
    meta_str,
    parse_documents,
    read_bounded,
)
from microtask_operator.api.names import API_VERSION, GROUP, KIND
from microtask_operator.api.problems import (
    InvalidSpecError,
    Problem,
    format_path,
    json_type,
    problems_from_error,
    shown,
)

if TYPE_CHECKING:
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
    name = meta_str(plain, "name")
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
        return [("", f"the document is {json_type(body)}, not a mapping (a Kubernetes object)")]
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if kind == KIND:
        if api_version == API_VERSION:
            return None
        if isinstance(api_version, str) and api_version.startswith(f"{GROUP}/"):
            message = f"unsupported version {shown(api_version)}; this is {API_VERSION}"
        else:
            message = f"must be {API_VERSION}, not {shown(api_version)}"
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
            f"{shown(kind)} ({shown(api_version)}) is not a MicrotaskJob; files hold "
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
        problems.append(("data", f"must be a mapping, not {json_type(data)}"))
    else:
        for key, value in data.items():
            if not isinstance(value, str):
                problems.append(
                    (format_path(["data", key]), f"must be a string, not {json_type(value)}")
                )
    return problems


def validate_documents(result: LoadResult) -> LoadResult:
    """Validate the parsed documents of `result` in place (and return it)."""
    from microtask_operator.api.items import ItemsError, total_microtasks

    source = result.source

    def add(document: Document, pairs: Sequence[tuple[str, str]]) -> None:
        listed = list(pairs[: limits.MAX_PROBLEMS_PER_DOCUMENT])
        if len(pairs) > len(listed):
            listed.append(("", f"... and {len(pairs) - len(listed)} more problems"))
        for path, message in listed:
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
        problem = json_problem(document.body)
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


def load_file(path: str) -> LoadResult:
    """Read, parse and validate a file (`-` is standard input); never raises for bad input."""
    source = "<stdin>" if path == "-" else path
    data = read_bounded(path)
    if isinstance(data, Problem):
        return LoadResult(source=source, problems=[Problem(data.message, source=source)])
    return load_text(data, source)
