"""A discrete-event simulator that drives the real core with simulated nodes, pods and clock.

Used by `microtask simulate` (capacity planning, policy tuning) and by scenario tests at scale.
`simulate()` runs Microtask's core; `simulate_static()` runs the baseline, a plain Indexed Job.
"""

from .cluster import ClusterFileError, ClusterSpec, NodeLoss, NodeSpec, Workload, load_cluster
from .engine import simulate
from .result import Policies, SimulationError, SimulationResult
from .static import simulate_static

__all__ = [
    "ClusterFileError",
    "ClusterSpec",
    "NodeLoss",
    "NodeSpec",
    "Policies",
    "SimulationError",
    "SimulationResult",
    "Workload",
    "load_cluster",
    "simulate",
    "simulate_static",
]
