"""The simulated cluster: nodes, workload model and node losses, read from a documented YAML file.

The format is described in `examples/clusters/README.md`. Parsing is strict (unknown keys are
errors) because a typo in a capacity-planning input silently changes the answer; every problem is
reported with its field path, all at once, so a user fixes a file in one go.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microtask_operator.core.types import Pool

CLUSTER_KIND = "SimulatedCluster"
DEFAULT_MAX_SIMULATED_SECONDS = 30 * 24 * 3600.0
#: Cluster files describe node groups: even a huge cluster takes a few KiB. Larger files are
#: refused before they are parsed.
MAX_CLUSTER_FILE_BYTES = 1024 * 1024


class ClusterFileError(ValueError):
    """A cluster file that cannot be used; `problems` lists each one as `path: message`."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Workload:
    """How long microtasks take and how they fail, independent of where they run."""

    seconds_per_microtask: Mapping[Pool, float] = field(
        default_factory=lambda: {Pool.GPU: 1.0, Pool.CPU: 4.0}
    )
    jitter: float = 0.2  # each microtask's size is a uniform factor in [1 - jitter, 1 + jitter]
    failure_rate: float = 0.0  # chance that one attempt of a microtask fails (transient)
    exit_codes: Mapping[int, float] = field(default_factory=lambda: {1: 1.0})  # code -> weight
    permanent_failure_rate: float = 0.0  # share of microtasks that fail on every attempt
    permanent_exit_code: int = 1
    crash_rate: float = 0.0  # chance, per microtask, that the pod dies while running it (OOM)
    straggler_rate: float = 0.0  # chance that a pod runs slowed down (noisy neighbour, bad disk)
    straggler_slowdown: float = 10.0
    pod_startup_seconds: float = 0.0  # from placement to the first microtask (pull, start)


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node. Rates left as None take the workload's value."""

    name: str
    pool: Pool
    slots: int  # shard pods that fit at once (GPUs on a GPU node: one GPU per shard pod)
    speed: float = 1.0
    failure_rate: float | None = None
    crash_rate: float | None = None
    straggler_rate: float | None = None
    straggler_slowdown: float | None = None
    bad: bool = False  # every microtask that runs here fails
    bad_exit_code: int = 1
    bad_seconds_per_microtask: float = 0.5  # a bad node fails fast, which is why it attracts work


@dataclass(frozen=True)
class NodeLoss:
    """A node going NotReady at `at` (seconds after the job starts), maybe deleted later."""

    node: str
    at: float
    deleted_after: float | None = None


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    workload: Workload = field(default_factory=Workload)
    node_losses: tuple[NodeLoss, ...] = ()
    description: str = ""
    max_simulated_seconds: float = DEFAULT_MAX_SIMULATED_SECONDS

    def slots(self, pool: Pool) -> int:
        return sum(node.slots for node in self.nodes if node.pool is pool)


def load_cluster(path: str | Path) -> ClusterSpec:
    """Read and validate a cluster file; ClusterFileError (and no other error) when unusable.

    Files over MAX_CLUSTER_FILE_BYTES are refused before anything is parsed, and the YAML gets the
    same guards as job files (binary data, alias bombs, deep nesting: a problem in a moment,
    never a traceback). Unlike job files, mapping keys may be numbers (`exitCodes: {137: 0.1}`).
    """
    import yaml

    # The job files' guards, shared rather than copied (they are private to the API loader).
    from microtask_operator.api.documents import decode, prescan, yaml_problem
    from microtask_operator.api.problems import Problem

    source = str(path)
    decoded = decode(_read_bounded(Path(path), source))
    if isinstance(decoded, Problem):
        raise ClusterFileError(source, [decoded.message])
    problem = prescan(decoded, yaml.SafeLoader)
    if problem is not None:
        raise ClusterFileError(source, [problem.message])
    try:
        documents = [d for d in yaml.safe_load_all(decoded) if d is not None]
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as error:
        raise ClusterFileError(source, [yaml_problem(error, decoded)]) from None
    if len(documents) > 1:
        raise ClusterFileError(
            source, [f"holds {len(documents)} YAML documents; a cluster file holds one"]
        )
    return parse_cluster(documents[0] if documents else None, source=source)


