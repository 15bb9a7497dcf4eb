"""How our kubelet turns a pod's first container into a local process: argv, env, files.

Kubernetes semantics kept: ``$(VAR)`` expansion with ``$$`` escapes, ``env``/``envFrom`` from
ConfigMaps and Secrets, the downward API, ConfigMap/Secret volumes, the termination-message file
(read back, at most 4096 bytes; ``FallbackToLogsOnError``). Paths that exist only inside a
container (mount paths, the termination-message path) are mapped to the pod's local directory.

Volumes: a ConfigMap or Secret becomes files in a folder of the pod's; an ``emptyDir`` (or any
other kind) is a folder of the pod's, shared by its mounts and removed with the pod; a
``hostPath`` is the path itself on this machine, as a kubelet bind-mounts it from its host, with
the type checks a kubelet makes (a failed check keeps the pod Pending, as a failed mount does).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .apiclient import ApiError, AsyncApi

__all__ = [
    "PENDING_REASONS",
    "ContainerConfigError",
    "ContainerSettings",
    "Launch",
    "expand_vars",
    "parse_quantity",
    "prepare",
    "termination_message",
]

MAX_TERMINATION_MESSAGE = 4096  # the kubelet's per-container limit
# Reasons of a ContainerConfigError after which the pod stays Pending and the kubelet retries.
PENDING_REASONS = frozenset({"CreateContainerConfigError", "ContainerCreating"})
FALLBACK_LOG_BYTES = 2048  # FallbackToLogsOnError keeps the last 2048 bytes / 80 lines
FALLBACK_LOG_LINES = 80

_DOLLAR, _OPEN = ord("$"), ord("(")
_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
}  # fmt: skip


@dataclass
class ContainerSettings:
    """What every container gets from our kubelet."""

    # Set to the local termination-message path, unless the pod sets the variable itself.
    report_env: str | None = "MICROTASK_REPORT_PATH"
    # The runner is installed beside this interpreter: containers find it as in an image.
    path_prepend: list[str] = field(default_factory=lambda: [str(Path(sys.executable).parent)])
    extra_env: dict[str, str] = field(default_factory=dict)


class ContainerConfigError(Exception):
    """The container cannot be started (missing ConfigMap key, no command, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Launch:
    """A container ready to start."""

    argv: list[str]
    env: dict[str, str]
    report_path: Path


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion, as the kubelet applies it to env values, command, args.

    A port of k8s.io/kubernetes third_party/forked/golang/expansion (Expand, MappingFuncFor),
    which scans bytes: ``$$`` is ``$``; ``$(NAME)`` is NAME's value when defined, else stays as
    written (NAME is anything up to the first ``)``); ``$(`` with no ``)`` and a final ``$`` stay;
    ``$`` before any other byte stays with that byte, which Go turns into the rune of the same
    number (a UTF-8 character after ``$`` comes out garbled, as from a real kubelet).
    """
    data = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    checkpoint = 0
    cursor = 0
    while cursor < len(data):
        if data[cursor] == _DOLLAR and cursor + 1 < len(data):
            out += data[checkpoint:cursor]
            after = data[cursor + 1]
            advance = 1
            if after == _DOLLAR:
                out += b"$"
            elif after == _OPEN:
                close = data.find(b")", cursor + 2)
                if close < 0:
                    out += b"$("
                else:
                    name = data[cursor + 2 : close].decode("utf-8", "surrogateescape")
                    value = env.get(name)
                    out += (
                        value.encode("utf-8", "surrogateescape")
                        if value is not None
                        else data[cursor : close + 1]
                    )
                    advance = close - cursor
            else:
                out += b"$" + chr(after).encode()
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out += data[checkpoint:]
    return out.decode("utf-8", "surrogateescape")


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``, ``1e3``) as a float."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", str(value).strip())
    if match is None or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise ValueError(f"invalid quantity {value!r}")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2), 1.0)


def _rewrite(value: str, rewrites: Mapping[str, str]) -> str:
    for source, target in sorted(rewrites.items(), key=lambda kv: -len(kv[0])):
        if source and source in value:
            value = value.replace(source, target)
    return value


async def _read_object(api: AsyncApi, plural: str, namespace: str, name: str) -> Any:
    try:
        return await api.request("GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}")
    except ApiError as error:
        if error.code == 404:
            return None
        raise


def _data(obj: Mapping[str, Any], plural: str) -> dict[str, str]:
    data = dict(obj.get("data") or {})
    if plural == "secrets":
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
    return data


def _host_path(source: Mapping[str, Any]) -> Path:
    """A hostPath volume's path after the kubelet's checks of its ``type``."""
    path = Path(str(source.get("path") or ""))
    kind = source.get("type") or ""
    if not path.is_absolute():
        raise ContainerConfigError("ContainerCreating", f"hostPath {str(path)!r} is not absolute")
    if kind == "DirectoryOrCreate":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644, exist_ok=True)
    checks = {
        "Directory": (Path.is_dir, "a directory"),
        "DirectoryOrCreate": (Path.is_dir, "a directory"),
        "File": (Path.is_file, "a file"),
        "FileOrCreate": (Path.is_file, "a file"),
        "Socket": (Path.is_socket, "a socket"),
        "CharDevice": (Path.is_char_device, "a character device"),
        "BlockDevice": (Path.is_block_device, "a block device"),
    }
    if kind in checks:
        check, what = checks[kind]
        if not check(path):
            raise ContainerConfigError(
                "ContainerCreating",
                f"MountVolume.SetUp failed: hostPath type check failed: {path} is not {what}",
            )
    elif kind:
        raise ContainerConfigError("ContainerCreating", f"hostPath type {kind!r} is not known")
    return path


async def _materialize_volume(
    api: AsyncApi, namespace: str, volume: Mapping[str, Any], local: Path
) -> Path:
    """Where ``volume`` is here: ``local`` (holding a ConfigMap's files...), or a host path."""
    if "hostPath" in volume:
        return _host_path(volume["hostPath"])
    local.mkdir(parents=True, exist_ok=True)
    for kind, plural in (("configMap", "configmaps"), ("secret", "secrets")):
        if kind not in volume:
            continue
        ref = volume[kind]
        name = ref.get("name") or ref.get("secretName")
        obj = await _read_object(api, plural, namespace, name)
        if obj is None:
            if ref.get("optional"):
                return local
            raise ContainerConfigError("CreateContainerConfigError", f'{kind} "{name}" not found')
        data = _data(obj, plural)
        items = ref.get("items")
        selected = (
            [(i["key"], i.get("path", i["key"])) for i in items]
            if items
            else [(k, k) for k in data]
        )
        for key, path in selected:
            if key not in data:
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f"couldn't find key {key} in {kind} {namespace}/{name}",
                )
            target = local / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[key])
    return local


