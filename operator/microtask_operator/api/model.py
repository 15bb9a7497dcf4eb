"""The MicrotaskJob API (`microtask.dev/v1alpha1`) as pydantic models.

The models are the single source of truth: the CRD's OpenAPI schema is generated from them
(`api.crd`), `microtask validate` reports their errors, and the operator and the local executor
accept a MicrotaskJob only once it validates here. Field docstrings become the CRD's descriptions
(`kubectl explain microtaskjob.spec...`), so they are written for users.

Conventions:

* camelCase on the wire (aliases), snake_case in Python; input is accepted by alias only, so a
  snake_case key is an unknown field, as it would be for the API server.
* `extra="forbid"` everywhere except the free-form parts of the pod template and object metadata:
  a misspelt field is an error, not a silently ignored setting.
* strict types: `"10"` is not an integer and `yes` is not a number, as for the API server.
* cross-field problems are raised with `field_error`, which names the offending field so that
  messages point at `spec.items.range.end` rather than at `spec.items`.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from microtask_operator.api import limits

__all__ = [
    "BadNodes",
    "ConfigMapItems",
    "Container",
    "CpuPlacement",
    "EnvVar",
    "ExcludedNode",
    "GpuPlacement",
    "Items",
    "ItemsStatus",
    "MicrotaskJob",
    "MicrotaskJobSpec",
    "MicrotaskJobStatus",
    "NodeFailure",
    "ObjectMeta",
    "Placement",
    "PodSpec",
    "PodTemplate",
    "PoolTiming",
    "QueuedRetry",
    "RangeItems",
    "Rebalance",
    "Retry",
    "Speculation",
    "StatusCondition",
    "TemplateMetadata",
    "Timeouts",
    "Toleration",
    "field_error",
]

#: The error type of cross-field checks; `ctx["path"]` holds the offending field below the loc.
FIELD_ERROR_TYPE = "microtask_field"

#: Label prefix reserved for the operator's own labels on Jobs and pods.
RESERVED_LABEL_PREFIX = "microtask.dev/"
#: Volume the operator adds for `items.configMapRef`.
RESERVED_VOLUME_NAME = "microtask-items"
RESERVED_OUTPUT_VOLUME_NAME = "microtask-output"
_RESERVED_VOLUMES = {
    RESERVED_VOLUME_NAME: "configMapRef items",
    RESERVED_OUTPUT_VOLUME_NAME: "output.volume.claimName",
}
#: The runner writes its report here; the operator reads it as the termination message.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# Integers that survive a round trip through JSON (float64) unchanged.
_SAFE_INT = 2**53

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_NAME = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
_CONFIG_MAP_KEY = r"^[-._a-zA-Z0-9]+$"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_CALLABLE = rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*$"
_DIGEST = r"^sha256:[0-9a-f]{64}$"


def field_error(path: str | tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error about `path` (dotted, or a tuple of keys), relative to the validated model."""
    parts = tuple(path.split(".")) if isinstance(path, str) else path
    return PydanticCustomError(FIELD_ERROR_TYPE, "{message}", {"message": message, "path": parts})


# --- string formats -------------------------------------------------------------------------------


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _check_dns_label(value: str, max_length: int, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{what} must be at most {max_length} characters, not {len(value)}")
    if not re.fullmatch(_DNS_LABEL, value):
        raise ValueError(
            f"{what} {_shown(value)} must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_dns_subdomain(value: str, max_length: int = 253) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters, not {len(value)}")
    if not re.fullmatch(_DNS_SUBDOMAIN, value):
        raise ValueError(
            f"{_shown(value)} must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.'"
        )
    return value


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid Kubernetes label key (`[prefix/]name`), or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {_shown(key)} has an empty prefix"
    if prefix and (len(prefix) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, prefix)):
        return f"label key prefix {_shown(prefix)} must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not re.fullmatch(_LABEL_NAME, name):
        return (
            f"label key {_shown(key)}: the name part must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid Kubernetes label value, or None when it is."""
    if value and (len(value) > 63 or not re.fullmatch(_LABEL_NAME, value)):
        return (
            f"label value {_shown(value)} must be at most 63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def _check_label_key(value: str) -> str:
    problem = label_key_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        problem = label_key_problem(key) or label_value_problem(label)
        if problem:
            raise field_error((key,), problem)
    return value


def _check_job_name(value: str) -> str:
    return _check_dns_label(value, limits.MAX_NAME_LENGTH, "a MicrotaskJob name")


def _check_container_name(value: str) -> str:
    return _check_dns_label(value, 63, "a container name")


def _check_namespace(value: str) -> str:
    return _check_dns_label(value, 63, "a namespace")


def _check_queue_name(value: str) -> str:
    # Kueue copies the queue name into a label value: a DNS subdomain short enough for that.
    return _check_dns_subdomain(value, 63)


def _check_config_map_key(value: str) -> str:
    if not value or len(value) > 253 or value in {".", ".."}:
        raise ValueError("must be 1-253 characters and not '.' or '..'")
    if not re.fullmatch(_CONFIG_MAP_KEY, value):
        raise ValueError(f"{_shown(value)} may hold only letters, digits, '-', '_' and '.'")
    return value


def _check_callable(value: str) -> str:
    if not re.fullmatch(_CALLABLE, value):
        raise ValueError(
            f"{_shown(value)} must look like 'package.module:function' (Python identifiers)"
        )
    return value


def _schema(**extra: Any) -> Any:
    """Schema keywords for the CRD that pydantic does not derive (the check is a validator)."""
    return Field(json_schema_extra=extra)


#: `microtasksPerShard: auto`: shards sized from measured durations (see `ShardSize`).
AUTO = "auto"


def _check_shard_size(value: object) -> int | str:
    if value == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ValueError("must be a whole number or auto, not a boolean")
    if not isinstance(value, int):
        shown = _shown(value) if isinstance(value, str) else repr(value)
        raise ValueError(f"must be a whole number or auto, not {shown}")
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    if value > limits.MAX_MICROTASKS_PER_SHARD:
        raise ValueError(f"must be at most {limits.MAX_MICROTASKS_PER_SHARD}, not {value}")
    return value


# An int-or-string in the CRD, the one union a structural schema allows. The number keywords
# check numbers only and `pattern` strings only, so the API server refuses what the model does.
ShardSize = Annotated[
    int | str,
    PlainValidator(_check_shard_size),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 1,
            "maximum": limits.MAX_MICROTASKS_PER_SHARD,
            "pattern": f"^{AUTO}$",
        }
    ),
]


