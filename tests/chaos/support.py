"""The chaos suite's tools: a seed, kill points, an execution log, a chaos profile, operator runs.

Everything random comes from ``random.Random`` streams derived from one seed
(``MICROTASK_CHAOS_SEED``), so a failing run is repeated by running the same test with the seed it
printed. What cannot be repeated exactly is the machine's timing; the choices are the same.

* :func:`kill_points` - when to kill the operator, spread over a run;
* :class:`ExecutionLog` - every microtask's command appends a line to a host file, so executions
  are counted independently of the status the operator writes;
* :class:`ChaosProfile` and :class:`Chaos` - the fault proxy answering a share of the operator's
  requests with errors, holding some back and cutting its watches now and then;
* :class:`OperatorRuns` - successive operator processes on one cluster view, killed or stopped,
  whose logs end up in the message of any failure (:meth:`OperatorRuns.explain`);
* :class:`Deadline` and :class:`Findings` - a test's time budget for its waits, and problems
  gathered along a run so that one run reports every guarantee it broke.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from microtask_runner.contract import ENV_ATTEMPT, ENV_INDEX, ENV_ITEM, ENV_SHARD

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.faultproxy import ApiRequest, Fault, FaultProxy
from tests.integration.operator_harness import (
    PROBLEM,
    RunningOperator,
    microtask_job,
    running_operator,
)

T = TypeVar("T")

SEED_ENV = "MICROTASK_CHAOS_SEED"
DEFAULT_SEED = 20240611
# Lines of an operator run's log kept in a failure message (the end is where things went wrong),
# and of warnings and errors from the runs before.
LOG_TAIL_LINES = 150
PROBLEM_LINES = 30


def chaos_seed() -> int:
    """The seed of this run: ``MICROTASK_CHAOS_SEED``, or the fixed default."""
    text = os.environ.get(SEED_ENV, "").strip()
    if not text:
        return DEFAULT_SEED
    try:
        return int(text, 0)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV}={text!r}: not an integer") from None


def stream(seed: int, name: str) -> random.Random:
    """A random stream of its own for one purpose (``name``), derived from the seed.

    Each test and each kind of choice draws from its own stream, so adding a draw somewhere
    does not shift every choice after it.
    """
    return random.Random(f"{seed}/{name}")


def kill_points(
    seed: int, n: int, span: float, *, start: float = 0.02, end: float = 0.9
) -> list[float]:
    """``n`` increasing points in ``[start*span, end*span)``, one drawn in each of n equal strata.

    Strata spread the points over the whole run (no two kills bunched at the start, none after
    the end), and the draw within each stratum varies where in the operator's work a kill lands.
    """
    if n < 1 or span <= 0 or not 0 <= start < end <= 1:
        raise ValueError(f"kill_points: n={n}, span={span}, start={start}, end={end}")
    rng = stream(seed, f"kill-points/{n}/{span}")
    width = (end - start) * span / n
    return [start * span + (i + rng.random()) * width for i in range(n)]


class Deadline:
    """A test's time budget: waits take what is left, and fail with what they waited for."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.until - time.monotonic())

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        message: str,
        *,
        interval: float = 0.1,
        at_most: float = 1e9,
    ) -> T:
        """Poll ``predicate`` until truthy (returned); AssertionError when the budget runs out."""
        until = min(self.until, time.monotonic() + at_most)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= until:
                raise AssertionError(
                    f"waited {self.seconds - self.left():.0f}s of a {self.seconds:.0f}s budget "
                    f"for {message}; last value: {value!r}"
                )
            time.sleep(interval)


# --- what ran: an execution log independent of the status ---------------------------------------


@dataclass(frozen=True)
class Execution:
    """One line of the log: one start of one microtask."""

    index: int
    shard: int
    attempt: int
    item: str


