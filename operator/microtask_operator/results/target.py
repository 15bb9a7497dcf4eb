"""Whose results: a local run (found from its job file), a MicrotaskJob on a cluster, or a store.

`microtask results` and `microtask logs` name a job the way a user knows it:

* a job file that `microtask run` ran: its run folder (``--output``, else
  ``microtask-runs/<job>``) is the store, and its run.json holds the status;
* the name of a MicrotaskJob on the cluster of the current kubeconfig: the store is
  ``status.output.url``, the status is the object's, and shard logs come from the shard's pod
  while it exists;
* ``--store URL``: any store root (a copied folder, ``s3://bucket/prefix/<job>``); a folder that
  holds a run.json is a local run.

Every failure is a ``TargetError`` whose message is meant for the user. Kubernetes calls sit in
small functions (``read_job``, ``read_secret``, ``shard_pods``, ``open_pod_log``) so tests can
replace them one by one; the kubernetes client is imported only when a cluster is used.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from microtask_runner.contract import log_name
from microtask_runner.indexset import IndexSet

from ..api import indexsets
from ..core.conditions import Phase
from .stores import Store, StoreError, open_store

if TYPE_CHECKING:
    from ..kubecli.config import Connection

__all__ = [
    "JobStatus",
    "LogSource",
    "Target",
    "TargetError",
    "cluster_target",
    "local_target",
    "resolve_target",
    "store_target",
]

#: Connect and read timeouts of every Kubernetes call, in seconds.
REQUEST_TIMEOUT = (10, 60)
ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
#: Set in the environment: the user has S3 credentials of their own (boto3's default chain).
_OWN_CREDENTIALS = (ACCESS_KEY, "AWS_PROFILE")
#: Phases in which microtasks may still run (Suspended: they may again, once resumed).
_RUNNING_PHASES = (Phase.PENDING, Phase.RUNNING)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class TargetError(ValueError):
    """The job, its store or its status cannot be reached; the message says why and what to do."""


# ------------------------------------------------------------------ status


def _index_set(value: Any, what: str) -> IndexSet | None:
    if not isinstance(value, str):
        return None
    try:
        return IndexSet.from_compact(value)
    except ValueError as error:
        raise TargetError(f"the status's {what} is not an index set: {error}") from None


def _known(status: Mapping[str, Any], key: str, count_key: str) -> IndexSet | None:
    """An index set of the status: empty when its count is 0, None when the status lacks it."""
    found = _index_set(status.get(key), key)
    if found is None and status.get(count_key) in (0, None):
        return IndexSet.EMPTY
    return found


@dataclass(frozen=True)
class JobStatus:
    """What a job's status says about its indexes; None where it does not say."""

    phase: str | None = None
    #: the job's indexes (0..total-1, or the indexes a rerun took over)
    universe: IndexSet | None = None
    succeeded: IndexSet | None = None
    failed: IndexSet | None = None
    #: microtasks may still run (a job in progress, a local run not finished)
    running: bool = False

    @classmethod
    def from_status(cls, status: Mapping[str, Any], *, universe: Any = None) -> JobStatus:
        """From a MicrotaskJob's status (or a local run's, which has the same keys).

        A status whose index sets are offloaded must be joined with them first
        (`api.indexsets.load`; `cluster_target` does).
        """
        if indexsets.offloaded(status):
            raise TargetError(
                "the status's index sets are kept in ConfigMaps (status.indexSets) and were "
                "not read"
            )
        total = status.get("total")
        found = _index_set(universe, "universe")
        if found is None:
            source = status.get("source")
            if isinstance(source, Mapping):
                found = _index_set(source.get("indexes"), "source.indexes")
        if found is None and isinstance(total, int) and total >= 0:
            found = IndexSet.from_range(0, total)
        phase = status.get("phase")
        return cls(
            phase=phase if isinstance(phase, str) else None,
            universe=found,
            succeeded=_known(status, "succeededIndexes", "succeeded"),
            failed=_known(status, "failedIndexes", "failed"),
            running=phase in _RUNNING_PHASES,
        )

    @classmethod
    def from_run_state(cls, state: Mapping[str, Any]) -> JobStatus:
        """From a local run's run.json."""
        status = state.get("status")
        found = cls.from_status(
            status if isinstance(status, Mapping) else {}, universe=state.get("universe")
        )
        # endedAt is set when a run ends, also one stopped short of finishing the job
        running = not any(state.get(key) for key in ("finished", "interrupted", "endedAt"))
        return dataclasses.replace(found, running=running)

    def never_ran_candidates(self) -> IndexSet | None:
        """The job's indexes that did not succeed (None when the status cannot tell)."""
        if self.universe is None or self.succeeded is None:
            return None
        return self.universe - self.succeeded

    def explain_missing(self, index: int) -> str:
        """Why an index has no record, as far as the status tells."""
        if self.universe is not None and index not in self.universe:
            return (
                f"microtask {index} is not part of the job "
                f"(its indexes: {self.universe.format_bounded(80) or 'none'})"
            )
        if self.succeeded is not None and index in self.succeeded:
            return f"microtask {index} succeeded, but its record is not in the result store"
        if self.failed is not None and index in self.failed:
            return f"microtask {index} failed, but its record is not in the result store"
        if self.running:
            return (
                f"microtask {index} has no record yet: the job is still running "
                "(it is queued or running now)"
            )
        phase = f" (the job is {self.phase})" if self.phase else ""
        return f"microtask {index} never ran{phase}"


