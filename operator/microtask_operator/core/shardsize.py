"""How many microtasks a new shard holds when the job asks for `microtasksPerShard: auto`.

Three rules, the smallest wins (guided self-scheduling with factoring, sized in seconds):

* until a pool is measured, shards are small (`INITIAL_SHARDS_PER_SLOT` shards of the job per
  window slot): they finish soon and measure the pool's speed;
* then a shard holds what runs for `targetShardSeconds` on its pool (GPU shards hold more
  microtasks than CPU shards for the same time): pod start-up is paid once per target, and
  straggler detection waits for a few targets, not a few long shards;
* toward the end, a shard runs at most `TAIL_SHARE` (2) times the time the cluster still needs
  for the work not yet placed: the last wave is short, so no slot finishes long after the
  others. (Not shorter: every shard pays a pod start-up, and a wave of tiny shards pays it
  over and over; what a last shard's bad luck would cost is what speculative copies are for.)

A shard never holds more than `largest` microtasks (a fixed `microtasksPerShard` keeps today's
behaviour: that size, always).
"""

from __future__ import annotations

import math

# Before any measurement: the job's microtasks over this many shards per window slot.
INITIAL_SHARDS_PER_SLOT = 8
# Toward the end, a shard runs at most this many times the time still needed for unplaced work
# (1 is guided self-scheduling; more means fewer, longer shards in the last waves: less start-up).
TAIL_SHARE = 2.0


def initial_size(total: int, parallelism: int, largest: int) -> int:
    """Microtasks in a shard of a pool not measured yet."""
    share = math.ceil(total / max(1, parallelism * INITIAL_SHARDS_PER_SLOT))
    return max(1, min(largest, share))


def shard_size(
    *,
    per_microtask: float | None,
    target_seconds: float,
    unplaced: int,
    rate: float,
    total: int,
    parallelism: int,
    largest: int,
) -> int:
    """Microtasks for a new shard on a pool taking `per_microtask` seconds each (None: unknown).

    `unplaced`: microtasks neither done nor in flight; `rate`: microtasks per second the
    cluster clears with every slot busy (0 when unknown).
    """
    if per_microtask is None or per_microtask <= 0:
        return initial_size(total, parallelism, largest)
    seconds = target_seconds
    if rate > 0:
        seconds = min(seconds, TAIL_SHARE * unplaced / rate)
    return max(1, min(largest, math.floor(seconds / per_microtask)))