@dataclass
class ExecutionLog:
    """A host file every microtask's command appends one line to as it starts.

    Our kubelet runs each pod's worker as a local process, so a host path is shared by all of
    them; lines written with O_APPEND (the shell's ``>>``) never interleave. ``fail_once`` marks
    indexes whose first run fails (exit 3) and later runs succeed: a marker file per index that
    the failing run removes. ``hold`` keeps the microtask of each index in it running until
    :meth:`release` (or a minute), so a test can disrupt a pod while a known microtask runs.
    """

    directory: Path
    sleep: float = 0.0

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("fail", "hold"):
            (self.directory / sub).mkdir(exist_ok=True)
        self.path.touch()

    @property
    def path(self) -> Path:
        return self.directory / "executions"

    def fail_once(self, indexes: Sequence[int]) -> None:
        for index in indexes:
            (self.directory / "fail" / str(index)).touch()

    def hold(self, indexes: Sequence[int]) -> None:
        for index in indexes:
            (self.directory / "hold" / str(index)).touch()

    def release(self, indexes: Sequence[int] | None = None) -> None:
        held = self.directory / "hold"
        for marker in list(held.iterdir()):
            if indexes is None or int(marker.name) in indexes:
                marker.unlink(missing_ok=True)

    def command(self) -> list[str]:
        """The worker's command: log the start, wait while held, fail once if marked, sleep."""
        log = shlex.quote(str(self.path))
        fail = shlex.quote(str(self.directory / "fail"))
        hold = shlex.quote(str(self.directory / "hold"))
        # `$NAME` is the shell's; the kubelet expands only `$(NAME)`, which this never writes.
        script = [
            f'echo "${ENV_INDEX} ${ENV_SHARD} ${ENV_ATTEMPT} ${ENV_ITEM}" >> {log}',
            "i=0",
            f'while [ -e {hold}/"${ENV_INDEX}" ] && [ "$i" -lt 600 ]; do',
            "  sleep 0.1; i=$((i+1))",
            "done",
            f'if rm {fail}/"${ENV_INDEX}" 2>/dev/null; then exit 3; fi',
        ]
        if self.sleep:
            script.append(f"sleep {self.sleep:g}")
        return ["sh", "-c", "\n".join(script)]

    def executions(self) -> list[Execution]:
        found = []
        for line in self.path.read_text().splitlines():
            index, shard, attempt, item = [*line.split(" ", 3), ""][:4]
            found.append(Execution(int(index), int(shard), int(attempt), item))
        return found

    def count(self) -> int:
        with self.path.open("rb") as handle:
            return sum(1 for _ in handle)

    def per_index(self) -> Counter[int]:
        return Counter(e.index for e in self.executions())

    def of_shards(self, shards: set[int]) -> list[Execution]:
        return [e for e in self.executions() if e.shard in shards]


# --- a chaos profile for the fault proxy --------------------------------------------------------


@dataclass(frozen=True)
class ChaosProfile:
    """What share of the operator's requests fail, how, and how often its watches are cut.

    Requests are judged by class (writes: create/update/patch/delete; reads: get/list/watch).
    Errors are answered by the proxy without reaching the API server, so the cluster is never
    changed by a request the operator saw fail.
    """

    write_error_rate: float = 0.15
    read_error_rate: float = 0.05
    write_codes: tuple[int, ...] = (409, 429, 500)
    read_codes: tuple[int, ...] = (429, 500)
    delay_rate: float = 0.05
    max_delay_seconds: float = 0.8
    # Seconds between watch cuts, drawn uniformly from this range; None: no cuts.
    watch_cut_every: tuple[float, float] | None = (3.0, 8.0)
    retry_after_seconds: int = 1

    def decide(self, seed: int, request: ApiRequest, ordinal: int) -> Fault | None:
        """The fault for the ``ordinal``-th request of its class, or None (forwarded untouched).

        Drawn from a stream of its own per (verb, resource, ordinal), so the n-th status patch
        meets the same fate in every run of a seed, however requests of other kinds interleave.
        """
        if not request.resource:
            return None  # discovery and /version: kopf needs them to start at all
        rng = random.Random(
            f"{seed}/{request.verb}/{request.resource}/{request.subresource}/{ordinal}"
        )
        rate, codes = (
            (self.write_error_rate, self.write_codes)
            if request.is_write
            else (self.read_error_rate, self.read_codes)
        )
        if rng.random() < rate:
            code = rng.choice(codes)
            retry_after = self.retry_after_seconds if code == 429 else None
            return Fault(code, retry_after=retry_after)
        if request.verb != "watch" and rng.random() < self.delay_rate:
            return Fault(None, delay=rng.uniform(0.05, self.max_delay_seconds))
        return None


