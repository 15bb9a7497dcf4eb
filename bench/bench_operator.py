"""The operator on the real control plane: reconcile latency under many jobs, API writes.

One control plane (etcd, kube-apiserver, controller-manager, scheduler, our kubelet running each
pod's worker as a local process: the integration harness) and one `microtask operator` process
with its production timings (resync 30 s, debounce 0.2 s), as deploy/'s ServiceAccount, talking
to the API server directly (not through the tests' fault proxy):

* `operator.reconcile_mean_100_jobs`: 100 small MicrotaskJobs created at once (30 with --quick),
  20 microtasks each, 10 per shard, run to the end. The mean reconcile latency is read from the
  operator's own histogram `microtask_reconcile_duration_seconds` (its `_sum` over its `_count`,
  scraped from the metrics endpoint before and after the batch), so it is the time a reconcile
  takes inside the operator, waits for the event loop and for API calls included. Baseline: the
  same measure with one such job alone ("one job", three such jobs one after another). What
  follows a reconcile's status write (the deletes of harvested Jobs, the start annotation,
  suspends) runs behind it, as Events do: its mean, from `microtask_reconcile_cleanup_seconds`,
  is in the batch summary. So are, to tell where a reconcile's time goes, the API server's own
  mean time per kind of the operator's requests (from receipt to answer, in the audit log), its
  time per reconcile on the calls a reconcile waits for (the part of the mean spent inside the
  API server), the CPU time of the operator, of the control plane, of our kubelet and of the
  pods' processes, and the CPU time the whole machine was busy (everything shares its cores).
* `operator.api_writes_per_microtask_100`: one MicrotaskJob of 2,000 microtasks (1,000 with
  --quick) at 100 per shard; the writes (create, patch, delete, deletecollection, update) the
  operator counted in `microtask_api_requests_total` during its run, per microtask, against the
  target 0.02.
* `operator.first_jobs_seconds`: from the lone job's creation to its first Jobs.

A throw-away job first pays the operator's one-time costs (imports, first connections). Finished
MicrotaskJobs are deleted (and awaited) between batches, so a batch's reconciles are its own.
Everything shares the machine's cores (control plane, kubelet, the pods' processes, the
operator), so the figures move with whatever else runs there. Prints one JSON line per figure
(a summary of each batch on stderr); asserts nothing. A run whose nodes stop being Ready (our
kubelet starved of CPU) stops with an error rather than print a figure. Needs the dev install and
hack/kube-binaries.sh.

    .venv/bin/python -m bench.bench_operator [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from microtask_operator.labels import MANAGED_SELECTOR  # noqa: E402

from bench.figures import Figure  # noqa: E402
from tests.integration.harness import controlplane  # noqa: E402
from tests.integration.harness.cluster import Cluster, start_cluster  # noqa: E402
from tests.integration.harness.controlplane import kubeconfig  # noqa: E402
from tests.integration.operator_harness import (  # noqa: E402
    RunningOperator,
    microtask_job,
    running_operator,
)

# Batches of one job alone whose reconciles make the baseline.
SOLO_RUNS = 3
# The operator's own defaults (adapter/config.py), not the tests' fast timings.
RESYNC_SECONDS = 30.0
DEBOUNCE_SECONDS = 0.2
SMALL = {"total": 20, "per_shard": 10, "parallelism": 2}
# One deletecollection is one write, however many Jobs it deletes.
WRITE_VERBS = ("create", "patch", "delete", "deletecollection", "update")
RECONCILE = "microtask_reconcile_duration_seconds"
CLEANUP = "microtask_reconcile_cleanup_seconds"
# Clients creating (and deleting) a batch's MicrotaskJobs at once.
CREATORS = 4
# Nodes not Ready this long (our kubelet starved of CPU lost its leases): the run is void.
NODES_GRACE_SECONDS = 60.0
# Events are posted in the background, shortly after the reconcile that decided them.
EVENTS_SETTLE_SECONDS = 1.0
# The node lifecycle controller's grace period for missed heartbeats (production's default).
NODE_GRACE_SECONDS = 40


@dataclass(frozen=True)
class Batch:
    reconciles: int
    mean_seconds: float
    cleanup_mean_seconds: float  # what follows a status write, run behind the reconcile
    writes: float
    seconds: float
    first_jobs_seconds: float
    requests: dict[str, int]  # the operator's requests by verb and resource (the audit log)
    server_ms: dict[str, float]  # the API server's mean time for each kind of them (the audit log)
    # The API server's own time per reconcile on the calls a reconcile waits for (its Job
    # creates and its status write): the part of `mean_seconds` spent inside the API server,
    # the rest is the operator's and the way there and back.
    server_seconds_per_reconcile: float
    operator_cpu_seconds: float  # CPU time the operator process used during the batch
    control_plane_cpu_seconds: float  # CPU time of etcd, the API server, controllers, scheduler
    kubelet_cpu_seconds: float  # CPU time of this process: our kubelet (and the bench's polls)
    pods_cpu_seconds: float  # CPU time of the pods' processes that ended (reaped by our kubelet)
    machine_busy_seconds: float  # CPU time the whole machine was busy (all cores, all processes)


def _reconciles(op: RunningOperator, metric: str = RECONCILE) -> tuple[float, float]:
    return op.sample(f"{metric}_count"), op.sample(f"{metric}_sum")


def _writes(op: RunningOperator) -> float:
    return sum(op.sample("microtask_api_requests_total", {"verb": v}) for v in WRITE_VERBS)


def run_batch(
    cluster: Cluster,
    op: RunningOperator,
    names: Sequence[str],
    *,
    total: int,
    per_shard: int,
    parallelism: int,
    timeout: float = 900.0,
) -> Batch:
    """Create the MicrotaskJobs at once, wait until all succeeded, delete them; what it cost."""
    cpu0 = _cpu_seconds(op.process.pid)
    plane0 = _control_plane_cpu(cluster)
    kubelet0, pods0 = _own_cpu()
    machine0 = _machine_busy()
    count0, sum0 = _reconciles(op)
    cleanups0, cleanup_sum0 = _reconciles(op, CLEANUP)
    writes0 = _writes(op)
    mark = cluster.mark()
    started = time.monotonic()
    bodies = [
        microtask_job(n, total=total, per_shard=per_shard, parallelism=parallelism) for n in names
    ]
    # Several at a time: one after another, the last would start long after the first ended.
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(cluster.create, bodies))
    first_jobs = float("nan")
    if len(names) == 1:
        cluster.wait_for(
            lambda: cluster.list("jobs", labels=f"microtask.dev/job={names[0]}"),
            timeout=60,
            interval=0.02,
            message="first Jobs",
        )
        first_jobs = time.monotonic() - started
    wanted = set(names)
    healthy = [time.monotonic()]

    def all_done() -> bool:
        if _nodes_ready(cluster):
            healthy[0] = time.monotonic()
        elif time.monotonic() - healthy[0] > NODES_GRACE_SECONDS:
            raise RuntimeError("the nodes are no longer Ready: no result is coming")
        phases = [
            (o.get("status") or {}).get("phase")
            for o in cluster.list("microtaskjobs")
            if o["metadata"]["name"] in wanted
        ]
        if "Failed" in phases:
            raise RuntimeError(f"a benchmark job failed:\n{cluster.dump()}")
        return len(phases) == len(wanted) and set(phases) == {"Succeeded"}

    cluster.wait_for(all_done, timeout=timeout, interval=0.5, message="all jobs Succeeded")
    seconds = time.monotonic() - started
    # The last harvested Jobs are deleted (and the last Events posted) just after the status says
    # Succeeded: they are part of the run's writes, the clean-up of deleted MicrotaskJobs is not.
    with contextlib.suppress(TimeoutError):
        cluster.wait_for(
            lambda: not cluster.list("jobs", labels=MANAGED_SELECTOR), timeout=60, interval=0.2
        )
    time.sleep(EVENTS_SETTLE_SECONDS)
    count1, sum1 = _reconciles(op)
    operator_cpu = _cpu_seconds(op.process.pid) - cpu0
    plane = _control_plane_cpu(cluster) - plane0
    kubelet, pods = (a - b for a, b in zip(_own_cpu(), (kubelet0, pods0), strict=True))
    machine = _machine_busy() - machine0
    cleanups1, cleanup_sum1 = _reconciles(op, CLEANUP)
    writes = _writes(op) - writes0
    audited = cluster.request_list(since=mark)
    requests = Counter(_request_kind(e) for e in audited)
    server = _server_seconds(audited)
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(lambda n: cluster.delete("microtaskjobs", n), names))
    for name in names:
        cluster.wait_gone("microtaskjobs", name, timeout=120)
    reconciles = int(count1 - count0)
    return Batch(
        reconciles=reconciles,
        mean_seconds=(sum1 - sum0) / max(reconciles, 1),
        cleanup_mean_seconds=(cleanup_sum1 - cleanup_sum0) / max(cleanups1 - cleanups0, 1),
        writes=writes,
        seconds=seconds,
        first_jobs_seconds=first_jobs,
        requests=dict(requests.most_common()),
        server_ms={k: round(v * 1000, 1) for k, v in server.items()},
        server_seconds_per_reconcile=round(_server_in_reconciles(audited) / max(reconciles, 1), 4),
        operator_cpu_seconds=round(operator_cpu, 2),
        control_plane_cpu_seconds=round(plane, 2),
        kubelet_cpu_seconds=round(kubelet, 2),
        pods_cpu_seconds=round(pods, 2),
        machine_busy_seconds=round(machine, 2),
    )


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> tuple[float, float]:
    """CPU time of this process so far, and of its children that ended (the pods' processes;
    the control plane's run until the end)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _control_plane_cpu(cluster: Cluster) -> float:
    """CPU time the control plane's processes have used so far."""
    return sum(_cpu_seconds(p.pid) for p in cluster.plane.processes.values() if p.poll() is None)


def _machine_busy() -> float:
    """CPU time the whole machine has spent busy so far (every core, every process)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _server_seconds(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The API server's mean time per request kind, from receipt to the answer's end (audit)."""
    spent: dict[str, list[float]] = {}
    for event in events:
        received, done = event.get("requestReceivedTimestamp"), event.get("stageTimestamp")
        if not received or not done or event["verb"] == "watch":
            continue
        seconds = (_instant(done) - _instant(received)).total_seconds()
        spent.setdefault(_request_kind(event), []).append(seconds)
    return {k: sum(v) / len(v) for k, v in sorted(spent.items())}


def _server_in_reconciles(events: Sequence[dict[str, Any]]) -> float:
    """The API server's time on the calls reconciles wait for, summed over the reconciles.

    A reconcile waits for its Job creates, sent one after another in shard order, and then for
    its status write; what follows the write runs behind it. A create belongs to the next status
    write of its MicrotaskJob (a Job is named `<MicrotaskJob>-s<shard>`).
    """
    writes: dict[str, list[float]] = {}  # MicrotaskJob -> when each status write was received
    total = 0.0
    creates: list[tuple[str, float, float]] = []
    for event in events:
        ref = event.get("objectRef") or {}
        received, done = event.get("requestReceivedTimestamp"), event.get("stageTimestamp")
        if not received or not done:
            continue
        start = _instant(received).timestamp()
        seconds = _instant(done).timestamp() - start
        kind = _request_kind(event)
        if kind == "patch microtaskjobs/status":
            writes.setdefault(str(ref.get("name")), []).append(start)
            total += seconds
        elif kind == "create jobs":
            creates.append((str(ref.get("name")).rpartition("-s")[0], start, seconds))
    for job, start, seconds in creates:
        if any(w >= start for w in writes.get(job, ())):
            total += seconds  # (a create no status write followed was no reconcile's)
    return total


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _request_kind(event: dict[str, Any]) -> str:
    """An audit event as "verb resource[/subresource]"."""
    ref = event.get("objectRef") or {}
    sub = ref.get("subresource")
    return f"{event['verb']} {ref.get('resource')}" + (f"/{sub}" if sub else "")


def _direct_kubeconfig(cluster: Cluster, folder: Path) -> Path:
    """deploy/'s ServiceAccount straight to the API server: the tests' fault proxy (Python, in
    this process, beside our kubelet) would add its own delays to every call of the operator."""
    path = folder / "operator-direct.kubeconfig"
    path.write_text(
        kubeconfig(
            cluster.url,
            cluster.shared.operator_token,
            cluster.plane.ca_file,
            namespace=cluster.namespace,
        )
    )
    return path


def _nodes_ready(cluster: Cluster) -> bool:
    return all(
        c.get("status") == "True"
        for node in cluster.list("nodes", None)
        for c in (node.get("status") or {}).get("conditions") or []
        if c.get("type") == "Ready"
    )


def figures(quick: bool) -> Iterator[Figure]:
    many = 30 if quick else 100
    total = 1000 if quick else 2000
    # Production's node grace period, not the tests' 4 s: with everything on two cores, our
    # kubelet's lease renewals come late, and nodes marked NotReady would stop the run.
    grace = controlplane.NODE_MONITOR_GRACE_SECONDS
    controlplane.NODE_MONITOR_GRACE_SECONDS = NODE_GRACE_SECONDS
    try:
        yield from _figures(many, total)
    finally:
        controlplane.NODE_MONITOR_GRACE_SECONDS = grace


def _figures(many: int, total: int) -> Iterator[Figure]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as workdir,
        start_cluster(Path(workdir)) as cluster,
        running_operator(
            cluster,
            kubeconfig=_direct_kubeconfig(cluster, Path(workdir)),
            resync_seconds=RESYNC_SECONDS,
            debounce_seconds=DEBOUNCE_SECONDS,
        ) as op,
    ):
        # The operator's first job pays one-time costs (imports, the first connections).
        run_batch(cluster, op, ["warm-up"], **SMALL)
        # One job alone, a few times over: a lone job makes only three reconciles, too few to
        # average out the machine's noise.
        solos = [run_batch(cluster, op, [f"solo-{i}"], **SMALL) for i in range(SOLO_RUNS)]
        one = solos[0]
        one_mean = sum(b.mean_seconds * b.reconciles for b in solos) / max(
            sum(b.reconciles for b in solos), 1
        )
        load = run_batch(cluster, op, [f"load-{i}" for i in range(many)], **SMALL)
        for solo in solos:
            _log(f"1 job: {solo}")
        _log(f"{many} jobs: {load}")
        yield Figure(
            "operator.reconcile_mean_100_jobs",
            round(load.mean_seconds, 4),
            "s",
            round(one_mean, 4),
            "one job",
        )
        big = run_batch(cluster, op, ["writes"], total=total, per_shard=100, parallelism=10)
        _log(f"{total} microtasks at 100 per shard: {big}")
        yield Figure(
            "operator.api_writes_per_microtask_100",
            round(big.writes / total, 4),
            "writes/microtask",
            0.02,
            "target",
        )
        yield Figure("operator.first_jobs_seconds", round(one.first_jobs_seconds, 3), "s")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 jobs instead of 100")
    args = parser.parse_args()
    for figure in figures(args.quick):
        print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
