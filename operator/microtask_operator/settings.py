"""Operator settings: cluster conventions that are the same for every MicrotaskJob.

Read from `MICROTASK_*` environment variables (the operator's Deployment sets them; `microtask plan`
honours them too), with defaults that follow the common NVIDIA GPU conventions. A MicrotaskJob's
`spec.placement` overrides the per-job parts (GPU resource name, node label, tolerations).

| variable | default | meaning |
|---|---|---|
| MICROTASK_RUNNER_COMMAND | `microtask-runner` | the worker's entrypoint (shell-style words) |
| MICROTASK_GPU_RESOURCE_NAME | `nvidia.com/gpu` | extended resource GPU shards request |
| MICROTASK_GPU_NODE_LABEL | `nvidia.com/gpu.present` | node label marking GPU nodes |
| MICROTASK_GPU_NODE_LABEL_VALUE | `true` | its value on GPU nodes |
| MICROTASK_GPU_TAINT_KEY | `nvidia.com/gpu` | taint GPU shards tolerate (operator Exists) |
| MICROTASK_GPU_TAINT_EFFECT | `NoSchedule` | effect of that taint |
| MICROTASK_RUN_AS_USER | `65532` | pod runAsUser when the template sets none (`none`: unset) |
| MICROTASK_ITEMS_MOUNT_PATH | `/etc/microtask/items` | mount path of configMapRef items |

The runner's own variables (MICROTASK_INDEXES, MICROTASK_ITEMS...) are a different set: they are
set on worker containers, never read here.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENVIRONMENT", "Settings", "SettingsError"]


class SettingsError(ValueError):
    """An environment variable holds an unusable value."""


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings; see the module documentation for the environment variables."""

    runner_command: tuple[str, ...] = ("microtask-runner",)
    gpu_resource_name: str = "nvidia.com/gpu"
    gpu_node_label: str = "nvidia.com/gpu.present"
    gpu_node_label_value: str = "true"
    gpu_taint_key: str = "nvidia.com/gpu"
    gpu_taint_effect: str = "NoSchedule"
    # Restricted pods must not run as root; images often declare no numeric non-root user, and
    # the kubelet then refuses to start them under runAsNonRoot. A numeric default avoids that.
    run_as_user: int | None = 65532
    items_mount_path: str = "/etc/microtask/items"

    def gpu_tolerations(self) -> list[dict[str, Any]]:
        """Default tolerations of GPU shards: the GPU taint, whatever its value."""
        return [{"key": self.gpu_taint_key, "operator": "Exists", "effect": self.gpu_taint_effect}]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `MICROTASK_*` variables (unset or empty: the default)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (variable, parse) in ENVIRONMENT.items():
            text = environ.get(variable, "").strip()
            if not text:
                continue
            try:
                values[name] = parse(text)
            except ValueError as exc:
                raise SettingsError(f"{variable}={text!r:.80}: {exc}") from None
        return dataclasses.replace(cls(), **values)


def _command(text: str) -> tuple[str, ...]:
    words = tuple(shlex.split(text))
    if not words:
        raise ValueError("must name a program")
    return words


def _label_key(text: str) -> str:
    from microtask_operator.api.model import label_key_problem

    problem = label_key_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _label_value(text: str) -> str:
    from microtask_operator.api.model import label_value_problem

    problem = label_value_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _effect(text: str) -> str:
    if text not in {"NoSchedule", "PreferNoSchedule", "NoExecute"}:
        raise ValueError("must be NoSchedule, PreferNoSchedule or NoExecute")
    return text


def _user(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) == 0 or int(text) > 2**31 - 1:
        raise ValueError("must be a non-root numeric user id (1 to 2147483647) or 'none'")
    return int(text)


def _absolute_path(text: str) -> str:
    if not text.startswith("/") or ":" in text:
        raise ValueError("must be an absolute path without ':'")
    return text.rstrip("/") or "/"


#: Settings field -> (environment variable, parser). New settings add a line here.
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "runner_command": ("MICROTASK_RUNNER_COMMAND", _command),
    "gpu_resource_name": ("MICROTASK_GPU_RESOURCE_NAME", _label_key),
    "gpu_node_label": ("MICROTASK_GPU_NODE_LABEL", _label_key),
    "gpu_node_label_value": ("MICROTASK_GPU_NODE_LABEL_VALUE", _label_value),
    "gpu_taint_key": ("MICROTASK_GPU_TAINT_KEY", _label_key),
    "gpu_taint_effect": ("MICROTASK_GPU_TAINT_EFFECT", _effect),
    "run_as_user": ("MICROTASK_RUN_AS_USER", _user),
    "items_mount_path": ("MICROTASK_ITEMS_MOUNT_PATH", _absolute_path),
}
