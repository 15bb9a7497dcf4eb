"""How many microtasks a new shard holds when the job asks for `microtasksPerShard: auto`.

Three rules, the smallest wins (guided self-scheduling with factoring, sized in seconds):

* until a pool is measured, shards are small (`INITIAL_SHARDS_PER_SLOT` shards of the job per
  window slot): they finish soon and measure the pool's speed;
* then a shard holds what runs for `targetShardSeconds` on its pool (GPU shards hold more
  microtasks than CPU shards for the same time): pod start-up is paid once per target, and
  straggler detection waits for a few targets, not a few long shards. Where pods are seen to
  take long to start, a shard runs at least `STARTUP_MULTIPLE` times that start-up: a 30 s
  start-up before 60 s of work would otherwise cost a third of every slot, which no placement
  wins back;
* toward the end, a shard ends by the job's *water level* (see core/placement.py: when the work
  not running yet would be done with every slot taking its share, each paying one start-up),
  on the slowest node with a free slot (the scheduler, not the core, picks the node among
  those): the last shards end together, each slot paying one start-up for its last one. Where
  the level is not known (a pool not measured or of unknown size), a shard runs at most
  `TAIL_SHARE` (2) times the time the cluster still needs for the work not yet placed: the
  last wave is short, so no slot finishes long after the others. (Never under
  `TAIL_STARTUP_MULTIPLE` start-ups: every shard pays a pod start-up, and a wave of tiny shards
  pays it over and over; what a last shard's bad luck would cost is what speculative copies
  and splits are for.) Except for the last wave itself: when the
  pool's free slots clear all the work left in less than that, they share it (each pays its
  one start-up at the same time, and no second wave follows), where the floor would hold it
  on a few slots, one shard after another, with the others idle.

A shard never holds more than `largest` microtasks (a fixed `microtasksPerShard` keeps today's
behaviour: that size, always).
"""

from __future__ import annotations

import math

from .types import CoreSpec

# Before any measurement: the job's microtasks over this many shards per window slot, and never
# more than PROBE_MOST microtasks: nothing is known of a microtask's duration yet (a millisecond
# or an hour), and a pool's first shards must come back soon with its speed.
INITIAL_SHARDS_PER_SLOT = 8
PROBE_MOST = 16
# Toward the end, a shard runs at most this many times the time still needed for unplaced work
# (1 is guided self-scheduling; more means fewer, longer shards in the last waves: less start-up).
TAIL_SHARE = 2.0
# A shard runs at least this many times its pod's start-up (when it is measured): start-up then
# takes at most 1/(1 + STARTUP_MULTIPLE) of a slot's time, about 7%.
STARTUP_MULTIPLE = 14.0
# ...and even at the end, at least this many times (below, start-up is most of a pod's time:
# the slot clears work at a fraction of its speed, and the tail drags on).
TAIL_STARTUP_MULTIPLE = 2.0


def initial_size(total: int, parallelism: int, largest: int) -> int:
    """Microtasks in a shard of a pool not measured yet."""
    share = math.ceil(total / max(1, parallelism * INITIAL_SHARDS_PER_SLOT))
    return max(1, min(largest, share, PROBE_MOST))


def shard_size(
    *,
    per_microtask: float | None,
    target_seconds: float,
    unplaced: int,
    rate: float,
    total: int,
    parallelism: int,
    largest: int,
    startup_seconds: float | None = None,
    slowest: float | None = None,
    free_rate: float = 0.0,
    level: float | None = None,
) -> int:
    """Microtasks for a new shard on a pool taking `per_microtask` seconds each (None: unknown).

    `unplaced`: microtasks neither done nor in flight; `rate`: microtasks per second the
    cluster clears with every slot busy (0 when unknown); `startup_seconds`: how long a shard's
    pod takes before its first microtask, when measured; `slowest`: seconds per microtask on
    the slowest node it may land on, when seen (the scheduler, not the core, picks the node:
    near the end a shard must be short there too); `free_rate`: microtasks per second the
    pool's slots free now (this shard's included) clear together, 0 when unknown; `level`:
    the job's water level in seconds from now, None when unknown.
    """
    if per_microtask is None or per_microtask <= 0:
        return initial_size(total, parallelism, largest)
    seconds = max(target_seconds, STARTUP_MULTIPLE * (startup_seconds or 0.0))
    size = math.floor(seconds / per_microtask)
    if rate > 0:
        pace = max(per_microtask, slowest or 0.0)
        tail = math.floor(TAIL_SHARE * unplaced / rate / pace)
        # (The floor on the pool's usual pace: on its slowest node a shard runs longer anyway.)
        floor = TAIL_STARTUP_MULTIPLE * (startup_seconds or 0.0)
        least = math.floor(floor / per_microtask)
        wave = unplaced / free_rate if free_rate > 0 else math.inf
        if wave < floor:
            # The last wave: the free slots share what is left, each its part of `wave`.
            least = math.ceil(wave / pace)
        if level is not None and level < math.inf:
            # Ends by the level where the scheduler may put it: with every slot doing so, the
            # last wave ends together (the floor still spares tiny shards their start-ups).
            tail = math.floor((level - (startup_seconds or 0.0)) / pace)
        size = min(size, max(tail, least))
    return max(1, min(largest, size))


def shards_at_most(spec: CoreSpec) -> int:
    """How many shards the job's first wave can have (no more slots are ever busy)."""
    if spec.target_shard_seconds is not None:
        first = initial_size(spec.total, spec.parallelism, spec.microtasks_per_shard)
    else:
        first = max(1, spec.microtasks_per_shard)
    return -(-spec.total // first)


def static_shard_size(spec: CoreSpec) -> int:
    """The size an Indexed Job of the same work would use: the fixed size, or for auto the
    job's microtasks over `INITIAL_SHARDS_PER_SLOT` shards per slot (what one would pick by
    hand without measurements)."""
    if spec.target_shard_seconds is None:
        return max(1, spec.microtasks_per_shard)
    share = math.ceil(spec.total / max(1, spec.parallelism * INITIAL_SHARDS_PER_SLOT))
    return max(1, min(spec.microtasks_per_shard, share))
