"""How the operator process runs: watched namespaces, timings, ports, peering.

Flags of `microtask operator` override the `MICROTASK_*` environment variables, which override the
defaults. Cluster conventions shared with `microtask plan` (runner command, GPU labels) live in
`microtask_operator.settings`.

| variable (flag) | default | meaning |
|---|---|---|
| MICROTASK_NAMESPACES (--namespace, repeatable) | all | namespaces to watch, comma-separated |
| MICROTASK_RESYNC_SECONDS (--resync-seconds) | 30 | longest sleep of a job's loop without news |
| MICROTASK_DEBOUNCE_SECONDS (--debounce-seconds) | 0.2 | a burst of changes, one decision |
| MICROTASK_SETTLE_SECONDS | 5 debounces | the same, when nothing is left to start (see below) |
| MICROTASK_METRICS_PORT (--metrics-port) | 8080 | Prometheus /metrics port (0: off) |
| MICROTASK_HEALTH_PORT (--health-port) | 8081 | liveness endpoint /healthz port (0: off) |
| MICROTASK_PEERING (--peering) | standalone | kopf peering name; replicas keep one active |

While every microtask left is in flight, a change can only lead to a harvest, never to a new Job:
the job's loop then waits the longer settle time after a change, so the shards finishing close
together are harvested by one reconcile (one status write, one delete) rather than one each. A
job with work still to start keeps the short debounce: a freed slot is filled at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from ..api.names import GROUP


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the spec, labels, annotations), built without copying the status first.

    kopf builds it for every watch event of a MicrotaskJob by deep-copying the whole object and
    then dropping what it ignores; the status, which our own writes change on every harvest, was
    most of what it copied (and of the operator's CPU with a hundred jobs running).
    """

    def build(self, *, body: Any, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler watching status fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        if not ours(body):
            # Jobs, pods and nodes have no change handlers and no daemons, so kopf never uses
            # their diff base, yet it built (deep-copied) one for every watch event of theirs:
            # with a hundred jobs, the largest single cost of the operator's event loop.
            return cast(kopf.BodyEssence, {})
        meta = body.get("metadata") or {}
        lean = {k: v for k, v in body.items() if k not in ("status", "metadata")}
        lean["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=extra_fields)


def ours(body: Mapping[str, Any]) -> bool:
    """Is this a MicrotaskJob (or an object whose kind is not known: treated as one)?"""
    api_version = body.get("apiVersion")
    return not isinstance(api_version, str) or api_version.split("/")[0] == GROUP


# The settle time by default, in debounces: 1 s with the default debounce. Shards of one wave
# finish within about a second of each other under load, and a second more before the last
# harvest is not a delay anyone waits on (no Job can start sooner).
SETTLE_DEBOUNCES = 5


class ConfigError(ValueError):
    """A flag or environment variable holds an unusable value."""


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    resync_seconds: float = 30.0
    debounce_seconds: float = 0.2
    settle_seconds: float | None = None  # None: SETTLE_DEBOUNCES debounces
    metrics_port: int = 8080
    health_port: int = 8081
    peering: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ

        def number(name: str, default: float, minimum: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r}: not a number") from None
            if value < minimum:
                raise ConfigError(f"{name}={text!r}: must be at least {minimum:g}")
            return value

        def port(name: str, default: int) -> int:
            value = number(name, default, 0)
            if value != int(value) or value > 65535:
                raise ConfigError(f"{name}={value:g}: not a port (0 to 65535)")
            return int(value)

        namespaces = tuple(
            n.strip() for n in env.get("MICROTASK_NAMESPACES", "").split(",") if n.strip()
        )
        return cls(
            namespaces=namespaces,
            resync_seconds=number("MICROTASK_RESYNC_SECONDS", 30.0, 0.1),
            debounce_seconds=number("MICROTASK_DEBOUNCE_SECONDS", 0.2, 0.0),
            settle_seconds=(
                number("MICROTASK_SETTLE_SECONDS", 0.0, 0.0)
                if env.get("MICROTASK_SETTLE_SECONDS", "").strip()
                else None
            ),
            metrics_port=port("MICROTASK_METRICS_PORT", 8080),
            health_port=port("MICROTASK_HEALTH_PORT", 8081),
            peering=env.get("MICROTASK_PEERING", "").strip() or None,
        )

    def pause_after_change(self, *, settle: bool) -> float:
        """How long a job's loop lets changes gather before it reconciles: the debounce, or the
        settle time while nothing is left to start."""
        if not settle:
            return self.debounce_seconds
        if self.settle_seconds is not None:
            return self.settle_seconds
        return SETTLE_DEBOUNCES * self.debounce_seconds

    def apply_to_kopf(self, settings: kopf.OperatorSettings) -> None:
        """kopf's own knobs: our finalizer and annotations under our domain; peering as asked."""
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = LeanDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = 20  # INFO: Events for what users should see, not debug chatter
        # Given namespace names, kopf would still list every namespace (to match patterns and
        # notice new ones), which a per-namespace install's RBAC rightly does not grant; exact
        # names need no listing. CRDs are then discovered once, at start-up.
        if self.namespaces and not any(set("*?[!") & set(ns) for ns in self.namespaces):
            settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if self.peering:
            settings.peering.name = self.peering
            settings.peering.mandatory = True
            settings.peering.standalone = False
        else:
            settings.peering.standalone = True