JobName = Annotated[
    str,
    _schema(minLength=1, maxLength=limits.MAX_NAME_LENGTH, pattern=_DNS_LABEL),
    AfterValidator(_check_job_name),
]
Namespace = Annotated[
    str, _schema(minLength=1, maxLength=63, pattern=_DNS_LABEL), AfterValidator(_check_namespace)
]
ContainerName = Annotated[
    str,
    _schema(minLength=1, maxLength=63, pattern=_DNS_LABEL),
    AfterValidator(_check_container_name),
]
DnsSubdomain = Annotated[
    str,
    _schema(minLength=1, maxLength=253, pattern=_DNS_SUBDOMAIN),
    AfterValidator(_check_dns_subdomain),
]
QueueName = Annotated[
    str,
    _schema(minLength=1, maxLength=63, pattern=_DNS_SUBDOMAIN),
    AfterValidator(_check_queue_name),
]
ConfigMapKey = Annotated[
    str,
    _schema(minLength=1, maxLength=253, pattern=_CONFIG_MAP_KEY),
    AfterValidator(_check_config_map_key),
]
LabelKey = Annotated[str, _schema(minLength=1, maxLength=317), AfterValidator(_check_label_key)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
Seconds = Annotated[float, Field(ge=0, le=limits.MAX_SECONDS)]
PositiveSeconds = Annotated[float, Field(gt=0, le=limits.MAX_SECONDS)]
DateTime = Annotated[str, _schema(format="date-time")]
Count = Annotated[int, Field(ge=0)]


# --- base classes ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    """A closed object: unknown fields are errors, types are not coerced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        use_attribute_docstrings=True,
    )


class _Open(_Strict):
    """An object whose other fields belong to Kubernetes (pod template parts, object metadata).

    Known fields are checked; the rest is kept as written and passed through.
    """

    model_config = ConfigDict(extra="allow")


# --- items ----------------------------------------------------------------------------------------


class RangeItems(_Strict):
    """Microtask i works on the number `start + i*step`, for the numbers of [start, end)."""

    start: int = Field(default=0, ge=-_SAFE_INT, le=_SAFE_INT)
    """First number (inclusive)."""
    end: int = Field(ge=-_SAFE_INT, le=_SAFE_INT)
    """End of the range (exclusive); greater than start."""
    step: int = Field(default=1, ge=1, le=_SAFE_INT)
    """Distance between consecutive numbers."""

    @property
    def count(self) -> int:
        """Number of microtasks (0 when end <= start, which validation rejects)."""
        return len(range(self.start, self.end, self.step))

    @model_validator(mode="after")
    def _check(self) -> RangeItems:
        if self.end <= self.start:
            raise field_error("end", f"must be greater than start ({self.start})")
        if self.count > limits.MAX_TOTAL_MICROTASKS:
            raise field_error(
                "end",
                f"the range holds {self.count:,} microtasks; at most "
                f"{limits.MAX_TOTAL_MICROTASKS:,} are allowed in one MicrotaskJob",
            )
        return self


class ConfigMapItems(_Strict):
    """Items from one key of a ConfigMap in the job's namespace (mounted read-only in the pods)."""

    name: DnsSubdomain
    """ConfigMap name."""
    key: ConfigMapKey
    """Key of the ConfigMap's `data` holding the items."""
    format: Literal["lines", "json"] = "lines"
    """`lines`: item i is line i (a final newline ends the last line); `json`: a JSON array."""


class FromJobItems(_Strict):
    """The items of another MicrotaskJob of the namespace, restricted to what it did not finish.

    A rerun: the microtasks keep their indexes and items from that job, and their records go to
    that job's result store, so `microtask results` sees one merged job.
    """

    name: JobName
    """The MicrotaskJob whose items are rerun; it must have finished (Succeeded or Failed)."""
    indexes: Literal["failed"] = "failed"
    """Which of its microtasks: `failed`, every one that did not succeed (failed or never run)."""