def _read_bounded(path: Path, source: str) -> bytes:
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode) and size > MAX_CLUSTER_FILE_BYTES:
                raise ClusterFileError(source, [_too_big(f"{size / 1024 / 1024:.1f} MiB")])
            data = f.read(MAX_CLUSTER_FILE_BYTES + 1)
    except IsADirectoryError:
        raise ClusterFileError(source, ["cannot read: is a directory"]) from None
    except OSError as error:
        raise ClusterFileError(source, [f"cannot read: {error.strerror or error}"]) from None
    if len(data) > MAX_CLUSTER_FILE_BYTES:
        raise ClusterFileError(source, [_too_big("more")])
    return data


def _too_big(size: str) -> str:
    limit = f"{MAX_CLUSTER_FILE_BYTES // 1024 // 1024} MiB"
    return f"the file is too large ({size}): a cluster file is at most {limit}"


def parse_cluster(data: Any, source: str = "<cluster>") -> ClusterSpec:
    """Validate an already-parsed cluster document."""
    reader = _Reader()
    cluster = reader.cluster(data)
    if reader.problems or cluster is None:
        raise ClusterFileError(source, reader.problems or ["empty cluster"])
    return cluster


_TOP_KEYS = {"kind", "name", "description", "workload", "nodes", "nodeLosses", "limits"}
_WORKLOAD_KEYS = {
    "secondsPerMicrotask",
    "jitter",
    "failureRate",
    "exitCodes",
    "permanentFailureRate",
    "permanentExitCode",
    "crashRate",
    "stragglerRate",
    "stragglerSlowdown",
    "podStartupSeconds",
}
_NODE_KEYS = {
    "name",
    "count",
    "pool",
    "gpus",
    "slots",
    "speed",
    "failureRate",
    "crashRate",
    "stragglerRate",
    "stragglerSlowdown",
    "bad",
    "badExitCode",
    "badSecondsPerMicrotask",
}
_LOSS_KEYS = {"node", "at", "deletedAfter"}
_LIMIT_KEYS = {"maxSimulatedSeconds"}