# ------------------------------------------------------------------ target


@dataclass(frozen=True)
class LogSource:
    """One place a shard's log may be: ``open()`` gives a readable stream, or None."""

    description: str
    open: Callable[[], IO[bytes] | None]


def _store_log(store: Store, job: str, shard: int) -> LogSource:
    name = log_name(job, shard)

    def open_log() -> IO[bytes] | None:
        try:
            return store.open(name)
        except FileNotFoundError:  # ObjectNotFound is one
            return None
        except (OSError, StoreError) as error:
            raise TargetError(f"cannot read {name} in {store.url}: {error}") from None

    return LogSource(f"{store.url.rstrip('/')}/{name}", open_log)


@dataclass(frozen=True)
class Target:
    """A job's result store, what its status says (when known), and where its logs are."""

    #: names the job for messages: "the local run in microtask-runs/x", 'MicrotaskJob "x"', ...
    description: str
    store: Store
    status: JobStatus | None = None
    #: the shard's pods' logs (a cluster), newest first, tried before the store's copy
    pod_logs: Callable[[str, int], Iterator[LogSource]] | None = field(default=None)

    def log_sources(self, job: str, shard: int) -> Iterator[LogSource]:
        """Where the log of a shard attempt may be, best first."""
        if self.pod_logs is not None:
            yield from self.pod_logs(job, shard)
        yield _store_log(self.store, job, shard)


def _open(url: str, **options: Any) -> Store:
    try:
        return open_store(url, **options)
    except StoreError as error:
        raise TargetError(str(error)) from None


def _run_status(folder: Path) -> JobStatus | None:
    from ..local.rundir import RunDir, RunDirError

    run = RunDir(folder)
    if not run.exists():
        return None
    try:
        return JobStatus.from_run_state(run.load_state())
    except RunDirError as error:
        raise TargetError(str(error)) from None


def _s3_options(
    *, endpoint: str | None, region: str | None, credentials: Mapping[str, str] | None
) -> dict[str, str]:
    """The options given to the S3 store; what is left out it takes from the environment."""
    options = {"endpoint": endpoint, "region": region}
    if credentials:
        options["access_key"] = credentials.get(ACCESS_KEY)
        options["secret_key"] = credentials.get(SECRET_KEY)
    return {key: value for key, value in options.items() if value}


def store_target(url: str, *, endpoint: str | None = None) -> Target:
    """Any store root: a folder (a local run when it holds run.json) or ``s3://...``."""
    if url.startswith("s3://"):
        return Target(
            url, _open(url, **_s3_options(endpoint=endpoint, region=None, credentials=None))
        )
    path = url.removeprefix("file://")
    folder = Path(path)
    if "://" in path:
        raise TargetError(f"{url}: not a result store (use a folder or s3://bucket/prefix)")
    if not folder.is_dir():
        raise TargetError(f"no result store at {url}: no such folder")
    status = _run_status(folder)
    description = f"the local run in {folder}" if status is not None else f"the store {folder}"
    return Target(description, _open(str(folder)), status)


