"""The resource registry: built-in resources, custom resources from CRDs, and discovery data.

Built-in resources carry the server-side behaviour an operator would meet in a cluster and
that matters to Microtask: Job defaulting (selector, controller labels, completions, backoff
limit) and immutability of a started Job's template, Pod defaulting and validation, Namespace
status. Everything else is stored as sent.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import Cause, CompiledSchema

__all__ = [
    "ALL_VERBS",
    "Registry",
    "ResourceDef",
    "builtin_resources",
]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class ResourceDef:
    """One served resource (group, version, plural) and what the server knows about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    schema: CompiledSchema | None = None
    crd_name: str | None = None  # set for custom resources
    preferred: bool = True
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """All versions of a resource share one storage, as in etcd."""
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """``jobs.batch``, ``pods``: the name used in the server's messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def is_custom(self) -> bool:
        """Whether the resource is defined by a CRD."""
        return self.crd_name is not None

    @property
    def has_status(self) -> bool:
        """Whether ``status`` is a subresource (then the main resource cannot write it)."""
        return "status" in self.subresources

    def discovery(self) -> list[dict[str, Any]]:
        """APIResourceList entries: the resource and its subresources."""
        main = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        for sub in self.subresources:
            verbs = {
                "status": ["get", "patch", "update"],
                "log": ["get"],
                "eviction": ["create"],
                "binding": ["create"],
                "finalize": ["update"],
                "scale": ["get", "patch", "update"],
            }.get(sub, ["get"])
            kind = {"eviction": "Eviction", "binding": "Binding", "scale": "Scale"}.get(
                sub, self.kind
            )
            entries.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
        return entries


def builtin_resources() -> list[ResourceDef]:
    """The built-in resources this emulator serves (what an operator and kopf touch)."""
    core = [
        ResourceDef(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            "namespace",
            ("ns",),
            (),
            ("status", "finalize"),
            ("create", "delete", "get", "list", "patch", "update", "watch"),
        ),
        ResourceDef(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            "pod",
            ("po",),
            ("all",),
            ("status", "log", "eviction", "binding"),
        ),
        ResourceDef("", "v1", "nodes", "Node", False, "node", ("no",), (), ("status",)),
        ResourceDef("", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceDef("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
        ResourceDef("", "v1", "secrets", "Secret", True, "secret"),
        ResourceDef(
            "", "v1", "services", "Service", True, "service", ("svc",), ("all",), ("status",)
        ),
        ResourceDef("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ("sa",)),
    ]
    others = [
        ResourceDef("batch", "v1", "jobs", "Job", True, "job", (), ("all",), ("status",)),
        ResourceDef(
            "batch", "v1", "cronjobs", "CronJob", True, "cronjob", ("cj",), ("all",), ("status",)
        ),
        ResourceDef(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            True,
            "deployment",
            ("deploy",),
            ("all",),
            ("status", "scale"),
        ),
        ResourceDef("events.k8s.io", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceDef("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
        ResourceDef(
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            "PriorityClass",
            False,
            "priorityclass",
            ("pc",),
        ),
        ResourceDef(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            True,
            "poddisruptionbudget",
            ("pdb",),
            (),
            ("status",),
        ),
        ResourceDef(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            "customresourcedefinition",
            ("crd", "crds"),
            ("api-extensions",),
            ("status",),
        ),
    ]
    return core + others


class Registry:
    """Served resources by (group, version, plural), with lookups by any of their names."""

    def __init__(self, resources: Iterable[ResourceDef] = ()) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceDef] = {}
        for res in resources:
            self.add(res)

    def add(self, res: ResourceDef) -> None:
        """Serve a resource (replacing a previous definition of the same gvr)."""
        self._by_gvr[(res.group, res.version, res.plural)] = res

    def remove_crd(self, crd_name: str) -> list[ResourceDef]:
        """Stop serving every version defined by a CRD; returns what was removed."""
        gone = [res for res in self._by_gvr.values() if res.crd_name == crd_name]
        for res in gone:
            del self._by_gvr[(res.group, res.version, res.plural)]
        return gone

    def get(self, group: str, version: str, plural: str) -> ResourceDef | None:
        """The served resource, or None (the server's 404)."""
        return self._by_gvr.get((group, version, plural))

    def all(self) -> list[ResourceDef]:
        """Every served resource."""
        return list(self._by_gvr.values())

    def groups(self) -> dict[str, list[str]]:
        """Non-core group -> served versions, preferred first."""
        result: dict[str, list[str]] = {}
        for res in self._by_gvr.values():
            if res.group:
                versions = result.setdefault(res.group, [])
                if res.version not in versions:
                    if res.preferred:
                        versions.insert(0, res.version)
                    else:
                        versions.append(res.version)
        return result

    def find(self, ref: str) -> ResourceDef:
        """Resolve ``pods``, ``po``, ``Pod``, ``jobs.batch``, ``batch/v1/jobs``, ``mtj`` ...

        Preferred versions win when a name is served in several versions. KeyError if unknown.
        """
        text = ref.strip()
        group: str | None = None
        version: str | None = None
        name = text
        if "/" in text:
            parts = text.split("/")
            if len(parts) == 3:
                group, version, name = parts
            elif len(parts) == 2 and parts[0] == "v1":
                group, version, name = "", "v1", parts[1]
            elif len(parts) == 2:
                group, name = parts
        elif "." in text:
            name, group = text.split(".", 1)
        lowered = name.lower()
        candidates = [
            res
            for res in self._by_gvr.values()
            if (group is None or res.group == group)
            and (version is None or res.version == version)
            and (
                lowered in (res.plural, res.singular, res.kind.lower())
                or lowered in res.short_names
            )
        ]
        if not candidates:
            raise KeyError(ref)
        # Prefer the core group for ambiguous names such as "events", then preferred versions.
        candidates.sort(key=lambda r: (r.group != "", not r.preferred, r.group, r.version))
        return candidates[0]


# --- built-in server-side behaviour ----------------------------------------------------------


def job_defaults(job: dict[str, Any], uid: str) -> None:
    """What the API server fills into a new batch/v1 Job (selector and controller labels)."""
    spec = job.setdefault("spec", {})
    name = job["metadata"]["name"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    if not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template = spec.setdefault("template", {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
        )
    pod_spec_defaults(spec.setdefault("template", {}).setdefault("spec", {}))


def pod_spec_defaults(spec: dict[str, Any]) -> None:
    """Pod spec defaults a real server applies (the ones code tends to read back)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if isinstance(container, dict):
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            image = str(container.get("image", ""))
            container.setdefault(
                "imagePullPolicy",
                "Always" if image.endswith(":latest") or ":" not in image else "IfNotPresent",
            )
            resources = container.setdefault("resources", {})
            # Requests default to limits when only limits are given (as the server does).
            limits = resources.get("limits") or {}
            if limits:
                requests = resources.setdefault("requests", {})
                for key, value in limits.items():
                    requests.setdefault(key, value)


def validate_pod_spec(spec: Any, path: str) -> list[Cause]:
    """The pod spec checks that operators trip over most often."""
    causes: list[Cause] = []
    if not isinstance(spec, Mapping):
        return [Cause("FieldValueRequired", "Required value", path)]
    containers = spec.get("containers")
    if not containers:
        causes.append(Cause("FieldValueRequired", "Required value", f"{path}.containers"))
        return causes
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{path}.containers[{index}]"
        if not isinstance(container, Mapping):
            causes.append(Cause("FieldValueTypeInvalid", "must be an object", where))
            continue
        name = container.get("name")
        if not name:
            causes.append(Cause("FieldValueRequired", "Required value", f"{where}.name"))
        elif name in seen:
            causes.append(
                Cause("FieldValueDuplicate", f'Duplicate value: "{name}"', f"{where}.name")
            )
        else:
            seen.add(name)
        if not container.get("image"):
            causes.append(Cause("FieldValueRequired", "Required value", f"{where}.image"))
        for env_index, env in enumerate(container.get("env") or []):
            if not isinstance(env, Mapping) or not env.get("name"):
                causes.append(
                    Cause("FieldValueRequired", "Required value", f"{where}.env[{env_index}].name")
                )
            elif "value" in env and not isinstance(env["value"], str):
                causes.append(
                    Cause(
                        "FieldValueTypeInvalid",
                        "Invalid value: env values must be strings",
                        f"{where}.env[{env_index}].value",
                    )
                )
    return causes


def validate_job(job: Mapping[str, Any]) -> list[Cause]:
    """batch/v1 Job validation: restart policy, counts, pod template."""
    spec = job.get("spec") or {}
    causes = validate_pod_spec((spec.get("template") or {}).get("spec"), "spec.template.spec")
    policy = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if policy not in ("Never", "OnFailure"):
        causes.append(
            Cause(
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                "spec.template.spec.restartPolicy",
            )
        )
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(key)
        if value is not None and (
            not isinstance(value, int) or value < (1 if key == "activeDeadlineSeconds" else 0)
        ):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {value}: must be greater than or equal to "
                    f"{1 if key == 'activeDeadlineSeconds' else 0}",
                    f"spec.{key}",
                )
            )
    return causes


def job_update_causes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Cause]:
    """A started Job's pod template and selector are immutable, as on a real server.

    A suspended Job that has never started may change its template's scheduling directives
    (node affinity, node selector, tolerations, labels, annotations, scheduling gates).
    """
    old_spec = old.get("spec") or {}
    new_spec = new.get("spec") or {}
    causes: list[Cause] = []
    for key in ("selector", "completionMode"):
        if old_spec.get(key) != new_spec.get(key):
            causes.append(Cause("FieldValueInvalid", "field is immutable", f"spec.{key}"))
    old_tpl = copy.deepcopy(old_spec.get("template") or {})
    new_tpl = copy.deepcopy(new_spec.get("template") or {})
    if old_tpl != new_tpl:
        mutable_now = bool(old_spec.get("suspend")) and not (old.get("status") or {}).get(
            "startTime"
        )
        if mutable_now:
            for tpl in (old_tpl, new_tpl):
                tpl.get("metadata", {}).pop("labels", None)
                tpl.get("metadata", {}).pop("annotations", None)
                for key in ("affinity", "nodeSelector", "tolerations", "schedulingGates"):
                    tpl.get("spec", {}).pop(key, None)
        if old_tpl != new_tpl:
            causes.append(
                Cause("FieldValueInvalid", "Invalid value: field is immutable", "spec.template")
            )
    return causes


def pod_update_causes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Cause]:
    """Pod spec updates may only change images, activeDeadlineSeconds and add tolerations."""
    old_spec = copy.deepcopy(old.get("spec") or {})
    new_spec = copy.deepcopy(new.get("spec") or {})
    for spec in (old_spec, new_spec):
        spec.pop("activeDeadlineSeconds", None)
        spec.pop("tolerations", None)
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            container.pop("image", None)
    # Binding a pod (setting nodeName once) is how the scheduler writes; allow that transition.
    if not old_spec.get("nodeName"):
        new_spec.pop("nodeName", None)
        old_spec.pop("nodeName", None)
    if old_spec != new_spec:
        return [
            Cause(
                "FieldValueForbidden",
                "Forbidden: pod updates may not change fields other than "
                "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                "`spec.activeDeadlineSeconds`,`spec.tolerations` "
                "(only additions to existing tolerations)",
                "spec",
            )
        ]
    return []
