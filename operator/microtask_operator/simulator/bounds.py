"""The lower bound makespans are compared with: no schedule of this work on this cluster beats it.

Two pools of different speeds make "total work over capacity" ambiguous, so it is defined on a
common unit. A microtask has a *size* (its jitter factor, mean 1) independent of where it runs;
on a slot of pool p and speed v it takes `size * secondsPerMicrotask[p] / v` seconds. A busy slot
therefore clears `v / secondsPerMicrotask[p]` size units per second, and the cluster's capacity is
the sum of that rate over the slots that can do the job's work:

* the pools the job may use (`gpu`, `cpu`, or both for `auto`),
* not the nodes marked `bad`: every microtask they run fails, so they clear nothing,
* only the `parallelism` fastest slots (the job never has more shards in flight),
* only the nodes still there: capacity drops when a node is lost.

The bound is the best (largest) of two bounds, each true of ANY schedule:

* the fluid bound: every pod spends `podStartupSeconds` before its first microtask, and the
  first pod starts at t = 0 at the earliest, so no slot clears anything before that; from then
  on at most the capacity is cleared per second. The job cannot end before the integral of
  capacity from `podStartupSeconds` on reaches the total size.
* the longest microtask: it runs on some slot after that slot's pod started, so the job takes at
  least one start-up plus that microtask on the fastest slot that clears work.

Neither assumes anything about stragglers, transient failures or where the lost node's work
was: those only add time to a real schedule, never take any away, so they stay out of the bound.
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
    startup = max(0.0, cluster.workload.pod_startup_seconds)
    # A bad node's slots are left out: a microtask run there fails, so it is never done there
    # (the parallelism cap then keeps faster slots, which only makes the bound lower, so valid).
    rates_by_node = {
        node.name: [node.speed / seconds[node.pool]] * node.slots
        for node in cluster.nodes
        if node.pool in pools and not node.bad
    }
    if not rates_by_node or total_size <= 0:
        return 0.0

    def capacity(alive: set[str]) -> float:
        rates = sorted((r for name in alive for r in rates_by_node[name]), reverse=True)
        return sum(rates[: max(1, spec.parallelism)])

    alive = set(rates_by_node)
    fastest = max(r for rates in rates_by_node.values() for r in rates)
    longest = startup + max_size / fastest

    # Capacity is piecewise constant: it changes only when a usable node is lost. Nothing is
    # cleared before the first start-up ends; a node lost by then adds nothing at all.
    t = startup
    alive -= {loss.node for loss in cluster.node_losses if loss.at <= t}
    if not alive:
        return float("inf")  # the work cannot finish: every usable node is lost
    changes = sorted(
        {loss.at for loss in cluster.node_losses if loss.node in alive and loss.at > t}
    )
    remaining = total_size
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