def local_target(path: str, *, output: str | None = None, name: str | None = None) -> Target:
    """The local run of a job file, as `microtask run` would have placed it."""
    from ..api.loading import load_file
    from ..api.names import KIND
    from ..local.rundir import default_output

    loaded = load_file(path)
    names = [job.job.metadata.name for job in loaded.jobs]
    if not names:  # a file edited since it ran still names its job
        names = [d.name for d in loaded.documents if d.kind == KIND and d.name]
    if not names:
        why = f": {loaded.problems[0]}" if loaded.problems else ""
        raise TargetError(f"{path} holds no MicrotaskJob{why}")
    if name is not None:
        if name not in names:
            raise TargetError(
                f"{path} holds no MicrotaskJob named {name!r} (it holds: {', '.join(names)})"
            )
        job = name
    elif len(set(names)) != 1:
        raise TargetError(
            f"{path} holds several MicrotaskJobs ({', '.join(names)}); choose one with --name"
        )
    else:
        job = names[0]
    folder = Path(output) if output else default_output(job)
    # A folder without run.json (a run just starting) is read as a bare store.
    status = _run_status(folder)
    if status is None and not folder.is_dir():
        hint = "" if output else ", or pass --output DIR if it ran elsewhere"
        raise TargetError(
            f"no local run of {job!r} in {folder} (start one with `microtask run {path}`{hint})"
        )
    return Target(f"the local run of {job!r} in {folder}", _open(str(folder)), status)


# ------------------------------------------------------------------ cluster


def _api_error(error: Exception, *, what: str, connection: Connection) -> TargetError:
    """The user's message for a failed Kubernetes call (a 404 is the caller's to explain)."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        reason = getattr(error, "reason", "") or ""
        if status in (401, 403):
            return TargetError(
                f"not allowed to {what} in namespace {connection.namespace!r} "
                f"({status} {reason}); check your kubeconfig's user and its RBAC"
            )
        return TargetError(f"cannot {what}: the cluster answered {status} {reason}")
    host = getattr(getattr(connection.api, "configuration", None), "host", None) or "?"
    context = f"context {connection.context!r}, " if connection.context else ""
    cause = getattr(error, "reason", None)  # urllib3 wraps the socket's error
    detail = str(cause if isinstance(cause, Exception) else error) or type(error).__name__
    detail = detail.splitlines()[0]
    return TargetError(f"cannot reach the cluster ({context}server {host}): {detail}")


def connect(context: str | None, namespace: str | None) -> Connection:
    from ..kubecli.config import KubeconfigError
    from ..kubecli.config import connect as kube_connect

    try:
        return kube_connect(context, namespace)
    except KubeconfigError as error:
        raise TargetError(str(error)) from None


def read_job(connection: Connection, name: str) -> dict[str, Any] | None:
    """The MicrotaskJob's body as JSON values; None when there is none of that name."""
    from kubernetes import client

    from ..api.names import GROUP, PLURAL, VERSION

    try:
        body = client.CustomObjectsApi(connection.api).get_namespaced_custom_object(
            GROUP, VERSION, connection.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
        )
    except Exception as error:
        if getattr(error, "status", None) == 404:
            return None
        raise _api_error(error, what="read MicrotaskJobs", connection=connection) from None
    return body if isinstance(body, dict) else None


def read_secret(connection: Connection, name: str) -> dict[str, str] | None:
    """A Secret's data, decoded; None when there is none of that name."""
    from kubernetes import client

    try:
        secret = client.CoreV1Api(connection.api).read_namespaced_secret(
            name, connection.namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except Exception as error:
        status = getattr(error, "status", None)
        if status == 404:
            return None
        if status in (401, 403):
            raise TargetError(
                f"not allowed to read the Secret {name!r} (spec.output.s3.secretName) in "
                f"namespace {connection.namespace!r}; export the store's credentials instead: "
                f"{ACCESS_KEY}=... {SECRET_KEY}=..."
            ) from None
        raise _api_error(error, what=f"read the Secret {name!r}", connection=connection) from None
    data = secret.data or {}
    decoded: dict[str, str] = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value, validate=True).decode("utf-8").strip()
        except (ValueError, UnicodeDecodeError):
            continue
    return decoded