class Items(_Strict):
    """What the microtasks work on: exactly one of `range`, `list`, `configMapRef` or `fromJob`."""

    range_: RangeItems | None = Field(default=None, alias="range")
    """Numbers: microtask i gets `start + i*step`."""
    list_: list[Any] | None = Field(
        default=None, alias="list", min_length=1, max_length=limits.MAX_INLINE_ITEMS
    )
    """Inline items (strings, numbers, booleans or small objects): microtask i gets entry i.
    At most 10,000 entries and 256 KiB of JSON; larger lists belong in a ConfigMap."""
    config_map_ref: ConfigMapItems | None = None
    """Items from a ConfigMap key (lines of text or a JSON array)."""
    from_job: FromJobItems | None = None
    """Rerun what another MicrotaskJob did not finish, with its items, into its result store."""

    @property
    def source(self) -> Literal["range", "list", "configMapRef", "fromJob"]:
        """Which item source is set."""
        if self.range_ is not None:
            return "range"
        if self.list_ is not None:
            return "list"
        if self.from_job is not None:
            return "fromJob"
        return "configMapRef"

    @model_validator(mode="after")
    def _check(self) -> Items:
        chosen = [
            name
            for name, value in (
                ("range", self.range_),
                ("list", self.list_),
                ("configMapRef", self.config_map_ref),
                ("fromJob", self.from_job),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            found = ", ".join(chosen) if chosen else "none"
            raise field_error(
                (), f"set exactly one of range, list, configMapRef, fromJob (found: {found})"
            )
        if self.list_ is not None:
            _check_inline_items(self.list_)
        return self


def _check_inline_items(values: list[Any]) -> None:
    for i, value in enumerate(values):
        if value is None:
            raise field_error(("list", i), "must not be null")
    try:
        text = json.dumps(values, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise field_error("list", f"entries must be JSON values ({exc})") from None
    size = len(text.encode())
    if size > limits.MAX_INLINE_ITEMS_BYTES:
        raise field_error(
            "list",
            f"takes {size // 1024} KiB as JSON; at most {limits.MAX_INLINE_ITEMS_BYTES // 1024} "
            "KiB are allowed inline (put the items in a ConfigMap and use configMapRef)",
        )


def item_json_sizes(values: list[Any]) -> list[int]:
    """Bytes each inline item adds to a shard's MICROTASK_ITEMS (`"<index>":<json>,`)."""
    return [
        len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()) + len(str(i)) + 4
        for i, v in enumerate(values)
    ]


# --- pod template ---------------------------------------------------------------------------------


class EnvVar(_Open):
    """An environment variable of a container (other fields as in Kubernetes)."""

    name: str = Field(min_length=1)
    """Variable name; names starting with MICROTASK_ are reserved on the worker."""


class Container(_Open):
    """A container of the pod template (other fields as in Kubernetes)."""

    name: ContainerName
    """Container name."""
    image: str = Field(min_length=1)
    """Image; for the worker, it must provide the `microtask-runner` command (Python 3)."""
    command: list[str] | None = None
    """For containers[0], the worker: the program run for each microtask (with `args`);
    `$(MICROTASK_INDEX)` and `$(MICROTASK_ITEM)` are replaced per microtask. The operator runs
    the microtask runner as the entrypoint and passes this command to it."""
    args: list[str] | None = None
    """Arguments appended to `command`."""
    env: list[EnvVar] | None = None
    """Environment variables."""


class PodSpec(_Open):
    """The pod spec of the template: containers[0] is the worker (other fields as in Kubernetes)."""

    containers: list[Container] = Field(min_length=1)
    """The pod's containers; the first one is the worker."""
    restart_policy: Literal["Never"] | None = None
    """Always Never: the operator retries microtasks, not pods."""

    @model_validator(mode="after")
    def _check(self) -> PodSpec:
        names = [c.name for c in self.containers]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise field_error(("containers", i, "name"), f"duplicate container name {name!r}")
        worker = self.containers[0]
        for i, env in enumerate(worker.env or ()):
            if env.name.startswith("MICROTASK_"):
                raise field_error(
                    ("containers", 0, "env", i, "name"),
                    f"{env.name!r}: names starting with MICROTASK_ are set by the operator",
                )
        extra = worker.model_extra or {}
        if extra.get("terminationMessagePath", TERMINATION_MESSAGE_PATH) != (
            TERMINATION_MESSAGE_PATH
        ):
            raise field_error(
                ("containers", 0, "terminationMessagePath"),
                f"must be {TERMINATION_MESSAGE_PATH} (the runner reports there) or unset",
            )
        if extra.get("terminationMessagePolicy", "File") != "File":
            raise field_error(
                ("containers", 0, "terminationMessagePolicy"),
                "must be File (the runner's report is the termination message) or unset",
            )
        volumes = (self.model_extra or {}).get("volumes")
        if isinstance(volumes, list):
            for i, volume in enumerate(volumes):
                volume_name = volume.get("name") if isinstance(volume, dict) else None
                if volume_name in _RESERVED_VOLUMES:
                    raise field_error(
                        ("volumes", i, "name"),
                        f"{volume_name!r} is the volume the operator adds for "
                        f"{_RESERVED_VOLUMES[volume_name]}; choose another name",
                    )
        return self


class TemplateMetadata(_Open):
    """Labels and annotations for the pods (other fields as in Kubernetes)."""

    labels: Labels | None = None
    """Pod labels (the operator adds its own, under microtask.dev/)."""
    annotations: dict[str, str] | None = None
    """Pod annotations."""

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise field_error(
                    (key,), f"labels starting with {RESERVED_LABEL_PREFIX} are set by the operator"
                )
        return value


class PodTemplate(_Strict):
    """The pod template of every shard; containers[0] is the worker."""

    metadata: TemplateMetadata | None = None
    spec: PodSpec
    """The pod spec, as in Kubernetes; containers[0] is the worker."""


# --- placement ------------------------------------------------------------------------------------


class Toleration(_Strict):
    """A Kubernetes toleration."""

    key: str | None = None
    """Taint key (empty with operator Exists: every taint)."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (the default)."""
    value: str | None = None
    """Taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate (empty: all)."""
    toleration_seconds: int | None = None
    """NoExecute: how long the pod stays on the node once tainted."""

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.key:
            problem = label_key_problem(self.key)
            if problem:
                raise field_error("key", problem)
        if self.operator == "Exists" and self.value:
            raise field_error("value", "must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise field_error("operator", "must be Exists when key is empty")
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The toleration as a Kubernetes manifest fragment."""
        return self.model_dump(by_alias=True, exclude_none=True)


class GpuPlacement(_Strict):
    """How GPU shards are placed. Unset fields take the operator's defaults (NVIDIA conventions:
    resource nvidia.com/gpu, node label nvidia.com/gpu.present=true, taint nvidia.com/gpu)."""

    resource_name: LabelKey | None = None
    """Extended resource requested by the worker (default nvidia.com/gpu)."""
    count: int = Field(default=1, ge=1, le=limits.MAX_GPU_COUNT)
    """GPUs per shard (a limit on the worker container)."""
    node_label: LabelKey | None = None
    """Node label marking GPU nodes with the value "true" (default nvidia.com/gpu.present)."""
    node_selector: Labels = Field(default_factory=dict)
    """Extra node selector for GPU shards."""
    tolerations: list[Toleration] | None = None
    """Tolerations of GPU shards (default: tolerate the nvidia.com/gpu taint, NoSchedule)."""


class CpuPlacement(_Strict):
    """How CPU shards are placed."""

    node_selector: Labels = Field(default_factory=dict)
    """Extra node selector for CPU shards."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of CPU shards."""
    avoid_gpu_nodes: bool = True
    """Keep CPU shards off GPU-labelled nodes, so they do not take GPU nodes' CPUs."""


class Placement(_Strict):
    """Where shards run: the GPU pool, the CPU pool, or GPU first with a fallback to CPU."""

    accelerator: Literal["gpu", "cpu", "auto"] = "cpu"
    """gpu, cpu, or auto: GPU first, falling back to CPU when GPU shards stay unschedulable."""
    fallback_after_seconds: Seconds = 120.0
    """auto: a GPU shard unschedulable this long is moved to the CPU pool."""
    fallback_cooldown_seconds: Seconds = 300.0
    """auto: after a fallback, new shards go to the CPU pool for this long."""
    gpu: GpuPlacement = Field(default_factory=GpuPlacement)
    """Placement of GPU shards."""
    cpu: CpuPlacement = Field(default_factory=CpuPlacement)
    """Placement of CPU shards."""
    spread: bool = True
    """Spread the job's pods across nodes (topology spread on the hostname, best effort)."""


# --- output ---------------------------------------------------------------------------------------

#: Where the result store's volume is mounted in the worker (output.volume).
OUTPUT_MOUNT_PATH = "/var/run/microtask/output"
_S3_URL = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"
_RELATIVE_PATH = r"^$|^[^/\s][^\s]*$"
_ENDPOINT = r"^https?://[^\s/]+(/[^\s]*)?$"
_REGION = r"^[a-z0-9-]{1,64}$"


def _check_relative_path(value: str) -> str:
    if not re.fullmatch(_RELATIVE_PATH, value) or ".." in value.split("/"):
        raise ValueError(
            f"{_shown(value)} must be a relative folder (no leading /, no `..`, no spaces)"
        )
    return value


def _check_s3_url(value: str) -> str:
    if not re.fullmatch(_S3_URL, value):
        raise ValueError(f"{_shown(value)} must look like s3://bucket/prefix")
    return value


def _check_endpoint(value: str) -> str:
    if not re.fullmatch(_ENDPOINT, value):
        raise ValueError(f"{_shown(value)} must be an http:// or https:// URL")
    return value


def _check_region(value: str) -> str:
    if not re.fullmatch(_REGION, value):
        raise ValueError(f"{_shown(value)} is not a region name (e.g. us-east-1)")
    return value


class S3Output(_Strict):
    """S3-compatible object storage (AWS S3, MinIO, ...)."""

    url: Annotated[str, _schema(maxLength=1024, pattern=_S3_URL), AfterValidator(_check_s3_url)]
    """`s3://bucket/prefix`: the job's records and logs go under `prefix/<job name>/`."""
    endpoint: (
        Annotated[str, _schema(maxLength=1024, pattern=_ENDPOINT), AfterValidator(_check_endpoint)]
        | None
    ) = None
    """The service's URL, for storage other than AWS (e.g. `http://minio.storage:9000`)."""
    region: (
        Annotated[str, _schema(maxLength=64, pattern=_REGION), AfterValidator(_check_region)] | None
    ) = None
    """The bucket's region."""
    secret_name: DnsSubdomain | None = None
    """A Secret of the namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
    optionally AWS_SESSION_TOKEN), given to the workers; unset: the pods' own credentials."""


class VolumeOutput(_Strict):
    """A volume: one of the pod template's volumes, or a PersistentVolumeClaim."""

    name: ContainerName | None = None
    """A volume of spec.template.spec.volumes."""
    claim_name: DnsSubdomain | None = None
    """A PersistentVolumeClaim of the namespace (ReadWriteMany when shards run on several
    nodes)."""
    path: Annotated[
        str, _schema(maxLength=512, pattern=_RELATIVE_PATH), AfterValidator(_check_relative_path)
    ] = ""
    """A folder inside the volume; the job's records and logs go under `path/<job name>/`."""

    @model_validator(mode="after")
    def _check(self) -> VolumeOutput:
        if (self.name is None) == (self.claim_name is None):
            raise field_error((), "set exactly one of name (a template volume) or claimName")
        return self


class Output(_Strict):
    """The result store: where every microtask's record and every shard's log go."""

    s3: S3Output | None = None
    """S3-compatible object storage."""
    volume: VolumeOutput | None = None
    """A volume mounted into every worker."""

    @model_validator(mode="after")
    def _check(self) -> Output:
        if (self.s3 is None) == (self.volume is None):
            raise field_error((), "set exactly one of s3 or volume")
        return self


# --- policies -------------------------------------------------------------------------------------


class Retry(_Strict):
    """Retries of failed microtasks, one by one, packed with other failures into retry shards."""

    max_attempts: int = Field(default=3, ge=1, le=limits.MAX_ATTEMPTS)
    """Attempts per microtask, the first included."""
    backoff_seconds: Seconds = 10.0
    """Wait before the first retry; doubles with every further attempt."""
    max_backoff_seconds: Seconds = 300.0
    """Cap of the wait between attempts."""
    non_retryable_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] = Field(
        default_factory=list, max_length=256, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Exit codes that fail a microtask at once, without retries."""
    max_failed_microtasks: int = Field(default=0, ge=0, le=limits.MAX_FAILED_MICROTASKS)
    """Permanently failed microtasks tolerated before the job fails."""
    max_failed_fraction: float | None = Field(default=None, ge=0, le=1)
    """Permanently failed microtasks tolerated, as a fraction of all of them (0.05: up to 5%).
    With maxFailedMicrotasks too, the larger allowance applies."""
    retry_command_not_found: bool = False
    """Retry microtasks whose command was not found (exit 127) or cannot be executed (126); off,
    they fail at once: a retry would fail the same way."""
    in_pod: bool = True
    """A shard's pod runs each of its failed microtasks once more itself, backoffSeconds after
    it failed, when no more of its microtasks failed than succeeded (a node or program failing
    most of them is left to the operator). The second run is the next attempt. It saves a new
    pod's start-up per retry, and at the end of a job the wait for one. Off: every retry runs in
    a new shard."""

    @field_validator("non_retryable_exit_codes")
    @classmethod
    def _unique_codes(cls, value: list[int]) -> list[int]:
        for i, code in enumerate(value):
            if code in value[:i]:
                raise field_error((i,), f"duplicate exit code {code}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Retry:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise field_error(
                "maxBackoffSeconds", f"must be at least backoffSeconds ({self.backoff_seconds:g})"
            )
        return self


class Timeouts(_Strict):
    """Time limits; unset means no limit."""

    microtask_seconds: PositiveSeconds | None = None
    """Per microtask: a microtask running longer is killed and fails with exit code 124."""
    shard_seconds: PositiveSeconds | None = None
    """Per shard: the Job's activeDeadlineSeconds (rounded up); unreported microtasks retry."""
    job_seconds: PositiveSeconds | None = None
    """Whole MicrotaskJob: when exceeded, the job fails (reason DeadlineExceeded)."""
    dependencies_seconds: PositiveSeconds | None = None
    """How long to wait for every dependsOn to succeed, counted from the MicrotaskJob's
    creation; unset: no limit."""


class Speculation(_Strict):
    """Speculative copies of straggling shards: the first to finish wins, the other is deleted."""

    enabled: bool = False
    """Launch speculative copies of stragglers (with `microtasksPerShard: auto`, progress in
    view and retries allowed, a straggler caught early while work waits for slots gives its
    work back instead)."""
    slowdown_factor: float = Field(default=3.0, gt=1, le=1000)
    """A shard running this many times longer than the typical shard is a straggler."""
    min_samples: int = Field(default=5, ge=1, le=100_000)
    """Finished shards needed before anything counts as a straggler."""
    max_fraction: float = Field(default=0.1, gt=0, le=1)
    """Copies in flight at most, as a fraction of parallelism (at least one)."""


class BadNodes(_Strict):
    """Job-wide tracking of nodes that keep failing work."""

    enabled: bool = True
    """Track failures per node and avoid nodes that keep failing."""
    soft_after_failures: int = Field(default=2, ge=1, le=1000)
    """Failures on a node after which new shards prefer other nodes."""
    hard_after_failures: int = Field(default=4, ge=1, le=1000)
    """Failures on a node after which new shards never go there (until the exclusion expires)."""
    exclude_seconds: PositiveSeconds = 600.0
    """How long an exclusion lasts."""
    max_excluded_fraction: float = Field(default=0.5, ge=0, le=1)
    """Never exclude more than this fraction of a pool's ready nodes."""

    @model_validator(mode="after")
    def _check(self) -> BadNodes:
        if self.hard_after_failures < self.soft_after_failures:
            raise field_error(
                "hardAfterFailures",
                f"must be at least softAfterFailures ({self.soft_after_failures})",
            )
        return self


class Rebalance(_Strict):
    """Moving work away from trouble."""

    node_lost_grace_seconds: Seconds = 30.0
    """A shard whose node is NotReady this long is relaunched elsewhere (no attempt is spent);
    sooner at the job's end, when its work is all that is left and idle slots would finish it
    before the grace is over."""
    bad_nodes: BadNodes = Field(default_factory=BadNodes)
    """Job-wide tracking of nodes that keep failing work."""


# --- the spec and the object ----------------------------------------------------------------------


class MicrotaskJobSpec(_Strict):
    """A big batch of work, split into microtasks run in shards by Kubernetes Jobs."""

    items: Items
    """What the microtasks work on: exactly one of range, list, configMapRef."""
    microtasks_per_shard: ShardSize = AUTO
    """Microtasks run one after another by one Job/pod: a number, or auto (the default) to size
    shards from measured durations: small at first, then each running about targetShardSeconds
    on its pool, smaller again toward the end so the last shards finish together."""
    target_shard_seconds: PositiveSeconds | None = None
    """With microtasksPerShard auto: how long one shard should run (default 60). Longer shards
    pay pod start-up less often; shorter ones balance the end of the job better."""
    parallelism: int = Field(default=10, ge=1, le=limits.MAX_PARALLELISM)
    """Shards (Jobs) in flight at most."""
    template: PodTemplate
    """Pod template of the shards; containers[0] is the worker."""
    callable_: (
        Annotated[
            str,
            _schema(minLength=3, maxLength=512, pattern=_CALLABLE),
            AfterValidator(_check_callable),
        ]
        | None
    ) = Field(default=None, alias="callable")
    """Python mode: `module:function`, called in-process as `function(index, item)` by the
    runner; containers[0] then has no command."""
    placement: Placement = Field(default_factory=Placement)
    """Where shards run: GPU pool, CPU pool, or GPU with fallback to CPU."""
    retry: Retry = Field(default_factory=Retry)
    """Retries of failed microtasks."""
    timeouts: Timeouts = Field(default_factory=Timeouts)
    """Time limits per microtask, shard and job."""
    speculation: Speculation = Field(default_factory=Speculation)
    """Speculative copies of straggling shards."""
    rebalance: Rebalance = Field(default_factory=Rebalance)
    """Moving work away from lost and failing nodes."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the pods."""
    queue_name: QueueName | None = None
    """Kueue LocalQueue: Jobs are created suspended with the queue label; Kueue admits them."""
    suspend: bool = False
    """Stop launching shards and suspend those in flight; resume by setting it back to false."""
    depends_on: list[JobName] = Field(
        default_factory=list,
        max_length=limits.MAX_DEPENDS_ON,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """MicrotaskJobs of the same namespace that must succeed before this one starts."""
    keep_failed_shards: int = Field(default=3, ge=0, le=limits.MAX_KEEP_FAILED_SHARDS)
    """Failed shards' Jobs (and pods) kept for debugging; the others are deleted once harvested."""
    output: Output | None = None
    """The result store (S3 or a volume); unset: no records are kept on a cluster (`microtask
    run` keeps them in a local folder)."""

    @field_validator("depends_on")
    @classmethod
    def _unique_dependencies(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if name in value[:i]:
                raise field_error((i,), f"duplicate dependency {name!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> MicrotaskJobSpec:
        worker = self.template.spec.containers[0]
        worker_path: tuple[str | int, ...] = ("template", "spec", "containers", 0)
        if self.callable_ is not None:
            for name in ("command", "args"):
                if getattr(worker, name):
                    raise field_error(
                        (*worker_path, name),
                        "must not be set with callable: the runner calls the function in-process",
                    )
        elif not worker.command:
            raise field_error(
                (*worker_path, "command"),
                "required: the program run for each microtask (or set spec.callable to call a "
                "Python function)",
            )
        if self.output is not None and self.output.volume is not None:
            wanted = self.output.volume.name
            volumes = (self.template.spec.model_extra or {}).get("volumes") or []
            names = [v.get("name") for v in volumes if isinstance(v, dict)]
            if wanted is not None and wanted not in names:
                raise field_error(
                    ("output", "volume", "name"),
                    f"no volume {wanted!r} in template.spec.volumes"
                    + (f" (volumes: {', '.join(map(str, names))})" if names else ""),
                )
        if self.target_shard_seconds is not None and self.microtasks_per_shard != AUTO:
            raise field_error(
                "targetShardSeconds",
                "applies only with microtasksPerShard: auto (shards of "
                f"{self.microtasks_per_shard} hold that many microtasks, however long they run)",
            )
        if self.items.list_ is not None:
            # The largest shard the core can form holds microtasksPerShard microtasks (auto: as
            # many as fit, `api.items.largest_shard`); their items must fit one environment
            # string of the worker.
            sizes = sorted(item_json_sizes(self.items.list_), reverse=True)
            most = 1 if self.microtasks_per_shard == AUTO else int(self.microtasks_per_shard)
            worst = sum(sizes[:most]) + 16
            if worst > limits.MAX_SHARD_ITEMS_BYTES:
                raise field_error(
                    "microtasksPerShard",
                    f"the inline items of one shard can take {worst // 1024} KiB, more than the "
                    f"{limits.MAX_SHARD_ITEMS_BYTES // 1024} KiB a pod's environment can carry: "
                    "lower microtasksPerShard or put the items in a ConfigMap (configMapRef)",
                )
        return self


class ObjectMeta(_Open):
    """Object metadata (other fields as in Kubernetes)."""

    name: JobName
    """At most 45 characters, so that the names of the Jobs (`{name}-s{shard}`) stay valid."""
    namespace: Namespace | None = None
    labels: Labels | None = None
    annotations: dict[str, str] | None = None


# --- status ---------------------------------------------------------------------------------------


class InFlightBatch(_Strict):
    """Microtasks in shards in flight at one attempt (their level survives a vanished Job)."""

    attempt: Count
    """The attempt these microtasks are on."""
    indexes: str
    """Index set, e.g. `0-99,120`."""


class QueuedRetry(_Strict):
    """Failed microtasks waiting for their next attempt."""

    attempts: Count
    """Attempts these microtasks have had."""
    not_before: DateTime
    """Earliest time of the next attempt (backoff)."""
    indexes: str
    """Index set, e.g. `0-99,120`."""


class ExcludedNode(_Strict):
    """A node the job avoids for a while because work kept failing there."""

    node: str
    """Node name."""
    level: Literal["soft", "hard"]
    """soft: new shards prefer other nodes; hard: new shards never go there."""
    until: DateTime
    """When the exclusion expires."""
    failures: Count
    """Failures counted on the node."""


class NodeFailure(_Strict):
    """Failures of this job's shards on one node."""

    node: str
    """Node name."""
    failures: Count
    """Failures counted on the node."""
    shards: Count | None = None
    """Shards finished on the node since its first failure (its failure rate's denominator); a
    shard whose only failures await judgement counts once one of them is confirmed."""
    last_failure: DateTime
    """Time of the latest failure."""
    suspect: str | None = None
    """Indexes of microtasks whose failure on this node awaits judgement: they count against the
    node only if they later succeed elsewhere."""
    exclusions: Count | None = None
    """Times the node was excluded in this job. Each exclusion lasts twice as long as the one
    before (up to 8 times `excludeSeconds`); between them the node is on probation: a shard it
    fails counts against it at once, and retries keep away from it."""


class PoolTiming(_Strict):
    """Finished microtasks of a pool and the time they took."""

    count: Count
    """Finished microtasks."""
    seconds: float = Field(ge=0)
    """Their total running time."""
    shards: Count | None = None
    """Harvested shards that reported durations."""
    harvested: Count | None = None
    """All harvested shards."""
    failed_shards: Count | None = None
    """Failed shards counted against their node (the pool's failure rate): pods that died, and
    confirmed suspicions."""
    startup_seconds: float | None = Field(default=None, ge=0)
    """Seconds the pool's pods took before their first microtask, as last measured."""


class FailureKind(_Strict):
    """One kind of failure (an exit code or a pod-level reason), with a sample."""

    exit_code: int | None = None
    """The exit code (124 timeout, 126 not executable, 127 not found, 128+N signal N)."""
    reason: str
    """What it means, e.g. `exit 127 (command not found)`, `OOMKilled`, `timeout`."""
    attempts: Count
    """Failed attempts of this kind, retried or not."""
    microtasks: Count | None = None
    """Microtasks that failed permanently with it."""
    sample_index: Count
    """One microtask that failed this way."""
    message: str | None = None
    """Its error text (bounded)."""


class ResourceUsage(_Strict):
    """Pod time spent, weighted by what the pods requested (as Argo's resourcesDuration)."""

    cpu_seconds: float = Field(ge=0)
    """Run time of the shards' pods times their CPU request (1 core when unset)."""
    gpu_seconds: float = Field(ge=0)
    """Run time of GPU shards' pods times their GPU count."""
    wasted_cpu_seconds: float = Field(ge=0)
    """The part of cpuSeconds spent on work thrown away: failed attempts that were retried,
    losing speculative copies, shards lost with their node or cancelled."""
    wasted_gpu_seconds: float = Field(ge=0)
    """The same for gpuSeconds."""


class OutputStatus(_Strict):
    """Where this job's records and logs are."""

    url: str
    """`s3://bucket/prefix/<job>`, or `volume://<volume or claim>/<path>/<job>`."""


class SourceStatus(_Strict):
    """items.fromJob, resolved when the job started (fixed from then on)."""

    job: str
    """The MicrotaskJob whose items are rerun."""
    items: Items
    """Its item source (range, list or configMapRef)."""
    indexes: str
    """The indexes rerun (an index set)."""


class ItemsStatus(_Strict):
    """The item source as the job started with it (fixed from then on)."""

    digest: str = Field(pattern=_DIGEST)
    """`sha256:<hex>` of spec.items (canonical JSON) and, for configMapRef, of the ConfigMap
    key's content when the job started."""
    config_map: DnsSubdomain | None = None
    """configMapRef: the operator's immutable copy of the ConfigMap's items, which the shards
    mount (later edits of the ConfigMap do not reach the job)."""


class IndexSetPart(_Strict):
    """One ConfigMap holding part of the status's offloaded index sets."""

    name: DnsSubdomain
    """The ConfigMap (`<job>-indexes-<uid8>-<slot><n>`), owned by the MicrotaskJob."""
    digest: str = Field(pattern=_DIGEST)
    """`sha256:<hex>` of its data: a part rewritten or edited since is detected."""


class IndexSetsStatus(_Strict):
    """Where the exact index sets too large for the status are (they hold summaries instead)."""

    digest: str = Field(pattern=_DIGEST)
    """`sha256:<hex>` of the exact offloaded sets together."""
    config_maps: list[IndexSetPart] = Field(max_length=16)
    """The ConfigMaps that hold them, in order."""
    fields: list[str] = Field(max_length=256)
    """The offloaded fields, e.g. `failedIndexes`, `retryQueue.0.indexes`, `source.indexes`."""


class StatusCondition(_Strict):
    """A Kubernetes-style condition."""

    type: str
    """Ready, Complete, Failed, Invalid, Suspended, WaitingForDependencies, SpecChangeIgnored,
    ReconcileError or Recovered."""
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    """CamelCase reason, e.g. AllSucceeded, TooManyFailures, InvalidSpec."""
    message: str | None = None
    """Human-readable detail."""
    last_transition_time: DateTime | None = None
    """When the status last changed."""
    observed_generation: int | None = None
    """metadata.generation the condition was computed for."""


class MicrotaskJobStatus(_Strict):
    """Progress of a MicrotaskJob, written by the operator; index sets are strings (`0-99,120`).

    Large index sets are kept in owned ConfigMaps (`indexSets`), so the status stays small."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    observed_generation: int | None = None
    """metadata.generation of the spec the status reflects."""
    total: Count | None = None
    """Microtasks in the job."""
    succeeded: Count | None = None
    """Succeeded microtasks."""
    failed: Count | None = None
    """Permanently failed microtasks."""
    running: Count | None = None
    """Microtasks in shards in flight."""
    queued: Count | None = None
    """Failed microtasks waiting for a retry (backoff)."""
    attempts: Count | None = None
    """Attempts made so far, retries included."""
    shards_in_flight: Count | None = None
    """Shards (Jobs) in flight, speculative copies included."""
    speculative_copies: Count | None = None
    """Speculative copies in flight."""
    succeeded_indexes: str | None = None
    """Index set of the succeeded microtasks."""
    failed_indexes: str | None = None
    """Index set of the permanently failed microtasks."""
    retry_queue: list[QueuedRetry] | None = None
    """Failed microtasks waiting for a retry, by attempt count."""
    in_flight: list[InFlightBatch] | None = None
    """Microtasks in shards in flight, by attempt number."""
    retired_shards: str | None = None
    """Shard ids already harvested or given up (so a restart never counts one twice)."""
    kept_shards: str | None = None
    """Retired failed shards whose Jobs are kept for debugging (keepFailedShards)."""
    next_shard: Count | None = None
    """Id of the next shard to create."""
    rebalances: dict[str, Count] | None = None
    """Work moved, by reason."""
    excluded_nodes: list[ExcludedNode] | None = None
    """Nodes the job currently avoids."""
    node_failures: list[NodeFailure] | None = None
    """Failures of shards by node (bad-node tracking)."""
    durations: dict[str, PoolTiming] | None = None
    """Finished microtasks and their total time, by pool."""
    gpu_fallback_until: DateTime | None = None
    """auto: new shards go to the CPU pool until then."""
    wasted_seconds: float | None = Field(default=None, ge=0)
    """Pod time spent on work that was thrown away (lost nodes, losing speculative copies)."""
    not_run: Count | None = None
    """Microtasks that never ran (a job that stopped early)."""
    succeeded_after_retry: Count | None = None
    """Succeeded microtasks that needed more than one attempt."""
    failure_summary: list[FailureKind] | None = Field(default=None, max_length=10)
    """The most frequent kinds of failure, each with a count and a sample."""
    resources: ResourceUsage | None = None
    """CPU- and GPU-seconds spent, and the share thrown away."""
    output: OutputStatus | None = None
    """The result store of this job's records and logs."""
    source: SourceStatus | None = None
    """items.fromJob as resolved at the start."""
    items: ItemsStatus | None = None
    """The item source as started: its digest, and the copy of a configMapRef's items."""
    index_sets: IndexSetsStatus | None = None
    """Set when the index sets are too large to keep inline: the fields it names hold a summary
    (`0-99,120,... (+199,998 more ranges)`) and their exact sets are in the ConfigMaps."""
    start_time: DateTime | None = None
    """When the first shard was created."""
    completion_time: DateTime | None = None
    """When the job succeeded or failed."""
    message: str | None = None
    """One line for humans about the current state."""
    conditions: list[StatusCondition] | None = Field(
        default=None,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Ready, Complete, Failed, Invalid, Suspended, WaitingForDependencies, SpecChangeIgnored,
    ReconcileError, Recovered."""


class MicrotaskJob(_Strict):
    """A MicrotaskJob: a big batch of work split into microtasks, run as Kubernetes Jobs."""

    # Literal values repeat api.names.API_VERSION and KIND (a test keeps them in step).
    api_version: Literal["microtask.dev/v1alpha1"]
    kind: Literal["MicrotaskJob"]
    metadata: ObjectMeta
    spec: MicrotaskJobSpec
    """What to run and how."""
    status: MicrotaskJobStatus | None = None
    """Progress, written by the operator."""

    @property
    def name(self) -> str:
        return self.metadata.name

    @model_validator(mode="after")
    def _check(self) -> MicrotaskJob:
        if self.metadata.name in self.spec.depends_on:
            raise field_error("spec.dependsOn", "a MicrotaskJob cannot depend on itself")
        return self
