"""The Kubernetes Job of one shard, as a plain manifest dict.

One shard is one `batch/v1` Job with one pod that never restarts (`backoffLimit: 0`): retries are
the core's business, per microtask, so the Job controller must not retry whole pods behind its
back. The pod is the user's template with the runner as the worker's entrypoint, placed on the
shard's pool, with a restricted security context, and labelled so that a restarted operator
recognises the Job (deterministic name `{mtj}-s{shard}`, labels in `labels.py`).

The template is the user's; the builder only adds to it, and where it must override a value (the
worker's command, restartPolicy) validation has already rejected conflicting settings.

The worker's environment is the runner's contract (`microtask_runner.contract`): the shard
(MICROTASK_JOB/SHARD/ATTEMPT/POOL/INDEXES/ITEMS), its node (MICROTASK_NODE, from the downward API)
and, with `spec.output`, the result store: MICROTASK_OUTPUT_URL, plus for S3 the endpoint, region
and the Secret's credentials (AWS_*), or for a volume its mount at OUTPUT_MOUNT_PATH.

The kubelet expands `$(VAR)` and `$$` in every env `value`: an item `$(MICROTASK_JOB)` would reach
the program as the job's name, `a$$b` as `a$b`. So every value the operator writes is escaped
(`$` -> `$$`) and arrives byte for byte. The template's own variables are the user's, expanded as
Kubernetes always does.

A `configMapRef` source is mounted from the job's immutable copy of the ConfigMap when there is
one (`snapshot_config_map`), so an edit of the user's ConfigMap mid-run cannot mix old and new
items.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from microtask_runner.contract import (
    ENV_ATTEMPT,
    ENV_CALLABLE,
    ENV_INDEXES,
    ENV_ITEMS,
    ENV_JOB,
    ENV_NO_RETRY_EXIT_CODES,
    ENV_NODE,
    ENV_OUTPUT_URL,
    ENV_POOL,
    ENV_RETRY_AFTER_SECONDS,
    ENV_S3_ENDPOINT,
    ENV_SHARD,
    ENV_TIMEOUT_SECONDS,
)

from microtask_operator import labels
from microtask_operator.api.convert import retry_policy
from microtask_operator.api.items import effective_items, runner_items
from microtask_operator.api.model import (
    OUTPUT_MOUNT_PATH,
    RESERVED_OUTPUT_VOLUME_NAME,
    RESERVED_VOLUME_NAME,
    Items,
    MicrotaskJob,
    Output,
)
from microtask_operator.api.names import API_VERSION, KIND
from microtask_operator.api.sources import pod_store_root, store_url
from microtask_operator.core.retries import in_pod_env
from microtask_operator.core.types import Pool, ShardPlan
from microtask_operator.settings import Settings

__all__ = [
    "ENV_ATTEMPT",
    "ENV_CALLABLE",
    "ENV_INDEXES",
    "ENV_ITEMS",
    "ENV_JOB",
    "ENV_NODE",
    "ENV_OUTPUT_URL",
    "ENV_POOL",
    "ENV_S3_ENDPOINT",
    "ENV_SHARD",
    "ENV_TIMEOUT_SECONDS",
    "ITEMS_DIGEST_ANNOTATION",
    "OwnerMeta",
    "build_job",
    "escape_env_value",
    "job_name",
    "parse_job_name",
    "snapshot_config_map",
    "snapshot_name",
]

# The names the operator sets on the worker; the template's own values of them are dropped.
_RUNNER_ENV = {
    ENV_INDEXES,
    ENV_ITEMS,
    ENV_TIMEOUT_SECONDS,
    ENV_CALLABLE,
    ENV_JOB,
    ENV_SHARD,
    ENV_ATTEMPT,
    ENV_POOL,
    ENV_NODE,
    ENV_OUTPUT_URL,
    ENV_S3_ENDPOINT,
    ENV_RETRY_AFTER_SECONDS,
    ENV_NO_RETRY_EXIT_CODES,
}
# The AWS SDKs' names, which the runner reads too; keys of the Secret named by output.s3.
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
AWS_REGION = "AWS_REGION"

#: Annotation on a snapshot ConfigMap: the digest of the item source it holds (status.items.digest).
ITEMS_DIGEST_ANNOTATION = "microtask.dev/items-digest"

_CONFIG_MAP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_JOB_NAME = re.compile(r"(?P<mtj>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-s(?P<shard>0|[1-9][0-9]*)")


class OwnerMeta(TypedDict):
    """The owning MicrotaskJob as the API server knows it."""

    name: str
    namespace: str
    uid: str


def job_name(mtj_name: str, shard_id: int) -> str:
    """Name of a shard's Job: deterministic, so a restarted operator never creates it twice."""
    if shard_id < 0:
        raise ValueError(f"shard ids are not negative: {shard_id}")
    return f"{mtj_name}-s{shard_id}"


