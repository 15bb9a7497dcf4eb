"""CPU- and GPU-seconds spent by the job's pods, and the part spent on work thrown away.

A shard's pod costs its run time (start to end) times what it holds: `cpu_per_pod` cores, and on
the GPU pool `gpus_per_pod` GPUs (Argo's resourcesDuration, weighted by the requests). Wasted is the
part of that cost whose results were thrown away: all of it for losing speculative copies and for
shards lost or cancelled, the failed-and-retried share of a harvested shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .types import CoreSpec, Pool


@dataclass(frozen=True)
class ResourceSeconds:
    cpu: float = 0.0
    gpu: float = 0.0
    wasted_cpu: float = 0.0
    wasted_gpu: float = 0.0

    def __add__(self, other: ResourceSeconds) -> ResourceSeconds:
        return ResourceSeconds(
            self.cpu + other.cpu,
            self.gpu + other.gpu,
            self.wasted_cpu + other.wasted_cpu,
            self.wasted_gpu + other.wasted_gpu,
        )

    def to_status(self) -> dict[str, float]:
        """`status.resources`, to the millisecond."""
        return {
            "cpuSeconds": round(self.cpu, 3),
            "gpuSeconds": round(self.gpu, 3),
            "wastedCpuSeconds": round(self.wasted_cpu, 3),
            "wastedGpuSeconds": round(self.wasted_gpu, 3),
        }

    @classmethod
    def from_status(cls, value: Mapping[str, Any] | None) -> ResourceSeconds:
        if not value:
            return cls()
        return cls(
            cpu=float(value.get("cpuSeconds", 0.0)),
            gpu=float(value.get("gpuSeconds", 0.0)),
            wasted_cpu=float(value.get("wastedCpuSeconds", 0.0)),
            wasted_gpu=float(value.get("wastedGpuSeconds", 0.0)),
        )


def spent(spec: CoreSpec, pool: Pool, seconds: float, wasted_share: float) -> ResourceSeconds:
    """What a pod of `pool` running `seconds` cost; `wasted_share` (0..1) of it thrown away."""
    seconds = max(0.0, seconds)
    share = min(1.0, max(0.0, wasted_share))
    cpu = seconds * spec.cpu_per_pod
    gpu = seconds * spec.gpus_per_pod if pool == Pool.GPU else 0.0
    return ResourceSeconds(cpu=cpu, gpu=gpu, wasted_cpu=cpu * share, wasted_gpu=gpu * share)
