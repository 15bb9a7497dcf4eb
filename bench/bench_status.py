"""How large a MicrotaskJob's status gets, and how much each status write sends.

    .venv/bin/python -m bench.bench_status [--quick]

* `status.bytes_1e7_scattered`: the status (JSON bytes) of a job of 10^7 microtasks with 2%
  permanent failures scattered at random, as the operator writes it (index sets offloaded to
  ConfigMaps), against the 64 KiB limit the status must stay under;
* `status.bytes_1e7_scattered_inline`: the same status with every set inline (as before), against
  the same limit (etcd refuses objects over 1.5 MiB);
* `status.patch_bytes_per_step`: the mean size of a status patch over a simulated run (the
  simulator drives the real core; each decision's status goes through the operator's split and
  merge-patch diff), against the mean size of the whole status each write sent before.

Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from microtask_operator.api import indexsets
from microtask_operator.core.planner import plan
from microtask_operator.core.state import CoreState, RetryBatch
from microtask_operator.core.types import ClusterView, CoreSpec, ObservedShard, RetryPolicy
from microtask_operator.simulator import simulate
from microtask_operator.simulator.cluster import parse_cluster
from microtask_runner.indexset import IndexSet

from bench.figures import Figure

LIMIT = 64 * 1024
TOTAL = 10_000_000
UID = "0123456789abcdef"
_SETS = (
    "succeededIndexes",
    "failedIndexes",
    "retryQueue",
    "retiredShards",
    "keptShards",
    "nextShard",
    "total",
    "phase",
)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def _scattered_status(total: int, share: float) -> dict[str, Any]:
    """The status of a job 90% through `total`, `share` of it failed at random places."""
    rng = random.Random(7)
    failed = IndexSet.from_indexes(sorted(rng.sample(range(total), int(total * share))))
    done = IndexSet.from_range(0, total * 9 // 10)
    retry = IndexSet.from_indexes(sorted(rng.sample(range(total * 9 // 10), 2_000))) - failed
    state = CoreState(
        succeeded=done - failed - retry,
        failed=failed & done,
        retry=(RetryBatch(attempts=1, not_before=1_800_000_000.0, indexes=retry),),
        retired=IndexSet.from_range(0, total * 9 // 10 // 1000),
        next_shard=total * 9 // 10 // 1000,
        phase="Running",
    )
    return {**state.to_status(), "total": total}


def _patch_sizes(total: int) -> tuple[float, float, Mapping[str, Any]]:
    """(mean patch bytes, mean whole-status bytes) of the status writes of a simulated run, and
    the run's last status."""
    packer = indexsets.Packer()
    written: dict[str, Any] = {}
    patches: list[int] = []
    wholes: list[int] = []
    last: list[Mapping[str, Any]] = [{}]

    def recording(
        spec: CoreSpec,
        state: CoreState,
        observed: Sequence[ObservedShard],
        view: ClusterView,
        now: float,
    ) -> Any:
        nonlocal written
        decision = plan(spec, state, observed, view, now)
        status = decision.status
        last[0] = status
        reference = written.get(indexsets.KEY)
        done = indexsets.split(
            status,
            job="bench",
            uid=UID,
            written=reference if isinstance(reference, Mapping) else None,
            packer=packer,
        )
        patch = indexsets.merge_patch(written, done.status)
        if patch:  # nothing changed: the operator sends nothing
            patches.append(_size({"status": patch}))
            wholes.append(_size({"status": dict(status)}))
            written = done.status
        return decision

    spec = CoreSpec(
        total=total,
        microtasks_per_shard=100,
        parallelism=20,
        retry=RetryPolicy(max_attempts=2, backoff_seconds=1.0, max_failed_microtasks=total),
    )
    cluster = parse_cluster(
        {
            "kind": "SimulatedCluster",
            "name": "bench",
            "workload": {
                "secondsPerMicrotask": {"gpu": 0.5, "cpu": 1.0},
                "permanentFailureRate": 0.02,
                "failureRate": 0.01,
            },
            "nodes": [{"name": "cpu", "count": 5, "pool": "cpu", "slots": 4}],
        }
    )
    simulate(spec, cluster, seed=1, planner=recording)
    return statistics.fmean(patches), statistics.fmean(wholes), last[0]


def figures(quick: bool) -> Iterator[Figure]:
    patch, whole, last = _patch_sizes(100_000 if quick else 500_000)
    # The last status of the run (its conditions, failure summary, node records...), with the
    # index sets and counters of the 10^7 job.
    scattered = _scattered_status(TOTAL, 0.02)
    status = {**last, **{key: scattered[key] for key in _SETS}}
    inline = _size(status)
    written = indexsets.split(status, job="bench", uid=UID).status
    yield Figure("status.bytes_1e7_scattered", _size(written), "bytes", LIMIT, "limit")
    yield Figure("status.bytes_1e7_scattered_inline", inline, "bytes", LIMIT, "limit")
    yield Figure("status.patch_bytes_per_step", round(patch), "bytes", round(whole), "whole status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller simulated run")
    args = parser.parse_args()
    for figure in figures(args.quick):
        print(figure.line(), flush=True)


if __name__ == "__main__":
    main()
