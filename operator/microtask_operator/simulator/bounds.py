"""The lower bound makespans are compared with: no schedule of this work on this cluster beats it.

Two pools of different speeds make "total work over capacity" ambiguous, so it is defined on a
common unit. A microtask has a *size* (its jitter factor, mean 1) independent of where it runs;
on a slot of pool p and speed v it takes `size * secondsPerMicrotask[p] / v` seconds. A busy slot
therefore clears `v / secondsPerMicrotask[p]` size units per second, and the cluster's capacity is
the sum of that rate over the slots the job may use:

* the pools the job may use (`gpu`, `cpu`, or both for `auto`),
* only the `parallelism` fastest slots (the job never has more shards in flight),
* only the nodes still there: capacity drops when a node is lost.

The fluid bound is the time T at which the integral of capacity reaches the total size (every
slot busy with useful work from t = 0, no startup, no failures, no stragglers). The bound is the
larger of T and the longest single microtask on the fastest usable slot.
"""

from __future__ import annotations

from ..core.types import Accelerator, CoreSpec, Pool
from .cluster import ClusterSpec


def usable_pools(accelerator: Accelerator) -> tuple[Pool, ...]:
    if accelerator is Accelerator.GPU:
        return (Pool.GPU,)
    if accelerator is Accelerator.CPU:
        return (Pool.CPU,)
    return (Pool.GPU, Pool.CPU)


def lower_bound(spec: CoreSpec, cluster: ClusterSpec, total_size: float, max_size: float) -> float:
    """Seconds; `total_size`/`max_size` are the job's summed and largest microtask sizes."""
    pools = usable_pools(spec.accelerator)
    seconds = cluster.workload.seconds_per_microtask
    rates_by_node = {
        node.name: [node.speed / seconds[node.pool]] * node.slots
        for node in cluster.nodes
        if node.pool in pools
    }
    if not rates_by_node or total_size <= 0:
        return 0.0

    def capacity(alive: set[str]) -> float:
        rates = sorted((r for name in alive for r in rates_by_node[name]), reverse=True)
        return sum(rates[: max(1, spec.parallelism)])

    alive = set(rates_by_node)
    fastest = max(r for rates in rates_by_node.values() for r in rates)
    longest = max_size / fastest

    # Capacity is piecewise constant: it changes only when a usable node is lost.
    changes = sorted({loss.at for loss in cluster.node_losses if loss.node in alive})
    remaining = total_size
    t = 0.0
    for at in [*changes, float("inf")]:
        rate = capacity(alive)
        if rate > 0 and t + remaining / rate <= at:
            return max(t + remaining / rate, longest)
        remaining -= rate * (at - t)
        t = at
        alive -= {loss.node for loss in cluster.node_losses if loss.at == at}
        if not alive:
            return float("inf")  # the work cannot finish: every usable node is lost
    return float("inf")  # pragma: no cover - the loop returns at the final infinite interval