async def _env_source(api: AsyncApi, namespace: str, source: Mapping[str, Any]) -> dict[str, str]:
    for key, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
        if key in source:
            ref = source[key]
            obj = await _read_object(api, plural, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    return {}
                raise ContainerConfigError(
                    "CreateContainerConfigError", f'{plural[:-1]} "{ref["name"]}" not found'
                )
            return _data(obj, plural)
    return {}


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
    }
    if path not in simple:
        raise ContainerConfigError("CreateContainerConfigError", f"unsupported fieldPath {path!r}")
    return str(simple[path] or "")


async def _env_value_from(
    api: AsyncApi, pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any]
) -> str | None:
    if "fieldRef" in source:
        return _field_ref(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        kind, _, name = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(name)
        if value is None:
            return "0"
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(max(1, int(-(-parse_quantity(value) // divisor))))
    for key, plural in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
        if key in source:
            ref = source[key]
            obj = await _read_object(api, plural, pod["metadata"]["namespace"], ref["name"])
            data = _data(obj or {}, plural)
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in {plural[:-1]} {ref['name']}",
                )
            return data[ref["key"]]
    return None


async def prepare(
    api: AsyncApi, pod: Mapping[str, Any], workdir: Path, settings: ContainerSettings
) -> Launch:
    """argv, env and the local termination-message path of the pod's first container."""
    container = pod["spec"]["containers"][0]
    namespace = pod["metadata"]["namespace"]
    report_path = workdir / "termination-log"
    report_path.touch()
    rewrites = {container.get("terminationMessagePath") or "/dev/termination-log": str(report_path)}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ContainerConfigError(
                "CreateContainerConfigError", f"volume {mount['name']!r} not found"
            )
        local = await _materialize_volume(
            api, namespace, volume, workdir / "volumes" / mount["name"]
        )
        target = local / mount["subPath"] if mount.get("subPath") else local
        files = {"configMap", "secret"} & set(volume)
        if mount.get("subPath") and not files and local.is_dir() and not target.exists():
            target.mkdir(parents=True)  # a kubelet creates a missing subPath folder
        rewrites[mount["mountPath"].rstrip("/")] = str(target)

    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        data = await _env_source(api, namespace, source)
        env.update({prefix + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        if "valueFrom" in item:
            value = await _env_value_from(api, pod, container, item["valueFrom"])
            if value is None:
                continue
        else:
            value = expand_vars(str(item.get("value", "")), env)
        env[item["name"]] = value
    env = {k: _rewrite(v, rewrites) for k, v in env.items()}
    if settings.report_env and settings.report_env not in env:
        env[settings.report_env] = str(report_path)
    command = [expand_vars(str(a), env) for a in container.get("command") or []]
    args = [expand_vars(str(a), env) for a in container.get("args") or []]
    if not command:
        raise ContainerConfigError(
            "StartError", "our kubelet runs no image entrypoint: set the container's command"
        )
    process_env = {
        "PATH": os.pathsep.join([*settings.path_prepend, os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(workdir),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOSTNAME": pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        **settings.extra_env,
        **env,
    }
    argv = [_rewrite(a, rewrites) for a in command + args]
    return Launch(argv=argv, env=process_env, report_path=report_path)


def termination_message(
    container: Mapping[str, Any], report: Path | None, log: Path, exit_code: int
) -> str:
    """What the kubelet puts in ``state.terminated.message``."""
    data = b""
    if report is not None:
        with contextlib.suppress(OSError), report.open("rb") as handle:
            data = handle.read(MAX_TERMINATION_MESSAGE)
    if (
        not data
        and exit_code != 0
        and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
    ):
        with contextlib.suppress(OSError):
            tail = log.read_bytes()[-FALLBACK_LOG_BYTES:]
            data = b"\n".join(tail.split(b"\n")[-FALLBACK_LOG_LINES:])
    return data.decode("utf-8", errors="replace")
