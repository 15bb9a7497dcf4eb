"""Straggler detection for speculative copies (MapReduce backup tasks, Spark speculation).

A running shard is a straggler when it runs `slowdownFactor` times slower than its pool's usual
pace, measured from finished shards once there are `minSamples` of them. Without its progress,
that shows only when it has run `slowdownFactor` times longer than shards of its size usually
take. With its progress (microtasks done, seconds since its first began), it shows as soon as
even the microtask it is on, ending now, would leave it that much slower than usual: a pod
running at a tenth of the usual pace is caught after a few microtasks' time, not after most of
a shard's.

A shard is judged against the pace of its own node when other shards there show it: a node
half as fast as the pool's others runs every shard slowly, which is no straggling (its shards
are copied only at the tail, when a faster free slot would end them sooner: see `outrun`).
Stragglers are pods, not nodes: the other pods of a straggler's node keep their usual pace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from microtask_runner.indexset import IndexSet
from microtask_runner.report import Report

from .state import PoolDurations
from .types import ObservedShard, Pool, ShardPhase, SpeculationPolicy

# A wakeup asked for to judge a shard by its progress is rounded up to this grid (seconds).
PROGRESS_GRID_SECONDS = 10.0


# A node is taken for slow (its shards judged by its pace) up to this many times slower than
# its pool's baseline; beyond, its shards' slowness is a straggler's: a node whose other pods
# straggle too must not hide one, nor let it into the baseline (which would then hide more).
SLOW_NODE_MOST = 3.0


def usual_pace(per_microtask: float, node_pace: float | None) -> float:
    """Seconds per microtask a shard is judged by: its pool's, or its slow node's."""
    if node_pace is None:
        return per_microtask
    return max(per_microtask, min(node_pace, SLOW_NODE_MOST * per_microtask))


class NodePaces:
    """The pace of the nodes running the job's shards, from those shards' progress.

    A shard's pace is its progress: seconds since its first microtask began over microtasks
    done (a shard with none done yet shows nothing). A node's pace is the lower median of the
    paces of the shards running there: a straggling pod does not make its node look slow.
    """

    def __init__(self, live: Iterable[ObservedShard] = ()) -> None:
        self.by_node: dict[str, list[tuple[int, float]]] = {}
        self.pool_of: dict[str, Pool] = {}
        for shard in live:
            progress = shard.progress
            if (
                shard.node is None
                or shard.phase != ShardPhase.RUNNING
                or shard.node_lost_since is not None
                or progress is None
                or progress.done < 1
            ):
                continue
            pace = progress.seconds / progress.done
            self.by_node.setdefault(shard.node, []).append((shard.shard_id, pace))
            self.pool_of[shard.node] = shard.pool

    def of(self, shard: ObservedShard) -> float | None:
        """The pace of `shard`'s node judged by the OTHER shards there (None: none shows it)."""
        others = [p for sid, p in self.by_node.get(shard.node or "", ()) if sid != shard.shard_id]
        # The fastest of them: a node is slow when all its other shards are, and a straggling
        # neighbour (one pod in twenty) must not hide a straggler.
        return min(others) if others else None

    def slowest(self, pool: Pool) -> float | None:
        """The slowest pace of a node of `pool` that runs two shards or more, if any."""
        paces = [
            pace
            for node in self.by_node
            if self.pool_of[node] is pool and (pace := self.node(node)) is not None
        ]
        return max(paces) if paces else None

    def node(self, name: str) -> float | None:
        """The node's pace, if it runs two shards or more (the lower median of theirs)."""
        shards = self.by_node.get(name, ())
        if len(shards) < 2:
            return None
        return sorted(p for _, p in shards)[(len(shards) - 1) // 2]


def stragglers(
    live: Sequence[ObservedShard],
    durations: Mapping[Pool, PoolDurations],
    policy: SpeculationPolicy,
    now: float,
    factor: float | None = None,
    copies_per_shard: int = 1,
    paces: NodePaces | None = None,
    startup: float | None = None,
) -> tuple[list[ObservedShard], list[float]]:
    """Shards that deserve a copy now (slowest first), and when the others would qualify.

    A shard and its copies form a group; the group's newest member is the one judged (a copy
    that straggles too may get a copy of its own, up to `copies_per_shard` copies in a group).
    The original is returned for copying, so every copy names the same original. `startup`:
    the seconds a pod takes before its first microtask (measured), which no straggler slows:
    judged by its run time alone, a shard still starting up is not late yet. Unknown (None: no
    pod of the job has shown it yet), a pod whose progress shows it still starting is left
    alone: a start-up of unknown length is no sign of straggling.
    """
    groups: dict[int, list[ObservedShard]] = {}
    for shard in live:
        key = shard.copy_of if shard.copy_of is not None else shard.shard_id
        groups.setdefault(key, []).append(shard)
    found: list[tuple[float, ObservedShard]] = []
    wakeups: list[float] = []
    for key, members in groups.items():
        if len(members) > copies_per_shard:
            continue  # enough copies already
        newest = max(members, key=lambda s: (s.started_at or s.created_at, s.shard_id))
        if newest.phase != ShardPhase.RUNNING or newest.started_at is None:
            continue
        original = next((s for s in members if s.shard_id == key), newest)
        baseline = durations.get(newest.pool)
        if baseline is None or baseline.shards < policy.min_samples:
            continue
        per_microtask = baseline.per_microtask()
        if per_microtask is None:
            continue
        # On a node that is slow for every shard, the usual pace is the node's.
        if paces is not None:
            per_microtask = usual_pace(per_microtask, paces.of(newest))
        slowdown = factor or policy.slowdown_factor
        expected = per_microtask * len(newest.indexes)
        progress = newest.progress
        starting = progress is not None and progress.done == 0 and progress.seconds <= 0
        if startup is None and starting:
            continue  # judged when it begins its first microtask (its progress brings a call)
        threshold = newest.started_at + (startup or 0.0) + slowdown * expected
        if progress is not None and progress.done < len(newest.indexes):
            # Slower than `slowdown` times the usual pace even if its current microtask ended
            # now; and when it would be, if it finishes nothing more until then.
            usual = per_microtask * (progress.done + 1)
            if progress.seconds >= slowdown * usual:
                found.append((progress.seconds / max(usual, 1e-9), original))
                continue
            at = now + slowdown * usual - progress.seconds
            # On a coarse grid: the progress of every running shard would otherwise ask for a
            # call every few seconds (a finished shard brings one anyway, often sooner).
            threshold = min(
                threshold, math.ceil(at / PROGRESS_GRID_SECONDS) * PROGRESS_GRID_SECONDS
            )
        if now >= threshold:
            late = (now - newest.started_at - (startup or 0.0)) / max(expected, 1e-9)
            found.append((late, original))
        else:
            wakeups.append(threshold)
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found], wakeups