def parse_job_name(name: str) -> tuple[str, int] | None:
    """(MicrotaskJob name, shard id) of a Job name made by `job_name`, or None."""
    match = _JOB_NAME.fullmatch(name)
    if match is None:
        return None
    return match["mtj"], int(match["shard"])


def escape_env_value(value: str) -> str:
    """`value` as an env value the kubelet hands to the container unchanged.

    The kubelet reads `$$` as `$` and `$(NAME)` as NAME's value (when NAME is defined); once every
    `$` is doubled, nothing is left for it to expand.
    """
    return value.replace("$", "$$")


def snapshot_name(mtj_name: str, uid: str) -> str:
    """Name of the ConfigMap holding a job's copy of its configMapRef items.

    The uid's start tells a re-created MicrotaskJob of the same name from the one before, whose
    copy the garbage collector may not have removed yet.
    """
    tag = uid[:8].lower()
    name = f"{mtj_name}-items-{tag}"
    if len(tag) < 8 or len(name) > 253 or not _CONFIG_MAP_NAME.fullmatch(name):
        raise ValueError(
            f"no valid ConfigMap name from MicrotaskJob {mtj_name!r} and uid {uid!r}: {name!r}"
        )
    return name


def snapshot_config_map(
    mtj_body_meta: OwnerMeta | Mapping[str, Any], key: str, text: str, digest: str
) -> dict[str, Any]:
    """The immutable ConfigMap that fixes a configMapRef job's items when it starts.

    It holds `key` as the shards mount it; the MicrotaskJob owns it, so it goes with the job.
    """
    name, namespace, uid = mtj_body_meta["name"], mtj_body_meta["namespace"], mtj_body_meta["uid"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": snapshot_name(name, uid),
            "namespace": namespace,
            "labels": {
                labels.JOB: name,
                labels.JOB_UID: uid,
                labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
            },
            "annotations": {ITEMS_DIGEST_ANNOTATION: digest},
            "ownerReferences": [_owner_reference(name, uid)],
        },
        "immutable": True,
        "data": {key: text},
    }


