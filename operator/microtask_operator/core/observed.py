"""The observed shards, sorted once into the buckets a decision deals with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .state import CoreState
from .types import ObservedShard


@dataclass(frozen=True)
class Buckets:
    # Harvested or abandoned by an earlier decision, Job not kept for debugging: to delete.
    gone: tuple[ObservedShard, ...]
    # Not harvested yet, in the order observed: this decision deals with them.
    live: tuple[ObservedShard, ...]
    # Live originals (not copies) launched by a decision whose status write was lost: their
    # attempts were never counted.
    unrecorded: tuple[ObservedShard, ...]


def bucket(observed: Sequence[ObservedShard], state: CoreState) -> Buckets:
    gone: list[ObservedShard] = []
    live: dict[int, ObservedShard] = {}
    for shard in observed:
        if shard.shard_id in state.retired:
            if shard.shard_id not in state.kept:
                gone.append(shard)
        else:
            live[shard.shard_id] = shard
    unrecorded = tuple(
        s for s in live.values() if s.shard_id >= state.next_shard and s.copy_of is None
    )
    return Buckets(tuple(gone), tuple(live.values()), unrecorded)
