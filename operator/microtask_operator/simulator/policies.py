"""Turning rebalancing policies off, by adjusting the spec the core sees (the core is not touched).

This keeps "policy off" honest: the same core decides, with the same inputs a user could have
written, so a comparison measures the policy and not a second code path.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.types import Accelerator, CoreSpec
from .result import Policies

# Fallback "never" without infinity: the core turns deadlines into RFC 3339 timestamps, and ten
# years is beyond any simulation limit while still a valid date.
NEVER_SECONDS = 10 * 365 * 24 * 3600.0


def apply_policies(spec: CoreSpec, policies: Policies) -> CoreSpec:
    if not policies.fallback:
        # `auto` stays on the GPU pool: no shard is placed on, or moved to, the CPU pool. (A
        # user would write `accelerator: gpu`; the comparison measures what the CPU pool buys.)
        spec = replace(spec, fallback_after_seconds=NEVER_SECONDS)
        if spec.accelerator is Accelerator.AUTO:
            spec = replace(spec, accelerator=Accelerator.GPU)
    if not policies.speculation:
        spec = replace(spec, speculation=replace(spec.speculation, enabled=False))
    if not policies.exclusion:
        spec = replace(spec, bad_nodes=replace(spec.bad_nodes, enabled=False))
    return spec