def _owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _number(value: float) -> str:
    """A duration as the runner reads it: integral values without a decimal point."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _shard_labels(mtj_name: str, uid: str, plan: ShardPlan, queue: str | None) -> dict[str, str]:
    out = {
        labels.JOB: mtj_name,
        labels.JOB_UID: uid,
        labels.SHARD: str(plan.shard_id),
        labels.ATTEMPT: str(plan.attempt),
        labels.POOL: plan.pool.value,
    }
    if plan.copy_of is not None:
        out[labels.COPY_OF] = str(plan.copy_of)
    out[labels.MANAGED_BY] = labels.MANAGED_BY_VALUE
    if queue:
        out[labels.KUEUE_QUEUE_NAME] = queue
    return out


def _add_node_affinity(
    pod: dict[str, Any], required: list[dict[str, Any]], preferred: list[dict[str, Any]]
) -> None:
    if not required and not preferred:
        return
    node_affinity = pod.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    if required:
        selector = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = selector.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({})
        # Terms are ORed: our requirements must hold whichever term of the user's matches.
        for term in terms:
            term.setdefault("matchExpressions", []).extend(copy.deepcopy(required))
    if preferred:
        node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).extend(
            preferred
        )


def _add_tolerations(pod: dict[str, Any], tolerations: list[dict[str, Any]]) -> None:
    existing = pod.setdefault("tolerations", [])
    for toleration in tolerations:
        if toleration not in existing:
            existing.append(toleration)
    if not existing:
        del pod["tolerations"]


def _escalates(context: dict[str, Any]) -> bool:
    """Does the container ask for privileges that imply escalation?"""
    added = (context.get("capabilities") or {}).get("add") or []
    return bool(context.get("privileged")) or any(
        str(c).upper().removeprefix("CAP_") == "SYS_ADMIN" for c in added
    )


def _restrict(pod: dict[str, Any], settings: Settings) -> None:
    """Pod Security "restricted" defaults; values the template sets explicitly are kept."""
    pod_context = pod.setdefault("securityContext", {})
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    users = [pod_context.get("runAsUser")] + [
        (c.get("securityContext") or {}).get("runAsUser") for c in containers
    ]
    # A template that asks for root gets root (admission judges it), not a pod no kubelet starts.
    pod_context.setdefault("runAsNonRoot", 0 not in users)
    pod_context.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    user_set = any(u is not None for u in users)
    if settings.run_as_user is not None and not user_set:
        pod_context["runAsUser"] = settings.run_as_user
    for container in containers:
        context = container.get("securityContext") or {}
        container["securityContext"] = context
        if not _escalates(context):
            # (The API server refuses the combination with privileged or CAP_SYS_ADMIN.)
            context.setdefault("allowPrivilegeEscalation", False)
        capabilities = context.setdefault("capabilities", {})
        capabilities.setdefault("drop", ["ALL"])
        # Repeat the pod's (possibly user-chosen) values, so each container is restricted on its
        # own and a later pod-level edit cannot silently loosen it.
        context.setdefault("runAsNonRoot", pod_context["runAsNonRoot"])
        context.setdefault("seccompProfile", copy.deepcopy(pod_context["seccompProfile"]))


def _set_gpu_resources(worker: dict[str, Any], resource: str, count: int | None) -> None:
    resources = worker.setdefault("resources", {})
    for kind in ("limits", "requests"):
        amounts = resources.get(kind)
        if amounts is not None:
            amounts.pop(resource, None)
            if not amounts:
                del resources[kind]
    if count is not None:
        # Extended resources cannot be overcommitted: requests default to (and must equal) limits.
        # Quantities are strings in the API (the Python client refuses a bare int).
        resources.setdefault("limits", {})[resource] = str(count)
    if not resources:
        del worker["resources"]


def _place(pod: dict[str, Any], mtj: MicrotaskJob, plan: ShardPlan, settings: Settings) -> None:
    """The shard's pool (affinity, selector, tolerations), the nodes to avoid, the spread."""
    placement = mtj.spec.placement
    gpu = placement.gpu
    gpu_label = gpu.node_label or settings.gpu_node_label
    label_value = settings.gpu_node_label_value
    required: list[dict[str, Any]] = []
    if plan.pool is Pool.GPU:
        required.append({"key": gpu_label, "operator": "In", "values": [label_value]})
        node_selector = gpu.node_selector
        tolerations = (
            [t.to_k8s() for t in gpu.tolerations]
            if gpu.tolerations is not None
            else settings.gpu_tolerations()
        )
    else:
        if placement.cpu.avoid_gpu_nodes:
            # NotIn also matches nodes without the label: every ordinary node.
            required.append({"key": gpu_label, "operator": "NotIn", "values": [label_value]})
        node_selector = placement.cpu.node_selector
        tolerations = [t.to_k8s() for t in placement.cpu.tolerations]
    if plan.avoid_nodes_hard:
        required.append(
            {
                "key": labels.HOSTNAME,
                "operator": "NotIn",
                "values": sorted(set(plan.avoid_nodes_hard)),
            }
        )
    preferred = []
    if plan.avoid_nodes_soft:
        preferred.append(
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {
                            "key": labels.HOSTNAME,
                            "operator": "NotIn",
                            "values": sorted(set(plan.avoid_nodes_soft)),
                        }
                    ]
                },
            }
        )
    _add_node_affinity(pod, required, preferred)
    if node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **node_selector}
    _add_tolerations(pod, tolerations)
    if placement.spread:
        pod.setdefault("topologySpreadConstraints", []).append(
            {
                "maxSkew": 1,
                "topologyKey": labels.HOSTNAME,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {labels.JOB: mtj.name}},
            }
        )