# A finished shard this many times slower per microtask than its pool's baseline is left out
# of the baseline: stragglers would otherwise raise it until stragglers look normal.
OUTLIER_FACTOR = 2.5
# ...once the baseline has this many shards.
OUTLIER_MIN_SAMPLES = 5


def outlier(baseline: PoolDurations, report: Report, node_pace: float | None = None) -> bool:
    """Is this finished shard's report a straggler's, not one for the pool's baseline?

    `node_pace`: seconds per microtask of the other shards running on its node, if seen. A
    shard as slow as its neighbours ran on a slow node: that is the pool's pace too, and left
    out, slow nodes would never count and the baseline would be the fast nodes' alone.
    """
    per_microtask = baseline.per_microtask()
    if per_microtask is None or baseline.shards < OUTLIER_MIN_SAMPLES or report.count <= 0:
        return False
    usual = usual_pace(per_microtask, node_pace)
    return report.seconds_total / report.count > OUTLIER_FACTOR * usual


# A copy on another pool is made only when it is expected to end this many times sooner.
OUTRUN_MARGIN = 1.5


def outrun(
    live: Sequence[ObservedShard],
    durations: Mapping[Pool, PoolDurations],
    now: float,
    elsewhere: Callable[[ObservedShard], float | None],
    copies_per_shard: int = 1,
    paces: NodePaces | None = None,
    startup: float = 0.0,
) -> list[ObservedShard]:
    """At the tail: shards a copy on a free slot would finish well before (latest first).

    The last wave on a slow pool decides the makespan while faster slots sit idle; a copy there
    (the first to finish wins, as for stragglers) ends the job sooner. A group's time left is
    its most promising member's: the rest of its expected run, or, once past that, as long
    again as it has run. `elsewhere(shard)`: the seconds a copy would take on the best free
    slot, None if none. The original is returned for copying. A member's expected run is its
    pod's `startup` and its microtasks at its node's pace when `paces` shows it: a shard of a
    half-speed node is not late at the pool's usual time, and a copy starting up is not late.
    """
    groups: dict[int, list[ObservedShard]] = {}
    for shard in live:
        key = shard.copy_of if shard.copy_of is not None else shard.shard_id
        groups.setdefault(key, []).append(shard)
    found: list[tuple[float, ObservedShard]] = []
    for key, members in groups.items():
        if len(members) > copies_per_shard:
            continue  # enough copies already
        lefts = []
        for member in members:
            baseline = durations.get(member.pool)
            per_microtask = baseline.per_microtask() if baseline is not None else None
            if per_microtask is None:
                break  # a pool not measured: no judgement
            if member.phase == ShardPhase.PENDING and member.copy_of is not None:
                # A copy on its way (made for a free slot): it ends that soon once it starts,
                # and another copy would only race it.
                lefts.append(startup + per_microtask * len(member.indexes))
                continue
            if member.phase != ShardPhase.RUNNING or member.started_at is None:
                continue  # not started (or ended): nothing to judge it by
            if paces is not None:
                per_microtask = usual_pace(per_microtask, paces.of(member))
            elapsed = now - member.started_at
            expected = startup + per_microtask * len(member.indexes)
            lefts.append(expected - elapsed if elapsed < expected else elapsed)
        else:
            if not lefts:
                continue
            left = min(lefts)
            original = next((s for s in members if s.shard_id == key), members[0])
            copy = elsewhere(original)
            if copy is not None and copy * OUTRUN_MARGIN < left:
                found.append((left, original))
    found.sort(key=lambda pair: (-pair[0], pair[1].shard_id))
    return [shard for _, shard in found]


