"""Prometheus metrics of the operator, served on their own port at /metrics.

Label values are bounded: namespaces, pools, outcomes, reasons, verbs and codes. No pod or Job names
ever become labels. Per-MicrotaskJob series carry its name: progress exists only while that job is
active; its resource and failure counters until the MicrotaskJob is deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .core.planner import Deltas
from .core.types import Pool


class Metrics:
    """All series in one registry (a fresh one per operator, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.microtasks = Counter(
            "microtask_microtasks_total",
            "Microtasks that ended an attempt. outcome: succeeded (done), failed (failed for "
            "good), retried (failed an attempt, queued for another).",
            ["namespace", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "microtask_shards_in_flight",
            "Shards (Kubernetes Jobs) in flight. pool: gpu | cpu.",
            ["namespace", "pool"],
            registry=r,
        )
        self.shard_duration = Histogram(
            "microtask_shard_duration_seconds",
            "Run time of finished shards, from pod start to end. pool: gpu | cpu.",
            ["namespace", "pool"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
            registry=r,
        )
        self.rebalances = Counter(
            "microtask_rebalances_total",
            "Work moved away from trouble. reason: unschedulable_fallback | node_lost | "
            "pod_disrupted | job_deleted | straggler | bad_node.",
            ["namespace", "reason"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "microtask_reconcile_duration_seconds",
            "Time of one reconcile of one MicrotaskJob (observe, decide, act).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.cleanup_duration = Histogram(
            "microtask_reconcile_cleanup_seconds",
            "Time of what follows a reconcile's status write (the start annotation, deletes of "
            "harvested Jobs, suspends), run behind the reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.api_requests = Counter(
            "microtask_api_requests_total",
            "Kubernetes API requests the operator makes itself (reconciles, Events, the clean-up "
            "of deleted MicrotaskJobs). verb: create | delete | deletecollection | patch | "
            "update | get | list. code: the HTTP status code, or 'error' when no answer came.",
            ["verb", "code"],
            registry=r,
        )
        self.events_dropped = Counter(
            "microtask_events_dropped_total",
            "Kubernetes Events the operator gave up posting (the API refused them, or kept "
            "failing past the retries). reason: the Event's reason.",
            ["reason"],
            registry=r,
        )
        self.progress = Gauge(
            "microtask_job_progress_ratio",
            "Share of a MicrotaskJob's microtasks that ended (succeeded or failed for good); "
            "present only while that MicrotaskJob is active.",
            ["namespace", "name"],
            registry=r,
        )
        self.resource_seconds = Counter(
            "microtask_resource_seconds_total",
            "Pod run time of a MicrotaskJob's shards times what each pod holds (CPU cores, or "
            "GPUs on the GPU pool). resource: cpu | gpu. use: useful | wasted (thrown away: "
            "failed attempts that are retried, losing speculative copies, shards lost or "
            "cancelled).",
            ["namespace", "job", "resource", "use"],
            registry=r,
        )
        self.failures = Counter(
            "microtask_failures_total",
            "Failed microtask attempts of a MicrotaskJob, by kind. reason: what the exit code "
            "means (exit N, timeout, not executable, command not found, killed by SIG...) or "
            "the pod-level reason when the pod died without a report (OOMKilled, "
            "DeadlineExceeded, RunnerError...).",
            ["namespace", "job", "reason"],
            registry=r,
        )
        # Per-job shard counts, summed into the per-namespace gauge.
        self._in_flight: dict[tuple[str, str], Mapping[Pool, int]] = {}
        # Label values of the per-job counters, removed when the MicrotaskJob is deleted.
        self._job_counters: dict[tuple[str, str], set[tuple[Counter, tuple[str, ...]]]] = {}

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def record(self, namespace: str, deltas: Deltas, job: str = "") -> None:
        """Add one decision's increments; `job` names the MicrotaskJob (per-job counters)."""
        if deltas.succeeded:
            self.microtasks.labels(namespace, "succeeded").inc(deltas.succeeded)
        if deltas.failed:
            self.microtasks.labels(namespace, "failed").inc(deltas.failed)
        if deltas.retried:
            self.microtasks.labels(namespace, "retried").inc(deltas.retried)
        for reason, count in deltas.rebalances.items():
            self.rebalances.labels(namespace, reason.value).inc(count)
        for pool, seconds in deltas.shard_durations:
            self.shard_duration.labels(namespace, pool.value).observe(seconds)
        used = deltas.resources
        for resource, spent, wasted in (
            ("cpu", used.cpu, used.wasted_cpu),
            ("gpu", used.gpu, used.wasted_gpu),
        ):
            self._count(self.resource_seconds, (namespace, job, resource, "useful"), spent - wasted)
            self._count(self.resource_seconds, (namespace, job, resource, "wasted"), wasted)
        for kind, attempts in deltas.failures.items():
            self._count(self.failures, (namespace, job, reason_label(kind)), attempts)

    def _count(self, counter: Counter, labels: tuple[str, ...], amount: float) -> None:
        if amount <= 0:
            return
        counter.labels(*labels).inc(amount)
        self._job_counters.setdefault((labels[0], labels[1]), set()).add((counter, labels))

    def event_dropped(self, reason: str) -> None:
        self.events_dropped.labels(reason_label(reason)).inc()

    def job_active(
        self, namespace: str, name: str, ended: int, total: int, shards: Mapping[Pool, int]
    ) -> None:
        self.progress.labels(namespace, name).set(ended / total if total else 1.0)
        self._in_flight[(namespace, name)] = dict(shards)
        self._refresh_in_flight(namespace)

    def job_gone(self, namespace: str, name: str) -> None:
        """The MicrotaskJob finished or was deleted: its own series go away."""
        with contextlib.suppress(KeyError):
            self.progress.remove(namespace, name)
        self._in_flight.pop((namespace, name), None)
        self._refresh_in_flight(namespace)

    def job_deleted(self, namespace: str, name: str) -> None:
        """The MicrotaskJob is gone (or no longer ours): its counters go too."""
        self.job_gone(namespace, name)
        for counter, labels in self._job_counters.pop((namespace, name), set()):
            with contextlib.suppress(KeyError):
                counter.remove(*labels)

    def _refresh_in_flight(self, namespace: str) -> None:
        for pool in Pool:
            total = sum(
                counts.get(pool, 0)
                for (ns, _), counts in self._in_flight.items()
                if ns == namespace
            )
            self.in_flight.labels(namespace, pool.value).set(total)


#: Longest `reason` label value: kinds are short words; anything longer is cut.
MAX_REASON_CHARS = 63


def reason_label(reason: str) -> str:
    """A failure kind as a label value (kinds are a bounded set of short words)."""
    return reason[:MAX_REASON_CHARS] or "unknown"
