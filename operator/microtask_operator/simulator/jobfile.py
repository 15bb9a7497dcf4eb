"""Reading the MicrotaskJob to simulate into the core's `CoreSpec`.

TEMPORARY: this reads only the fields decisions depend on, with light checks. It is replaced by
the API model's loader and `to_core_spec` (full validation, one source of truth for defaults)
as soon as that lands; nothing outside this module depends on how the file is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.types import Accelerator, CoreSpec, RetryPolicy, SpeculationPolicy


class JobFileError(ValueError):
    """A MicrotaskJob file that cannot be simulated; `problems` lists each as `path: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Job:
    name: str
    spec: CoreSpec


def load_job(path: str | Path) -> Job:
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise JobFileError(source, [f"cannot read: {error.strerror or error}"]) from error
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise JobFileError(source, [f"not valid YAML: {error}"]) from error
    jobs = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == "MicrotaskJob"]
    if len(jobs) != 1:
        raise JobFileError(
            source, [f"expected one MicrotaskJob document, found {len(jobs)} of {len(documents)}"]
        )
    return parse_job(jobs[0], source)


def parse_job(data: Mapping[str, Any], source: str = "<job>") -> Job:
    problems: list[str] = []
    metadata = data.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    spec = data.get("spec")
    if not isinstance(spec, Mapping):
        raise JobFileError(source, ["spec: must be a mapping"])

    def section(key: str) -> Mapping[str, Any]:
        value = spec.get(key) or {}
        if not isinstance(value, Mapping):
            problems.append(f"spec.{key}: must be a mapping")
            return {}
        return value

    def number(where: str, value: Any, default: float, minimum: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            problems.append(f"{where}: must be a number >= {minimum:g}, got {value!r}")
            return default
        return float(value)

    def integer(where: str, value: Any, default: int, minimum: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            problems.append(f"{where}: must be an integer >= {minimum}, got {value!r}")
            return default
        return value

    total = _total(section("items"), problems)
    placement = section("placement")
    retry = section("retry")
    speculation = section("speculation")
    try:
        accelerator = Accelerator(placement.get("accelerator", "cpu"))
    except ValueError:
        got = placement["accelerator"]
        problems.append(f"spec.placement.accelerator: must be gpu, cpu or auto, got {got!r}")
        accelerator = Accelerator.CPU
    codes = retry.get("nonRetryableExitCodes") or []
    if not isinstance(codes, list) or not all(isinstance(c, int) for c in codes):
        problems.append("spec.retry.nonRetryableExitCodes: must be a list of integers")
        codes = []
    defaults = CoreSpec(total=0)
    core = CoreSpec(
        total=total,
        microtasks_per_shard=integer(
            "spec.microtasksPerShard", spec.get("microtasksPerShard"), 1, 1
        ),
        parallelism=integer("spec.parallelism", spec.get("parallelism"), 10, 1),
        accelerator=accelerator,
        fallback_after_seconds=number(
            "spec.placement.fallbackAfterSeconds",
            placement.get("fallbackAfterSeconds"),
            defaults.fallback_after_seconds,
            0,
        ),
        retry=RetryPolicy(
            max_attempts=integer("spec.retry.maxAttempts", retry.get("maxAttempts"), 3, 1),
            backoff_seconds=number(
                "spec.retry.backoffSeconds", retry.get("backoffSeconds"), 10.0, 0
            ),
            non_retryable_exit_codes=frozenset(codes),
            max_failed_microtasks=integer(
                "spec.retry.maxFailedMicrotasks", retry.get("maxFailedMicrotasks"), 0, 0
            ),
        ),
        speculation=SpeculationPolicy(
            enabled=bool(speculation.get("enabled", False)),
            slowdown_factor=number(
                "spec.speculation.slowdownFactor", speculation.get("slowdownFactor"), 3.0, 1.0
            ),
        ),
    )
    if problems:
        raise JobFileError(source, problems)
    return Job(name=str(name or "job"), spec=core)


def _total(items: Mapping[str, Any], problems: list[str]) -> int:
    sources = [key for key in ("range", "list", "configMapRef") if key in items]
    if len(sources) != 1:
        problems.append("spec.items: must have exactly one of range, list, configMapRef")
        return 0
    if sources[0] == "list":
        values = items["list"]
        if not isinstance(values, list):
            problems.append("spec.items.list: must be a list")
            return 0
        return len(values)
    if sources[0] == "configMapRef":
        problems.append(
            "spec.items.configMapRef: the simulator cannot read a ConfigMap; "
            "use an equivalent range of the same size"
        )
        return 0
    bounds = items["range"]
    if not isinstance(bounds, Mapping):
        problems.append("spec.items.range: must be a mapping with start and end")
        return 0
    start, end, step = bounds.get("start", 0), bounds.get("end"), bounds.get("step", 1)
    if not all(type(v) is int for v in (start, end, step)):
        problems.append("spec.items.range: start, end and step must be integers")
        return 0
    assert isinstance(start, int) and isinstance(end, int) and isinstance(step, int)
    if step <= 0 or end < start:
        problems.append("spec.items.range: needs end >= start and step > 0")
        return 0
    return len(range(start, end, step))
