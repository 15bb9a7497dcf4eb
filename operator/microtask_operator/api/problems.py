"""What is wrong with an input, said with its place: `FILE: doc N (name): field.path: message`.

A `Problem` locates one thing wrong (file, document, field path); `problems_from_error` turns a
pydantic `ValidationError` into problems a person can act on: the expected JSON type rather than
Python's, the offending value shown short, and "did you mean" for a misspelt field name.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


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


def json_type(value: Any) -> str:
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


def shown(value: Any) -> str:
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
            message = f"must be {_EXPECTED[kind]}, not {json_type(value)}"
        elif kind == "value_error":
            message = str(ctx.get("error", error["msg"]))
        elif kind == "literal_error":
            message = f"must be {ctx.get('expected')}, not {shown(value)}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            bound = next(iter(ctx.values()), "?")
            words = {
                "greater_than_equal": "at least",
                "greater_than": "greater than",
                "less_than_equal": "at most",
                "less_than": "less than",
            }[kind]
            message = f"must be {words} {bound}, not {shown(value)}"
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
