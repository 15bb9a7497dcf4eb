"""Kubernetes API failures worded for a person: one line per problem, never a traceback.

The wording follows kubectl, so what users already know reads the same: `Error from server
(Forbidden): ...` with the server's own sentence (which names user, verb and resource), each
field error of a 422 on a line of its own, and a plain sentence when the server cannot be
reached at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Exit code of every command when the cluster refuses or cannot be reached.
EXIT_FAILURE = 1


@dataclass(frozen=True)
class Request:
    """What a command asked of the API server, for messages the server does not word itself."""

    verb: str
    """get, list, watch, create, delete."""
    resource: str
    """Plural with its group, as kubectl names it: `microtaskjobs.microtask.dev`, `configmaps`."""
    name: str | None = None
    namespace: str | None = None

    def describe(self) -> str:
        """`list microtaskjobs.microtask.dev in the namespace "x"`."""
        what = f'{self.resource} "{self.name}"' if self.name else self.resource
        where = f' in the namespace "{self.namespace}"' if self.namespace else ""
        return f"{self.verb} {what}{where}"


class CliError(Exception):
    """A failure already worded for the user; `lines` go to stderr, one problem each."""

    def __init__(
        self,
        lines: Sequence[str] | str,
        *,
        status: int = 0,
        reason: str = "",
        code: int = EXIT_FAILURE,
    ) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.status = status
        """HTTP status of the server's answer; 0 when the server gave none."""
        self.reason = reason
        """The Kubernetes reason (NotFound, AlreadyExists, Expired...), when there is one."""
        self.code = code
        """The exit code the command returns."""
        super().__init__("\n".join(self.lines))

    def with_hint(self, hint: str) -> CliError:
        """The same error with one more line saying what to do."""
        return CliError([*self.lines, hint], status=self.status, reason=self.reason, code=self.code)


def _status_body(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    return body if isinstance(body, dict) else {}


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _raw_text(body: Any) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    return _one_line(body, 200) if isinstance(body, str) else ""


# Reasons kubectl shows for statuses whose body carries none.
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def api_error(status: int, body: Any, request: Request) -> CliError:
    """The server answered `status` with `body` (a Kubernetes Status, usually) to `request`."""
    parsed = _status_body(body)
    reason = str(parsed.get("reason") or _STATUS_REASONS.get(status, "Unknown"))
    message = _one_line(str(parsed.get("message") or "")) or _raw_text(body)
    details = parsed.get("details") if isinstance(parsed.get("details"), dict) else {}

    def error(lines: Sequence[str] | str) -> CliError:
        return CliError(lines, status=status, reason=reason)

    if status == 401:
        return error("error: You must be logged in to the server (Unauthorized)")
    if status == 403:
        if not message or " cannot " not in message:
            message = (message + ": " if message else "") + f"you cannot {request.describe()}"
        return error(f"Error from server (Forbidden): {message}")
    if status == 404 and not (details or {}).get("name"):
        # The path itself is unknown: the resource type is not served.
        lines = [f"Error from server (NotFound): {message or 'the server could not find it'}"]
        if request.resource.startswith("microtaskjobs"):
            lines.append(
                "error: the server does not serve MicrotaskJobs: is the CRD installed? "
                "(`microtask crd | kubectl apply -f -`)"
            )
        return error(lines)
    if status == 422:
        kind = str((details or {}).get("kind") or "object")
        name = (details or {}).get("name") or request.name or ""
        head = f'The {_kind_title(kind)} "{name}" is invalid' if name else "invalid object"
        causes = [c for c in (details or {}).get("causes") or [] if isinstance(c, dict)]
        if not causes:
            return error(f"error: {message or head}")
        lines = []
        for cause in causes:
            text = _one_line(str(cause.get("message") or cause.get("reason") or "invalid"))
            field = str(cause.get("field") or "")
            lines.append(f"error: {head}: {field}: {text}" if field else f"error: {head}: {text}")
        return error(lines)
    return error(f"Error from server ({reason}): {message or f'HTTP {status}'}")


def _kind_title(kind: str) -> str:
    """`microtaskjobs` (as the details of a CRD's error say) -> `MicrotaskJob`."""
    known = {"microtaskjobs": "MicrotaskJob", "configmaps": "ConfigMap"}
    return known.get(kind, kind)


def connection_error(error: BaseException | str, server: str) -> CliError:
    """The request never got an answer: connection refused, DNS, TLS, timeout."""
    cause = _shorten(error) if isinstance(error, str) else _root_cause(error)
    where = f" at {server}" if server else ""
    return CliError(
        f"error: cannot reach the Kubernetes API server{where}: {cause} "
        "(is the cluster running, and is the kubeconfig's context the right one?)"
    )


def _root_cause(error: BaseException) -> str:
    """The innermost reason a urllib3/socket error names, shortened to what a person needs."""
    text = ""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        nested = getattr(current, "reason", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return _shorten(text) or type(error).__name__


def _shorten(text: str) -> str:
    lowered = text.lower()
    for needle, short in (
        ("connection refused", "connection refused"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "unknown host"),
        ("certificate verify failed", "TLS certificate not trusted (certificate verify failed)"),
        ("timed out", "timed out"),
        ("network is unreachable", "network unreachable"),
        ("no route to host", "no route to host"),
        ("connection reset", "connection reset"),
    ):
        if needle in lowered:
            return short
    # "HTTPSConnection(host=..., port=...): Failed to establish ...: [Errno 111] ..." -> the end.
    return _one_line(text.rsplit("): ", 1)[-1], 200)
