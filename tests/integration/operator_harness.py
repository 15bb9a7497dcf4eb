"""The operator as in production: a ``microtask operator`` process with deploy/'s ServiceAccount.

`running_operator(cluster)` starts it with fast timings, its kubeconfig holding a token of the
ServiceAccount from deploy/ (so the real authorizer enforces deploy/'s RBAC) and pointing at the
test's fault proxy. The handle reads its Prometheus endpoint and its log, so tests can fail on any
warning or error it logged.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness.cluster import Cluster
from tests.integration.harness.controlplane import free_port

OPERATOR = Path(sys.executable).with_name("microtask")
FAST = {"resync_seconds": 1.0, "debounce_seconds": 0.05}
# Lines of the operator's log at WARNING or above: `%(asctime)s %(levelname)s %(name)s: ...`.
PROBLEM = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum of the samples of ``name`` with these labels (0 when absent)."""
        wanted = dict(labels or {})
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items()):
                    total += float(s.value)
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def problems(self) -> list[str]:
        """Warnings, errors and tracebacks the operator logged."""
        lines = self.log().splitlines()
        return [line for line in lines if PROBLEM.match(line) or line.startswith("Traceback")]

    def assert_clean(self, allow: Iterable[str | re.Pattern[str]] = ()) -> None:
        """Fail if the operator logged a warning or an error (except the ``allow``-ed ones)."""
        patterns = [re.compile(re.escape(a)) if isinstance(a, str) else a for a in allow]
        bad = [line for line in self.problems() if not any(p.search(line) for p in patterns)]
        if bad:
            raise AssertionError(f"the operator logged {len(bad)} problem(s):\n" + "\n".join(bad))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError("the operator did not stop within 20 s of SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under the operator's pod."""
        self.process.kill()
        self.process.wait(10)


@contextmanager
def running_operator(
    cluster: Cluster,
    *,
    namespaces: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
    kubeconfig: Path | None = None,
    resync_seconds: float = 1.0,
    debounce_seconds: float = 0.05,
    startup_timeout: float = 30.0,
) -> Iterator[RunningOperator]:
    """Run the operator (watching the test's namespace, or ``namespaces``; () for all).

    It acts as deploy/'s ServiceAccount through the test's fault proxy, unless ``kubeconfig``
    names other credentials (e.g. the ServiceAccount a Helm release made).
    """
    port = free_port()
    watched = [cluster.namespace] if namespaces is None else list(namespaces)
    argv = [
        str(OPERATOR),
        "operator",
        f"--metrics-port={port}",
        "--health-port=0",
        f"--resync-seconds={resync_seconds}",
        f"--debounce-seconds={debounce_seconds}",
        *(f"--namespace={ns}" for ns in watched),
    ]
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "KUBECONFIG": str(kubeconfig or cluster.operator_kubeconfig),
        # A checkout run with its own sources first on the path runs its own operator too.
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        **(env or {}),
    }
    log_path = cluster.operator_kubeconfig.with_name(f"operator-{port}.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=process_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    op = RunningOperator(process, log_path, port)
    try:
        _wait_serving(op, startup_timeout)
        yield op
    finally:
        op.stop()


def _wait_serving(op: RunningOperator, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if op.process.poll() is not None:
            raise AssertionError(f"the operator exited with {op.process.returncode}:\n{op.log()}")
        try:
            op.metrics_text()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"the operator did not serve metrics in {timeout}s:\n{op.log()}")


def microtask_job(
    name: str,
    *,
    total: int = 100,
    per_shard: int = 10,
    parallelism: int = 3,
    command: list[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": name},
        "spec": {
            "items": {"range": {"start": 0, "end": total}},
            "microtasksPerShard": per_shard,
            "parallelism": parallelism,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "worker", "image": "busybox", "command": command or ["true"]}
                    ]
                }
            },
            "retry": {"backoffSeconds": 0.2, "maxBackoffSeconds": 1},
        },
    }
    for key, value in spec.items():
        body["spec"][key] = copy.deepcopy(value)
    return body


def shard_jobs(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return cluster.list("jobs", labels=f"microtask.dev/job={name}")


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((cluster.get("microtaskjobs", name) or {}).get("status") or {})


def wait_phase(
    cluster: Cluster,
    name: str,
    phases: tuple[str, ...] = ("Succeeded", "Failed"),
    timeout: float = 60,
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = cluster.get("microtaskjobs", name)
        if obj and (obj.get("status") or {}).get("phase") in phases:
            return obj
        return None

    try:
        return cluster.wait_for(done, timeout=timeout, interval=0.1, message=f"{name} in {phases}")
    except TimeoutError:
        raise AssertionError(
            f"{name} not in {phases}: status={status_of(cluster, name)}\n{cluster.dump()}"
        ) from None


# The real Job controller marks success or failure first with SuccessCriteriaMet or FailureTarget,
# and Complete or Failed only once every pod is gone.
FINISHED = ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")


def finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in FINISHED and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def watch_in_flight(cluster: Cluster, name: str, until: float) -> int:
    """Poll the shards of `name` until the deadline; the most seen in flight at once.

    A shard is in flight from its Job's creation until its pod ends (the operator acts on the
    pod's report; the Job's own status follows later). The lists are not one snapshot, so a Job
    counts only when it is in the Job lists taken before and after the pods' list and its pod
    has not been seen ended: a Job harvested (its pod gone) or created between the lists is
    never counted beside the ones it replaced.
    """
    most = 0
    ended: set[str] = set()  # Jobs whose pod was seen ended, across polls

    def alive_jobs() -> set[str]:
        return {
            j["metadata"]["name"]
            for j in shard_jobs(cluster, name)
            if not j["metadata"].get("deletionTimestamp") and not finished(j)
        }

    while time.monotonic() < until:
        before = alive_jobs()
        ended |= {
            p["metadata"]["labels"].get("batch.kubernetes.io/job-name")
            for p in cluster.list("pods", labels=f"microtask.dev/job={name}")
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        }
        after = alive_jobs()
        most = max(most, len((before & after) - ended))
        if status_of(cluster, name).get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.05)
    return most