def _mount(
    pod: dict[str, Any],
    worker: dict[str, Any],
    volume: dict[str, Any] | None,
    mount: dict[str, Any],
) -> None:
    """Add `volume` (unless it is the template's own) and mount it in the worker.

    A mount of the template's at the same path gives way: the operator's paths are its own.
    """
    if volume is not None:
        pod.setdefault("volumes", []).append(volume)
    mounts = [
        m for m in worker.get("volumeMounts") or [] if m.get("mountPath") != mount["mountPath"]
    ]
    worker["volumeMounts"] = [*mounts, mount]


def _mount_items(
    pod: dict[str, Any],
    worker: dict[str, Any],
    items: Items,
    settings: Settings,
    config_map: str | None,
) -> str | None:
    """Mount a configMapRef source's key (from `config_map`, the job's copy, when given); the
    path the runner reads it at (None: no file)."""
    ref = items.config_map_ref
    if ref is None:
        return None
    volume = {
        "name": RESERVED_VOLUME_NAME,
        "configMap": {
            "name": config_map or ref.name,
            "items": [{"key": ref.key, "path": ref.key}],
        },
    }
    mount = {"name": RESERVED_VOLUME_NAME, "mountPath": settings.items_mount_path, "readOnly": True}
    _mount(pod, worker, volume, mount)
    return f"{settings.items_mount_path}/{ref.key}"


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _wire_output(
    pod: dict[str, Any], worker: dict[str, Any], output: Output, root: str
) -> list[dict[str, Any]]:
    """Give the worker the result store at `root` (its MICROTASK_OUTPUT_URL): mounts, env."""
    env: list[dict[str, Any]] = [{"name": ENV_OUTPUT_URL, "value": root}]
    if output.s3 is not None:
        s3 = output.s3
        if s3.endpoint is not None:
            env.append({"name": ENV_S3_ENDPOINT, "value": s3.endpoint})
        if s3.region is not None:
            env.append({"name": AWS_REGION, "value": s3.region})
        if s3.secret_name is not None:
            env.append(_secret_env(AWS_ACCESS_KEY_ID, s3.secret_name, AWS_ACCESS_KEY_ID))
            env.append(_secret_env(AWS_SECRET_ACCESS_KEY, s3.secret_name, AWS_SECRET_ACCESS_KEY))
            env.append(
                _secret_env(AWS_SESSION_TOKEN, s3.secret_name, AWS_SESSION_TOKEN, optional=True)
            )
        return env
    volume = output.volume
    assert volume is not None  # the model holds exactly one
    if volume.name is not None:
        _mount(pod, worker, None, {"name": volume.name, "mountPath": OUTPUT_MOUNT_PATH})
    else:
        claim = {
            "name": RESERVED_OUTPUT_VOLUME_NAME,
            "persistentVolumeClaim": {"claimName": volume.claim_name},
        }
        _mount(
            pod,
            worker,
            claim,
            {"name": RESERVED_OUTPUT_VOLUME_NAME, "mountPath": OUTPUT_MOUNT_PATH},
        )
    return env


def _store_root(mtj: MicrotaskJob, url: str | None) -> str | None:
    """The worker's MICROTASK_OUTPUT_URL: the store at `url`, else the job's own store."""
    output = mtj.spec.output
    if output is None:
        return None
    if url is not None:
        root = pod_store_root(output, url)
        if root is not None:
            return root
    own = pod_store_root(output, store_url(output, mtj.name))
    assert own is not None
    return own