@dataclass
class Chaos:
    """A :class:`ChaosProfile` at work on one fault proxy (a context manager)."""

    proxy: FaultProxy
    profile: ChaosProfile
    seed: int
    injected: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    delayed: int = 0
    cuts: int = 0
    _ordinals: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _cutter: threading.Thread | None = None

    def _choose(self, request: ApiRequest) -> Fault | None:
        key = (request.verb, request.resource, request.subresource)
        with self._lock:
            ordinal = self._ordinals[key]
            self._ordinals[key] += 1
            fault = self.profile.decide(self.seed, request, ordinal)
            if fault is not None and fault.code is not None:
                self.injected[(request.verb, request.resource, fault.code)] += 1
            elif fault is not None:
                self.delayed += 1
        return fault

    def _cut_now_and_then(self, every: tuple[float, float]) -> None:
        rng = stream(self.seed, "watch-cuts")
        while not self._stop.wait(rng.uniform(*every)):
            with contextlib.suppress(RuntimeError):  # the proxy stopped under us
                self.cuts += self.proxy.cut_watches(abort=True)

    def __enter__(self) -> Chaos:
        self.proxy.set_chooser(self._choose)
        if self.profile.watch_cut_every is not None:
            self._cutter = threading.Thread(
                target=self._cut_now_and_then,
                args=(self.profile.watch_cut_every,),
                name="chaos-watch-cuts",
                daemon=True,
            )
            self._cutter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._cutter is not None:
            self._cutter.join(10)
        self.proxy.set_chooser(None)

    def summary(self) -> str:
        errors = sum(self.injected.values())
        by_code = Counter[int]()
        for (_, _, code), n in self.injected.items():
            by_code[code] += n
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(by_code.items()))
        where = ", ".join(
            f"{verb} {resource} {code}: {n}"
            for (verb, resource, code), n in sorted(self.injected.items())
        )
        return (
            f"{errors} errors injected ({codes}; {where}), {self.delayed} delayed, "
            f"{self.cuts} watches cut"
        )


# --- the operator, run after run ----------------------------------------------------------------


class OperatorRuns:
    """Successive operator processes on one cluster view, and what they logged.

    ``start`` launches one (waiting until it serves metrics), ``kill`` SIGKILLs it, ``stop``
    ends it with SIGTERM; logs of every run are kept for :meth:`explain`.
    """

    def __init__(self, cluster: Cluster, **options: Any) -> None:
        self.cluster = cluster
        env = dict(options.pop("env", None) or {})
        if os.environ.get("PYTHONPATH"):
            # The operator runs the code the tests import, wherever that is.
            env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
        self.options = {**options, "env": env}
        self.runs: list[RunningOperator] = []
        self._stack: ExitStack | None = None
        self.kills = 0

    @property
    def current(self) -> RunningOperator | None:
        return self.runs[-1] if self._stack is not None else None

    def start(self) -> RunningOperator:
        if self._stack is not None:
            raise RuntimeError("an operator is already running")
        stack = ExitStack()
        op = stack.enter_context(running_operator(self.cluster, **self.options))
        self._stack = stack
        self.runs.append(op)
        return op

    def kill(self) -> None:
        """SIGKILL the running operator: no clean-up, no last status write."""
        op = self.current
        if op is None:
            raise RuntimeError("no operator is running")
        op.kill()
        self.kills += 1
        self._close()

    def stop(self) -> None:
        """SIGTERM, as a rolling update does (no-op when none runs)."""
        if self.current is not None:
            self._close()

    def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> OperatorRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def problems(self) -> list[str]:
        return [line for op in self.runs for line in op.problems()]

    def logs(self, tail: int = LOG_TAIL_LINES) -> str:
        """The end of the last two runs' logs, and what the runs before them complained of."""
        parts = []
        for number, op in enumerate(self.runs, 1):
            try:
                lines = op.log().splitlines()
            except OSError as error:
                lines = [f"(log unreadable: {error})"]
            if number < len(self.runs) - 1:
                problems = [line for line in lines if PROBLEM.match(line)]
                parts.append(f"--- operator run {number}: {len(problems)} problems ---")
                parts.extend(problems[-PROBLEM_LINES:])
                continue
            cut = f" (last {tail} of {len(lines)} lines)" if len(lines) > tail else ""
            parts.append(f"--- operator run {number}{cut} ---")
            parts.extend(lines[-tail:])
        return "\n".join(parts)

    @contextlib.contextmanager
    def explain(self, seed: int, facts: Callable[[], str] = lambda: "") -> Iterator[None]:
        """Re-raise any failure inside with the seed, ``facts()`` and the operators' logs."""
        try:
            yield
        except (AssertionError, TimeoutError) as error:
            try:
                context = facts()
            except Exception as inner:  # the facts are a courtesy; the failure is the news
                context = f"(facts unavailable: {inner!r})"
            raise AssertionError(
                f"{error}\n\nchaos seed {seed} (rerun with {SEED_ENV}={seed})\n{context}\n"
                f"{self.logs()}"
            ) from error


