"""`microtask run -o json|yaml`: the RunSummary, a documented and versioned shape.

    apiVersion           microtask.dev/v1alpha1
    kind                 RunSummary
    job                  the MicrotaskJob's name
    phase                Succeeded | Failed | Interrupted
    total                microtasks of the whole job
    succeeded            microtasks that succeeded (earlier runs of a --resume/rerun included)
    failed               microtasks that failed for good
    notRun               microtasks without an outcome (the job stopped early, or was interrupted)
    succeededAfterRetry  succeeded microtasks that needed more than one attempt
    attempts             microtask attempts, retries included
    seconds              wall time of this run
    succeededIndexes     index set as plain ranges, e.g. "0-9,17"
    failedIndexes        the same for the failures
    failureSummary       the most frequent kinds of failure:
                         [{exitCode, reason, attempts, microtasks, sampleIndex, message}]
    resources            {cpuSeconds, gpuSeconds, wastedCpuSeconds, wastedGpuSeconds}
    output               the run's folder (records, logs, run.json), absolute
    conditions           [{type, status, reason, message, lastTransitionTime}]

succeeded + failed + notRun = total. Internal bookkeeping of the core (shard ids, retry queue,
durations, node records) is left out on purpose: it may change without notice.
"""

from __future__ import annotations

from typing import Any

from .saved import indexes_of

API_VERSION = "microtask.dev/v1alpha1"
KIND = "RunSummary"
INTERRUPTED = "Interrupted"


def run_summary(
    *,
    job: str,
    status: dict[str, Any],
    total: int,
    seconds: float,
    output: str,
    interrupted: bool = False,
) -> dict[str, Any]:
    succeeded = indexes_of(status, "succeededIndexes")
    failed = indexes_of(status, "failedIndexes")
    phase = INTERRUPTED if interrupted else str(status.get("phase") or "Pending")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "job": job,
        "phase": phase,
        "total": total,
        "succeeded": len(succeeded),
        "failed": len(failed),
        "notRun": max(0, total - len(succeeded) - len(failed)),
        "succeededAfterRetry": int(status.get("succeededAfterRetry") or 0),
        "attempts": int(status.get("attempts") or 0),
        "seconds": round(seconds, 3),
        "succeededIndexes": succeeded.format(),
        "failedIndexes": failed.format(),
        "failureSummary": list(status.get("failureSummary") or []),
        "resources": status.get("resources"),
        "output": output,
        "conditions": list(status.get("conditions") or []),
    }


def summary_list(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One document for several jobs (a job and the dependencies run before it), as kubectl."""
    if len(summaries) == 1:
        return summaries[0]
    return {"apiVersion": API_VERSION, "kind": "List", "items": summaries}