# A straggler gives way to its copy once the copy is expected to end this many times sooner
# (the copy's pace is measured, the straggler's is at best what it has shown so far).
GIVE_WAY_MARGIN = 2.0


def time_left(shard: ObservedShard) -> float | None:
    """Seconds `shard` needs to end at the pace its progress shows (None: no progress seen).

    A shard with nothing done yet is taken to finish its current microtask now: the most
    hopeful reading, so a straggler is never judged slower than it is.
    """
    progress = shard.progress
    if progress is None or shard.phase != ShardPhase.RUNNING or shard.node_lost_since is not None:
        return None
    done = max(1, progress.done)  # (none yet: its first microtask ends now at the earliest)
    return progress.seconds / done * max(0, len(shard.indexes) - done)


def outpaced(live: Sequence[ObservedShard], final: IndexSet) -> list[ObservedShard]:
    """Group members that a running copy will beat by far: their slot is better used elsewhere.

    A straggler keeps its slot while its copy runs, at a tenth of its pace, say, and loses the
    race anyway. Once a newer member of its group shows progress that ends it `GIVE_WAY_MARGIN`
    times sooner than the straggler's own best pace would, the straggler is given up: the copy
    holds all of its microtasks, and the slot goes to other work. Members without progress are
    not judged (nothing is known of a copy still starting up), nor members on a lost node (the
    lost-node recovery deals with those). `final`: the job's microtasks done or given up.
    """
    groups: dict[int, list[ObservedShard]] = {}
    for shard in live:
        key = shard.copy_of if shard.copy_of is not None else shard.shard_id
        groups.setdefault(key, []).append(shard)
    found: list[ObservedShard] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        lefts = {m.shard_id: time_left(m) for m in members}
        for member in members:
            left = lefts[member.shard_id]
            if left is None:
                continue
            # Only a newer member that holds all of this one's unfinished work may take over.
            rivals = [
                lefts[other.shard_id]
                for other in members
                if other is not member
                and (other.started_at or 0.0) > (member.started_at or 0.0)
                and lefts[other.shard_id] is not None
                and other.progress is not None
                and other.progress.done >= 1
                and (member.indexes - final).issubset(other.indexes)
            ]
            best = min((r for r in rivals if r is not None), default=None)
            if best is not None and best * GIVE_WAY_MARGIN < left:
                found.append(member)
    found.sort(key=lambda s: s.shard_id)
    return found