# --- small shared pieces -------------------------------------------------------------------------


class Findings:
    """Problems gathered along a run, asserted together at its end."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, ok: object, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def attempt(self, what: str, step: Callable[[], Any]) -> Any:
        """Run a step; a failure is a finding and the run goes on (None is returned)."""
        try:
            return step()
        except AssertionError as error:
            self.problems.append(f"{what}: {str(error).splitlines()[0]}")
            return None

    def assert_none(self) -> None:
        assert not self.problems, "\n".join(f"- {p}" for p in self.problems)


def wait_executions(log: ExecutionLog, deadline: Deadline, n: int) -> None:
    deadline.wait_for(lambda: log.count() >= n, f"{n} executions")


def chaos_job(name: str, log: ExecutionLog, **spec: Any) -> dict[str, Any]:
    """A MicrotaskJob whose microtasks write to ``log`` (see :func:`microtask_job`)."""
    return microtask_job(name, command=log.command(), **spec)


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((cluster.get("microtaskjobs", name) or {}).get("status") or {})


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def created_jobs(cluster: Cluster, name: str) -> list[str]:
    """Names of the Jobs the operator created for ``name``, from the audit log, in order.

    A 201 is a create. So is a create the API server answered 504 (or 500) with no 201 for that
    name anywhere: a kill that drops the operator's connection cancels the request while the Job
    is being stored, and the API server then records a timeout for a Job it did store. A second
    create of a name that exists is a 409, so a name with two 201s was created twice.
    """
    answered = [
        (str((e.get("objectRef") or {}).get("name")), (e.get("responseStatus") or {}).get("code"))
        for e in cluster.request_list("create", "jobs", namespace=cluster.namespace)
        if str((e.get("objectRef") or {}).get("name", "")).startswith(f"{name}-s")
    ]
    stored = {n for n, code in answered if code == 201}
    cut_short = [n for n, code in answered if code in (500, 504) and n not in stored]
    return [n for n, code in answered if code == 201] + list(dict.fromkeys(cut_short))


def wait_finished(
    cluster: Cluster,
    name: str,
    deadline: Deadline,
    phases: tuple[str, ...] = ("Succeeded", "Failed"),
    *,
    at_most: float = 1e9,
    watch: Callable[[dict[str, Any]], None] = lambda status: None,
) -> dict[str, Any]:
    """The status once the phase is one of ``phases``; ``watch`` sees every status polled."""

    def done() -> dict[str, Any] | None:
        status = status_of(cluster, name)
        watch(status)
        return status if status.get("phase") in phases else None

    return deadline.wait_for(done, f"{name} to reach {phases}", interval=0.2, at_most=at_most)


def shard_pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return cluster.list("pods", labels=f"microtask.dev/job={name}")