def _wire_worker(
    pod: dict[str, Any],
    mtj: MicrotaskJob,
    plan: ShardPlan,
    *,
    settings: Settings,
    items: Items,
    items_config_map: str | None,
    name: str,
    store: str | None,
    source: Items | None,
) -> None:
    """Make the pod's first container the shard's worker: the runner around the user's command,
    the runner's environment (escaped: Kubernetes expands `$(VAR)` in values), the items, the
    result store, the GPU request, and the fields a reader looks for first, first."""
    spec = mtj.spec
    indexes = plan.indexes.to_compact()
    # The runner runs the user's command once per microtask.
    worker: dict[str, Any] = pod["containers"][0]
    user_command = [*(worker.pop("command", None) or []), *(worker.pop("args", None) or [])]
    worker["command"] = list(settings.runner_command)
    if spec.callable_ is None:
        worker["args"] = ["--", *user_command]
    items_file = _mount_items(pod, worker, items, settings, items_config_map)
    env: list[dict[str, Any]] = [
        {"name": ENV_JOB, "value": name},
        {"name": ENV_SHARD, "value": str(plan.shard_id)},
        {"name": ENV_ATTEMPT, "value": str(plan.attempt)},
        {"name": ENV_POOL, "value": plan.pool.value},
        {"name": ENV_NODE, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": ENV_INDEXES, "value": indexes},
    ]
    shard_items = runner_items(mtj, plan.indexes, items_file, source=source)
    env.append(
        {
            "name": ENV_ITEMS,
            "value": json.dumps(shard_items, separators=(",", ":"), ensure_ascii=False),
        }
    )
    if spec.timeouts.microtask_seconds is not None:
        env.append({"name": ENV_TIMEOUT_SECONDS, "value": _number(spec.timeouts.microtask_seconds)})
    if spec.callable_ is not None:
        env.append({"name": ENV_CALLABLE, "value": spec.callable_})
    retry = in_pod_env(retry_policy(spec.retry), plan.attempt)
    env.extend({"name": name, "value": value} for name, value in retry.items())
    root = _store_root(mtj, store)
    if root is not None:
        assert spec.output is not None
        env.extend(_wire_output(pod, worker, spec.output, root))
    env = [{**e, "value": escape_env_value(e["value"])} if "value" in e else e for e in env]
    ours = _RUNNER_ENV | {e["name"] for e in env}
    worker["env"] = [e for e in worker.get("env") or [] if e.get("name") not in ours] + env
    worker["terminationMessagePolicy"] = "File"
    gpu = spec.placement.gpu
    gpu_resource = gpu.resource_name or settings.gpu_resource_name
    _set_gpu_resources(worker, gpu_resource, gpu.count if plan.pool is Pool.GPU else None)
    # The fields a reader looks for first, first (the manifest is printed by `microtask plan`).
    first = ("name", "image", "command", "args", "env")
    pod["containers"][0] = {
        **{key: worker[key] for key in first if key in worker},
        **{key: value for key, value in worker.items() if key not in first},
    }


def build_job(
    mtj: MicrotaskJob,
    meta: OwnerMeta | Mapping[str, str],
    plan: ShardPlan,
    settings: Settings,
    *,
    store: str | None = None,
    source: Items | None = None,
    items_config_map: str | None = None,
) -> dict[str, Any]:
    """The `batch/v1` Job running `plan`'s shard of `mtj`.

    `meta` is the MicrotaskJob's name, namespace and uid as stored (the ownerReference needs the
    uid). `store` is the job's result store root as its status names it (`status.output.url`;
    None: the job's own store from `spec.output`); `source` holds a rerun's items
    (`status.source.items`); `items_config_map` is the job's copy of its configMapRef items
    (`status.items.configMap`), mounted instead of the ConfigMap the spec names. Raises
    ItemsError when the shard's items cannot be given to it.
    """
    spec = mtj.spec
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    items = effective_items(mtj, source)
    template = spec.template.model_dump(by_alias=True, exclude_unset=True)
    shard_labels = _shard_labels(name, uid, plan, spec.queue_name)
    indexes = plan.indexes.to_compact()

    pod_meta: dict[str, Any] = template.get("metadata") or {}
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **shard_labels}
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), labels.INDEXES: indexes}
    pod: dict[str, Any] = template["spec"]
    pod["restartPolicy"] = "Never"
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    _place(pod, mtj, plan, settings)

    _wire_worker(
        pod,
        mtj,
        plan,
        settings=settings,
        items=items,
        items_config_map=items_config_map,
        name=name,
        store=store,
        source=source,
    )
    _restrict(pod, settings)

    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
    }
    if spec.timeouts.shard_seconds is not None:
        job_spec["activeDeadlineSeconds"] = math.ceil(spec.timeouts.shard_seconds)
    if spec.queue_name:
        # Kueue admits a Job by unsuspending it; created running, it would bypass the queue.
        job_spec["suspend"] = True
    job_spec["template"] = {"metadata": pod_meta, "spec": pod}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, plan.shard_id),
            "namespace": namespace,
            "labels": dict(shard_labels),
            "annotations": {labels.INDEXES: indexes},
            "ownerReferences": [_owner_reference(name, uid)],
        },
        "spec": job_spec,
    }
