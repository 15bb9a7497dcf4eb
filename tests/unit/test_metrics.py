"""The operator's metrics as fed from the core's Deltas: resource seconds and failures per job."""

from __future__ import annotations

from microtask_operator.core.planner import Deltas
from microtask_operator.core.resources import ResourceSeconds
from microtask_operator.metrics import MAX_REASON_CHARS, Metrics, reason_label


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_resource_seconds_and_failures_are_counted_per_job() -> None:
    metrics = Metrics()
    deltas = Deltas(
        resources=ResourceSeconds(cpu=20.0, gpu=10.0, wasted_cpu=5.0, wasted_gpu=10.0),
        failures={"command not found": 3, "OOMKilled": 1},
    )
    metrics.record("ns", deltas, job="thumbs")
    metrics.record("ns", Deltas(resources=ResourceSeconds(cpu=1.0)), job="thumbs")
    name = "microtask_resource_seconds_total"
    labels = {"namespace": "ns", "job": "thumbs"}
    assert sample(metrics, name, **labels, resource="cpu", use="useful") == 16.0
    assert sample(metrics, name, **labels, resource="cpu", use="wasted") == 5.0
    assert sample(metrics, name, **labels, resource="gpu", use="wasted") == 10.0
    assert sample(metrics, name, **labels, resource="gpu", use="useful") is None  # nothing useful
    failures = "microtask_failures_total"
    assert sample(metrics, failures, **labels, reason="command not found") == 3.0
    assert sample(metrics, failures, **labels, reason="OOMKilled") == 1.0

    metrics.job_gone("ns", "thumbs")  # finished: its counters stay until it is deleted
    assert sample(metrics, failures, **labels, reason="OOMKilled") == 1.0
    metrics.job_deleted("ns", "thumbs")
    assert sample(metrics, failures, **labels, reason="OOMKilled") is None
    assert sample(metrics, name, **labels, resource="cpu", use="useful") is None


def test_reason_labels_stay_short() -> None:
    assert reason_label("exit 3") == "exit 3"
    assert len(reason_label("x" * 500)) == MAX_REASON_CHARS
    assert reason_label("") == "unknown"