def read_config_map(connection: Connection, name: str) -> dict[str, str] | None:
    """A ConfigMap's data; None when there is none of that name."""
    from kubernetes import client

    try:
        found = client.CoreV1Api(connection.api).read_namespaced_config_map(
            name, connection.namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except Exception as error:
        if getattr(error, "status", None) == 404:
            return None
        raise _api_error(
            error, what=f"read the ConfigMap {name!r}", connection=connection
        ) from None
    return {str(k): str(v) for k, v in (found.data or {}).items()}


def job_status(connection: Connection, name: str, status: Mapping[str, Any]) -> JobStatus:
    """A MicrotaskJob's status, with its index sets read from their ConfigMaps when offloaded."""
    if indexsets.offloaded(status):
        try:
            status = indexsets.load(status, functools.partial(read_config_map, connection))
        except indexsets.IndexSetsError as error:
            raise TargetError(
                f'the index sets of MicrotaskJob "{name}" cannot be read: {error}'
            ) from None
    return JobStatus.from_status(status)


def shard_pods(connection: Connection, job: str, shard: int) -> list[tuple[str, str | None]]:
    """(pod name, worker container name) of a shard attempt's pods, newest first."""
    from kubernetes import client

    from .. import labels

    try:
        pods = client.CoreV1Api(connection.api).list_namespaced_pod(
            connection.namespace,
            label_selector=f"{labels.JOB}={job},{labels.SHARD}={shard}",
            _request_timeout=REQUEST_TIMEOUT,
        )
    except Exception as error:
        raise _api_error(error, what="list pods", connection=connection) from None
    found: list[tuple[str, str, str | None]] = []
    for pod in pods.items or []:
        if pod.metadata is None or not pod.metadata.name:
            continue
        created = str(pod.metadata.creation_timestamp or "")
        containers = (pod.spec.containers or []) if pod.spec else []
        found.append((created, pod.metadata.name, containers[0].name if containers else None))
    found.sort(reverse=True)
    return [(name, container) for _, name, container in found]


def open_pod_log(connection: Connection, pod: str, container: str | None) -> IO[bytes] | None:
    """A streaming read of a pod's log; None when the pod or its log is gone."""
    from kubernetes import client

    try:
        response = client.CoreV1Api(connection.api).read_namespaced_pod_log(
            pod,
            connection.namespace,
            container=container,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except Exception as error:
        if getattr(error, "status", None) in (400, 404):  # gone, or its container never started
            return None
        raise _api_error(error, what="read pod logs", connection=connection) from None
    # with _preload_content=False the client hands over its urllib3 response, a byte stream
    return cast("IO[bytes]", response)


def _pod_logs(connection: Connection) -> Callable[[str, int], Iterator[LogSource]]:
    def sources(job: str, shard: int) -> Iterator[LogSource]:
        for pod, container in shard_pods(connection, job, shard):
            yield LogSource(
                f"the log of pod {pod}", functools.partial(open_pod_log, connection, pod, container)
            )

    return sources


def _store_credentials(connection: Connection, s3: Mapping[str, Any]) -> Mapping[str, str] | None:
    if any(os.environ.get(variable) for variable in _OWN_CREDENTIALS):
        return None  # the store finds them itself (a session token and profiles included)
    secret = s3.get("secretName")
    if not isinstance(secret, str) or not secret:
        return None  # the default credential chain (an instance role, a config file)
    data = read_secret(connection, secret)
    if data is None:
        raise TargetError(
            f"the Secret {secret!r} (spec.output.s3.secretName) is not in namespace "
            f"{connection.namespace!r}; export the store's credentials instead: "
            f"{ACCESS_KEY}=... {SECRET_KEY}=..."
        )
    if not data.get(ACCESS_KEY) or not data.get(SECRET_KEY):
        raise TargetError(f"the Secret {secret!r} lacks the keys {ACCESS_KEY} and {SECRET_KEY}")
    return data


def _volume_advice(description: str, url: str, namespace: str, name: str) -> str:
    from ..api.model import OUTPUT_MOUNT_PATH

    # volume://<volume or claim:NAME>/<path>/<job>: the workers mount the volume itself
    volume, _, folder = url.removeprefix("volume://").partition("/")
    job = folder.rstrip("/").rpartition("/")[2] or "store"
    return (
        f"the result store of {description} is on a volume ({url}), which cannot be read from "
        f"here; copy it out of a pod that mounts {volume} (the workers mount it at "
        f"{OUTPUT_MOUNT_PATH}): kubectl cp -n {namespace} POD:{OUTPUT_MOUNT_PATH}/{folder} "
        f"./{job}, then add --store ./{job} (e.g. microtask results {name} --store ./{job})"
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def cluster_target(
    name: str,
    *,
    namespace: str | None = None,
    context: str | None = None,
    endpoint: str | None = None,
    connection: Connection | None = None,
    store_copy: str | None = None,
) -> Target:
    """A MicrotaskJob of the cluster (the current kubeconfig's, or ``connection``).

    ``store_copy`` reads the records from a copy of the job's store (a folder copied out of a
    volume, say) instead of the store the job names; status and pod logs still come from the
    cluster.
    """
    connection = connection or connect(context, namespace)
    body = read_job(connection, name)
    if body is None:
        raise TargetError(f'MicrotaskJob "{name}" not found in namespace "{connection.namespace}"')
    spec = _mapping(body.get("spec"))
    status = _mapping(body.get("status"))
    description = f'MicrotaskJob "{name}" (namespace "{connection.namespace}")'
    found_status = job_status(connection, name, status)
    if store_copy is not None:
        copy = store_target(store_copy, endpoint=endpoint)
        return Target(description, copy.store, found_status, _pod_logs(connection))
    url = _mapping(status.get("output")).get("url")
    if not isinstance(url, str) or not url:
        if not spec.get("output"):
            raise TargetError(
                f'MicrotaskJob "{name}" keeps no results: spec.output is not set, so its '
                "microtasks' records and logs were not stored"
            )
        raise TargetError(f'MicrotaskJob "{name}" has no result store yet (it has not started)')
    if url.startswith("volume://"):
        raise TargetError(_volume_advice(description, url, connection.namespace, name))
    if not url.startswith("s3://"):
        raise TargetError(f"the result store of {description} is {url}: not one this can read")
    s3 = _mapping(_mapping(spec.get("output")).get("s3"))
    options = _s3_options(
        endpoint=endpoint or s3.get("endpoint"),
        region=s3.get("region"),
        credentials=_store_credentials(connection, s3),
    )
    return Target(description, _open(url, **options), found_status, _pod_logs(connection))


def resolve_target(
    job: str | None,
    *,
    store: str | None = None,
    output: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    context: str | None = None,
    endpoint: str | None = None,
) -> Target:
    """The target a command line names: ``--store URL``, a job file, or a MicrotaskJob's name."""
    if store is not None:
        if job is None:
            return store_target(store, endpoint=endpoint)
        if os.path.exists(job):
            raise TargetError(
                "give either a job file or --store URL, not both (--output picks a local run)"
            )
        # A cluster's job whose store was copied out (a volume): its status from the cluster,
        # its records from the copy.
        return cluster_target(
            job, namespace=namespace, context=context, endpoint=endpoint, store_copy=store
        )
    if job is None:
        raise TargetError("name a job: a job file of a local run, a MicrotaskJob, or --store URL")
    if os.path.exists(job):
        if os.path.isdir(job):
            raise TargetError(f"{job} is a folder; to read a store folder, pass --store {job}")
        return local_target(job, output=output, name=name)
    if not _NAME.match(job) or job.endswith((".yaml", ".yml", ".json")):
        raise TargetError(f"{job}: no such file, and not the name of a MicrotaskJob")
    return cluster_target(job, namespace=namespace, context=context, endpoint=endpoint)