class _Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, keys: set[str]) -> Mapping[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping, got {_kind(value)}")
            return None
        for key in value:
            if key not in keys:
                hint = ", ".join(sorted(keys))
                self.problem(
                    f"{path}.{key}" if path else str(key), f"unknown field (known: {hint})"
                )
        return value

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> float:
        value = data.get(key)
        if value is None:
            return default
        where = f"{path}.{key}"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(where, f"must be a number, got {value!r}")
            return default
        if minimum is not None:
            if exclusive_minimum and value <= minimum:
                self.problem(where, f"must be > {minimum:g}, got {value!r}")
                return default
            if value < minimum:
                self.problem(where, f"must be >= {minimum:g}, got {value!r}")
                return default
        if maximum is not None and value > maximum:
            self.problem(where, f"must be <= {maximum:g}, got {value!r}")
            return default
        return float(value)

    def optional_rate(self, data: Mapping[str, Any], key: str, path: str) -> float | None:
        if data.get(key) is None:
            return None
        return self.number(data, key, path, 0.0, minimum=0.0, maximum=1.0)

    def integer(
        self, data: Mapping[str, Any], key: str, path: str, default: int, *, minimum: int
    ) -> int:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{path}.{key}", f"must be an integer, got {value!r}")
            return default
        if value < minimum:
            self.problem(f"{path}.{key}", f"must be >= {minimum}, got {value!r}")
            return default
        return value

    def exit_code(self, value: Any, where: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            self.problem(where, f"must be an exit code 1..255, got {value!r}")
            return None
        return value

    def cluster(self, data: Any) -> ClusterSpec | None:
        top = self.mapping(data, "", _TOP_KEYS)
        if top is None:
            return None
        if data is None:
            self.problem("(file)", "is empty")
            return None
        if top.get("kind") != CLUSTER_KIND:
            self.problem("kind", f"must be {CLUSTER_KIND!r}, got {top.get('kind')!r}")
        name = top.get("name", "cluster")
        if not isinstance(name, str) or not name:
            self.problem("name", "must be a non-empty string")
            name = "cluster"
        description = top.get("description") or ""
        if not isinstance(description, str):
            self.problem("description", "must be a string")
            description = ""
        workload = self.workload(top.get("workload"))
        nodes = self.nodes(top.get("nodes"), workload)
        losses = self.losses(top.get("nodeLosses"), {n.name for n in nodes})
        limits = self.mapping(top.get("limits"), "limits", _LIMIT_KEYS) or {}
        max_seconds = self.number(
            limits,
            "maxSimulatedSeconds",
            "limits",
            DEFAULT_MAX_SIMULATED_SECONDS,
            minimum=0.0,
            exclusive_minimum=True,
        )
        return ClusterSpec(
            name=name,
            description=description.strip(),
            nodes=tuple(nodes),
            workload=workload,
            node_losses=tuple(losses),
            max_simulated_seconds=max_seconds,
        )

    def workload(self, value: Any) -> Workload:
        path = "workload"
        data = self.mapping(value, path, _WORKLOAD_KEYS)
        if data is None:
            return Workload()
        defaults = Workload()
        seconds = dict(defaults.seconds_per_microtask)
        raw_seconds = data.get("secondsPerMicrotask")
        if raw_seconds is not None:
            where = f"{path}.secondsPerMicrotask"
            per_pool = self.mapping(raw_seconds, where, {p.value for p in Pool})
            for pool in Pool:
                if per_pool is not None:
                    seconds[pool] = self.number(
                        per_pool,
                        pool.value,
                        where,
                        seconds[pool],
                        minimum=0.0,
                        exclusive_minimum=True,
                    )
        exit_codes: dict[int, float] = dict(defaults.exit_codes)
        raw_codes = data.get("exitCodes")
        if raw_codes is not None:
            exit_codes = self.exit_code_weights(raw_codes, f"{path}.exitCodes")
        return Workload(
            seconds_per_microtask=seconds,
            jitter=self.number(data, "jitter", path, defaults.jitter, minimum=0.0, maximum=0.99),
            failure_rate=self.number(data, "failureRate", path, 0.0, minimum=0.0, maximum=0.99),
            exit_codes=exit_codes,
            permanent_failure_rate=self.number(
                data, "permanentFailureRate", path, 0.0, minimum=0.0, maximum=1.0
            ),
            permanent_exit_code=self.exit_code(
                data.get("permanentExitCode", defaults.permanent_exit_code),
                f"{path}.permanentExitCode",
            )
            or defaults.permanent_exit_code,
            crash_rate=self.number(data, "crashRate", path, 0.0, minimum=0.0, maximum=0.5),
            straggler_rate=self.number(data, "stragglerRate", path, 0.0, minimum=0.0, maximum=1.0),
            straggler_slowdown=self.number(
                data, "stragglerSlowdown", path, defaults.straggler_slowdown, minimum=1.0
            ),
            pod_startup_seconds=self.number(data, "podStartupSeconds", path, 0.0, minimum=0.0),
        )

    def exit_code_weights(self, value: Any, where: str) -> dict[int, float]:
        if isinstance(value, list):
            codes = [self.exit_code(v, f"{where}[{i}]") for i, v in enumerate(value)]
            weights = {code: 1.0 for code in codes if code is not None}
        elif isinstance(value, Mapping):
            weights = {}
            for key, weight in value.items():
                try:
                    code = self.exit_code(int(key), f"{where}.{key}")
                except (TypeError, ValueError):
                    self.problem(f"{where}.{key}", "must be an exit code 1..255")
                    continue
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                    self.problem(f"{where}.{key}", f"weight must be a number > 0, got {weight!r}")
                    continue
                if code is not None:
                    weights[code] = float(weight)
        else:
            self.problem(where, "must be a list of exit codes or a mapping code -> weight")
            return {1: 1.0}
        if not weights:
            self.problem(where, "must name at least one exit code")
            return {1: 1.0}
        return dict(sorted(weights.items()))

    def nodes(self, value: Any, workload: Workload) -> list[NodeSpec]:
        if not isinstance(value, list) or not value:
            self.problem("nodes", "must be a non-empty list of node groups")
            return []
        nodes: list[NodeSpec] = []
        seen: set[str] = set()
        for i, raw in enumerate(value):
            path = f"nodes[{i}]"
            data = self.mapping(raw, path, _NODE_KEYS)
            if data is None:
                continue
            name = data.get("name")
            if not isinstance(name, str) or not _valid_name(name):
                self.problem(
                    f"{path}.name", f"must be a DNS-style name (a-z, 0-9, -), got {name!r}"
                )
                continue
            try:
                pool = Pool(str(data.get("pool")))
            except ValueError:
                self.problem(f"{path}.pool", f"must be 'gpu' or 'cpu', got {data.get('pool')!r}")
                continue
            if pool is Pool.GPU:
                if "slots" in data:
                    self.problem(f"{path}.slots", "GPU nodes take `gpus` (one GPU per shard pod)")
                slots = self.integer(data, "gpus", path, 1, minimum=1)
            else:
                if "gpus" in data:
                    self.problem(f"{path}.gpus", "CPU nodes take `slots`, not `gpus`")
                slots = self.integer(data, "slots", path, 1, minimum=1)
            count = self.integer(data, "count", path, 1, minimum=1)
            bad = data.get("bad", False)
            if not isinstance(bad, bool):
                self.problem(f"{path}.bad", f"must be true or false, got {bad!r}")
                bad = False
            template = NodeSpec(
                name=name,
                pool=pool,
                slots=slots,
                speed=self.number(data, "speed", path, 1.0, minimum=0.0, exclusive_minimum=True),
                failure_rate=self.optional_rate(data, "failureRate", path),
                crash_rate=self.optional_rate(data, "crashRate", path),
                straggler_rate=self.optional_rate(data, "stragglerRate", path),
                straggler_slowdown=None
                if data.get("stragglerSlowdown") is None
                else self.number(data, "stragglerSlowdown", path, 1.0, minimum=1.0),
                bad=bad,
                bad_exit_code=self.exit_code(data.get("badExitCode", 1), f"{path}.badExitCode")
                or 1,
                bad_seconds_per_microtask=self.number(
                    data, "badSecondsPerMicrotask", path, 0.5, minimum=0.0, exclusive_minimum=True
                ),
            )
            if template.failure_rate is not None and template.failure_rate > 0.99:
                self.problem(f"{path}.failureRate", "must be <= 0.99 (use `bad: true`)")
            names = [name] if count == 1 else [f"{name}-{k}" for k in range(count)]
            for node_name in names:
                if node_name in seen:
                    self.problem(f"{path}.name", f"node {node_name!r} is defined twice")
                    continue
                seen.add(node_name)
                nodes.append(_with_name(template, node_name))
        del workload  # node rates default to the workload's at run time, not here
        return nodes

    def losses(self, value: Any, names: set[str]) -> list[NodeLoss]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem("nodeLosses", "must be a list")
            return []
        losses: list[NodeLoss] = []
        lost: set[str] = set()
        for i, raw in enumerate(value):
            path = f"nodeLosses[{i}]"
            data = self.mapping(raw, path, _LOSS_KEYS)
            if data is None:
                continue
            node = data.get("node")
            if not isinstance(node, str) or node not in names:
                self.problem(f"{path}.node", f"must name a node of `nodes`, got {node!r}")
                continue
            if node in lost:
                self.problem(f"{path}.node", f"node {node!r} is lost twice")
                continue
            lost.add(node)
            if data.get("at") is None:
                self.problem(f"{path}.at", "is required (seconds after the job starts)")
                continue
            deleted = data.get("deletedAfter")
            losses.append(
                NodeLoss(
                    node=node,
                    at=self.number(data, "at", path, 0.0, minimum=0.0),
                    deleted_after=None
                    if deleted is None
                    else self.number(data, "deletedAfter", path, 0.0, minimum=0.0),
                )
            )
        return sorted(losses, key=lambda loss: (loss.at, loss.node))


def _with_name(template: NodeSpec, name: str) -> NodeSpec:
    from dataclasses import replace

    return replace(template, name=name)


def _valid_name(name: str) -> bool:
    return (
        0 < len(name) <= 63
        and name[0].isalnum()
        and name[-1].isalnum()
        and all(c.islower() or c.isdigit() or c in "-." for c in name)
    )


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
