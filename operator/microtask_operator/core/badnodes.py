"""Job-wide bad-node tracking (in the spirit of Spark's excludeOnFailure).

A node is suspect when its shards fail clearly more often than the rest of its pool: at least
`softAfterFailures` failed shards, a failure rate 25 points above the pool's other nodes, and a
count of failures that chance would explain less than once in 1000 (counted after the failure
that drew attention to the node, and stricter the longer the node is watched). Work that fails
everywhere (a bug, a flaky service) therefore excludes nobody, nor do transient failures; a node
that fails what succeeds elsewhere is avoided softly (preferred anti-affinity), then hard
(required anti-affinity) from `hardAfterFailures`, each exclusion expiring after a while. Exclusion
never takes more than a fraction of a pool's ready nodes, and always leaves at least one.

What counts as a failure of the node is judged on evidence. A shard that failed only a few of
its microtasks (under `INCIDENTAL_SHARE`) counts as a clean one: transient failures strike
every node alike, and a long shard almost always meets one. A pod that died (no report, a runner
error, OOMKilled, a pod-level deadline) counts against its node at once. A microtask the runner
reported as failed is only a suspicion: the program may fail that item wherever it runs. The
suspicion is confirmed (one failure of the node) when the microtask later succeeds on another
node, and dropped when it fails again elsewhere or for good, or succeeds on the same node. So a
program that fails some items deterministically excludes nobody, however often it is retried.

A node let back after an exclusion is on probation: a shard it fails counts against it at once
(not only once its microtasks succeed elsewhere), retries keep away from it, and each further
exclusion lasts twice as long as the one before (up to 8 times `excludeSeconds`).

Attempts spent on a node known bad are given back (`known_bad`, `refunds`): a failure there costs
none and counts against the node at once, and one suffered there before the node was known is
given back, once, when the microtask fails again elsewhere. That needs the suspicion until then,
so the bound on suspicions is job-wide, and the nodes that fail least give theirs up first.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import replace

from microtask_runner.indexset import IndexSet

from .state import (
    MAX_NODE_RECORDS,
    MAX_SUSPECT_RANGES,
    MAX_SUSPECTED_RANGES,
    NodeRecord,
    PoolDurations,
)
from .types import BadNodePolicy, ClusterView, Pool

SOFT = "soft"
HARD = "hard"
# How much worse than its pool a node must be, in failure rate points...
MIN_RATE_GAP = 0.25
# ...and how unlikely by chance: -ln(1/1000), for one test (see _stands_out).
SIGNIFICANCE = math.log(1000)
# A shard that failed fewer than this share of its microtasks says nothing about its node: a
# transient failure rate of a few per thousand fails one microtask in most shards of a few
# hundred, on every node alike (counted, it would exclude healthy nodes of a small pool by chance).
INCIDENTAL_SHARE = 0.1
# A node excluded again lasts twice as long each time, up to 2**3 = 8 times `excludeSeconds`.
MAX_EXCLUSION_DOUBLINGS = 3


def incidental(failed: int, outcomes: int) -> bool:
    """Are `failed` failures among a shard's `outcomes` too few to suspect its node?"""
    return 0 < failed < INCIDENTAL_SHARE * outcomes


def known_bad(
    nodes: Mapping[str, NodeRecord],
    policy: BadNodePolicy,
    cluster: ClusterView,
    pools: Mapping[Pool, PoolDurations] | None = None,
) -> frozenset[str]:
    """Nodes known to fail what succeeds elsewhere: excluded, or found so again on probation.

    (A node on probation after an exclusion has no level until the next decision judges it; one
    with `hardAfterFailures` failures that stands out from its pool is known already.)
    """
    if not policy.enabled:
        return frozenset()
    pool_of = {n: p for p, names in cluster.ready_nodes.items() for n in names}
    return frozenset(
        name
        for name, record in nodes.items()
        if record.level is not None
        or (
            record.failures >= policy.hard_after_failures
            and _stands_out(record, (pools or {}).get(pool_of[name]) if name in pool_of else None)
        )
    )


def record_shard(
    nodes: Mapping[str, NodeRecord],
    node: str,
    *,
    failed: bool,
    now: float,
    suspects: IndexSet = IndexSet.EMPTY,
    node_is_bad: bool = False,
) -> dict[str, NodeRecord]:
    """Count one harvested shard on `node`; nodes are tracked from their first failure on.

    `failed`: the pod died, a failure of the node at once. `suspects`: microtasks whose reported
    failure awaits judgement (see `judge`); give only those that will be retried. A shard with
    suspicions only is counted when one of them is confirmed: until then, it is no evidence
    either way (counted as a success, it would water down the failure rate of a node that fails
    everything while the evidence comes in).

    `node_is_bad`: `node` is already `known_bad`. Its suspicions are a failure of the node at
    once: the planner charged no attempt for them (see its `charge`), so there is nothing to give
    back later, and the node's evidence still grows. Nothing is then added to its suspicions,
    which therefore only shrink once a node is known bad: none is pushed out of the bound.
    """
    result = dict(nodes)
    previous = result.get(node)
    if suspects and node_is_bad:
        failed, suspects = True, IndexSet.EMPTY
    if previous is None and not failed and not suspects:
        return result
    if previous is None:
        previous = NodeRecord(failures=0, last_failure=now)
    failure_seen = failed or bool(suspects)
    result[node] = replace(
        previous,
        failures=previous.failures + (1 if failed else 0),
        last_failure=now if failure_seen else previous.last_failure,
        shards=previous.shards + (1 if failed or not suspects else 0),
        suspect=previous.suspect | suspects,
    )
    if len(result) > MAX_NODE_RECORDS:
        # Forget the nodes with the oldest, fewest failures first.
        ranked = sorted(
            result.items(),
            key=lambda kv: (kv[1].level is not None, kv[1].failures, kv[1].last_failure),
        )
        for name, _ in ranked[: len(result) - MAX_NODE_RECORDS]:
            del result[name]
    return _within_budget(result, node, suspects)


def _within_budget(nodes: dict[str, NodeRecord], node: str, new: IndexSet) -> dict[str, NodeRecord]:
    """Keep MAX_SUSPECTED_RANGES ranges of suspicions in all, taking from the least failing.

    Nodes with the fewest failures of their own give up theirs first (their suspicions are the
    least likely to give an attempt back), down to MAX_SUSPECT_RANGES each; `node` keeps its
    `new` suspicions first.
    """
    total = sum(len(r.suspect.ranges) for r in nodes.values())
    if total <= MAX_SUSPECTED_RANGES:
        return nodes
    ranked = sorted(
        nodes.items(),
        key=lambda kv: (kv[1].level is not None, kv[1].failures, -len(kv[1].suspect.ranges)),
    )
    for name, record in ranked:
        excess = total - MAX_SUSPECTED_RANGES
        if excess <= 0:
            break
        size = len(record.suspect.ranges)
        limit = max(MAX_SUSPECT_RANGES, size - excess)
        if size <= limit:
            continue
        kept = _bounded(record.suspect, new if name == node else IndexSet.EMPTY, limit)
        nodes[name] = replace(record, suspect=kept)
        total -= size - len(kept.ranges)
    return nodes


def judge(
    nodes: Mapping[str, NodeRecord],
    node: str,
    *,
    succeeded: IndexSet,
    failed: IndexSet,
    now: float,
    known_bad_after: int | None = None,
) -> tuple[dict[str, NodeRecord], list[str], IndexSet]:
    """Settle earlier suspicions with what a shard on `node` just did.

    A microtask suspected on another node that succeeded here confirms that suspicion: one
    failure of that node (however many of its microtasks succeed here at once). One that failed
    here again is the program's: the suspicion is dropped. One suspected here that succeeded
    here was a passing hiccup. Returns the new records, the nodes whose suspicion was confirmed,
    and the microtasks found to be the program's (not to be suspected here either).

    A node excluded, or with `known_bad_after` failures of its own or more (the planner says one:
    a node on probation after an exclusion keeps one), keeps its suspicions when they fail again
    elsewhere: one more failure proves nothing about a node that fails work of its own, and the
    attempt spent there may then be given back (the planner's `charge`).
    """
    result = dict(nodes)
    confirmed: list[str] = []
    programs = IndexSet.EMPTY
    # A failure again on a node with failures of its own proves nothing about the program: it
    # may be that node's doing (a bad node that fails everything would otherwise clear every
    # suspicion it meets, and retries would land on it again).
    here = nodes.get(node)
    tainted = here is not None and (here.failures > 0 or here.level is not None)
    if tainted:
        failed = IndexSet.EMPTY
    # Suspicions wholly outside the shard's outcomes are left as they are without set
    # operations: a decision harvests many shards, each meeting every node's record.
    ends = (succeeded.first(), failed.first(), succeeded.last(), failed.last())
    known = [b for b in ends if b is not None]
    low, high = (min(known), max(known)) if known else (0, -1)
    for name, record in nodes.items():
        if not record.suspect:
            continue
        first, last = record.suspect.first(), record.suspect.last()
        assert first is not None and last is not None
        if last < low or first > high:
            continue
        if name == node:
            rest = record.suspect - succeeded
            if rest != record.suspect:
                result[name] = replace(record, suspect=rest)
            continue
        hit = record.suspect & succeeded
        again = record.suspect & failed
        if again and (
            record.level is not None
            or (known_bad_after is not None and record.failures >= known_bad_after)
        ):
            again = IndexSet.EMPTY
        if not hit and not again:
            continue
        programs = programs | again
        rest = record.suspect - hit - again
        if hit:
            confirmed.append(name)
            result[name] = replace(
                record,
                failures=record.failures + 1,
                shards=record.shards + 1,
                last_failure=now,
                suspect=rest,
            )
        else:
            result[name] = replace(record, suspect=rest)
    return result, confirmed, programs


def refunds(
    nodes: Mapping[str, NodeRecord], indexes: IndexSet, bad: Collection[str], *, besides: str | None
) -> tuple[dict[str, NodeRecord], list[IndexSet]]:
    """Attempts of `indexes` to give back: those spent on `bad` nodes other than `besides`.

    Each such attempt is given back once: its suspicion is settled here (dropped from the node's
    record). Returns the new records and, by count, the microtasks owed that many attempts:
    `[owed at least 1, owed at least 2, ...]`.
    """
    result = dict(nodes)
    owed: list[IndexSet] = []
    if not indexes:
        return result, owed
    for name, record in nodes.items():
        if name == besides or not record.suspect or name not in bad:
            continue
        hit = record.suspect & indexes
        if not hit:
            continue
        result[name] = replace(record, suspect=record.suspect - hit)
        carry = hit
        for depth, already in enumerate(owed):
            owed[depth] = already | carry
            carry = already & carry
            if not carry:
                break
        if carry:
            owed.append(carry)
    return result, owed


def by_count(indexes: IndexSet, owed: list[IndexSet]) -> list[IndexSet]:
    """`indexes` split by attempts owed (`refunds`' list): [owed none, owed one, two...]."""
    bounds = [indexes, *owed, IndexSet.EMPTY]
    return [bounds[n] - bounds[n + 1] for n in range(len(bounds) - 1)]


def acquit(nodes: Mapping[str, NodeRecord], indexes: IndexSet) -> dict[str, NodeRecord]:
    """Drop suspicions about microtasks that failed for good: their failures are the program's."""
    result = dict(nodes)
    if not indexes:
        return result
    for name, record in nodes.items():
        if record.suspect and not record.suspect.isdisjoint(indexes):
            result[name] = replace(record, suspect=record.suspect - indexes)
    return result


def _bounded(merged: IndexSet, new: IndexSet, limit: int) -> IndexSet:
    """`merged` (holding `new`) cut to `limit` ranges: the `new` suspicions first, then the last.

    (The retries of the newest failures are the ones still to come; dropping them would let
    them run again where they failed.)
    """
    if len(merged.ranges) <= limit:
        return merged
    kept = IndexSet.from_ranges(new.ranges[-limit:])
    room = limit - len(kept.ranges)
    older = (merged - kept).ranges
    if room > 0 and older:
        kept = kept | IndexSet.from_ranges(older[-room:])
    return kept


def _stands_out(record: NodeRecord, pool: PoolDurations | None) -> bool:
    """Does this node fail clearly more often than the other nodes of its pool?

    "Clearly" is a significance test, not a ratio: with the pool's failure rate p (smoothed, so
    a clean pool is not a zero), the chance of `k` or more failures out of `n` shards is bounded
    by Chernoff, exp(-n * KL(k/n || p)). Two corrections keep healthy nodes of a pool with
    transient failures from being excluded by chance:

    * a record opens at a node's first failure, so that failure says nothing of its rate (every
      node would look failing at its first failure): k and n count the shards after it;
    * the test is made again after every shard of the node, and one of many tests at 1 in 1000
      passes by chance: the bar rises with the log of the shards judged (a sequential test).

    A node that fails everything stands out after a handful of shards; one that failed 3 of 4
    while the pool fails 10% of its shards does not.
    """
    if pool is None:
        return True
    others_shards = max(0, pool.harvested - record.shards)
    others_failed = max(0, pool.failed_shards - record.failures)
    p = (others_failed + 1) / (others_shards + 2)
    failures = record.failures - 1
    n = max(record.shards, record.failures) - 1
    if n <= 0:
        return False
    observed = failures / n
    if observed - p < MIN_RATE_GAP:
        return False
    return n * _kl(observed, p) > SIGNIFICANCE + math.log(n)


def _kl(a: float, p: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(a) from Bernoulli(p)."""
    total = 0.0
    if a > 0:
        total += a * math.log(a / p)
    if a < 1:
        total += (1 - a) * math.log((1 - a) / (1 - p))
    return total


def update_levels(
    nodes: Mapping[str, NodeRecord],
    policy: BadNodePolicy,
    cluster: ClusterView,
    now: float,
    pools: Mapping[Pool, PoolDurations] | None = None,
) -> tuple[dict[str, NodeRecord], list[tuple[str, str]]]:
    """Expire old exclusions, set levels from failures, cap per pool.

    Returns the new records and the (node, level) exclusions that changed, for events.
    """
    kept: dict[str, NodeRecord] = {}
    for name, record in nodes.items():
        if record.until is not None and record.until <= now:
            # Expired: on probation (the node may have been repaired). One more failure of its
            # own excludes it again; its suspicions stay, so retries still avoid it.
            kept[name] = replace(
                record,
                level=None,
                until=None,
                failures=min(record.failures, max(0, policy.soft_after_failures - 1)),
                # Its rate restarts too: shards it failed before would otherwise be diluted by
                # the old ones, and a node that still fails everything would never stand out.
                shards=min(record.shards, max(0, policy.soft_after_failures - 1)),
                last_failure=now,
            )
            continue
        if record.level is None and now - record.last_failure >= policy.exclude_seconds:
            continue  # old failures are forgotten
        kept[name] = record
    if not policy.enabled:
        return {n: replace(r, level=None, until=None) for n, r in kept.items()}, []

    pool_of = {n: p for p, names in cluster.ready_nodes.items() for n in names}
    wanted: dict[str, str | None] = {}
    for name, record in kept.items():
        level = record.level
        stats = (pools or {}).get(pool_of[name]) if name in pool_of else None
        if record.failures >= policy.soft_after_failures and _stands_out(record, stats):
            level = HARD if record.failures >= policy.hard_after_failures else (level or SOFT)
        wanted[name] = level

    # Cap hard exclusions per pool: the most failing stay hard, the rest are only preferred away.
    for ready in cluster.ready_nodes.values():
        allowed = max(0, min(len(ready) - 1, math.floor(policy.max_excluded_fraction * len(ready))))
        hard = sorted(
            (n for n in ready if wanted.get(n) == HARD), key=lambda n: (-kept[n].failures, n)
        )
        for name in hard[allowed:]:
            wanted[name] = SOFT

    result: dict[str, NodeRecord] = {}
    changed: list[tuple[str, str]] = []
    for name, record in kept.items():
        level = wanted[name]
        if level == record.level:
            result[name] = record
            continue
        if not level:
            result[name] = replace(record, level=None, until=None)
            continue
        # Soft to hard is the same exclusion made stricter; from none, a new one.
        exclusions = record.exclusions + (1 if record.level is None else 0)
        until = now + exclusion_seconds(policy, exclusions)
        result[name] = replace(record, level=level, until=until, exclusions=exclusions)
        changed.append((name, level))
    return result, changed


def exclusion_seconds(policy: BadNodePolicy, exclusions: int) -> float:
    """How long the `exclusions`-th exclusion of a node lasts: `excludeSeconds`, doubled at each
    one after the first up to `MAX_EXCLUSION_DOUBLINGS` times (a node that fails again as soon as
    it is let back is most likely still broken; one repaired meanwhile waits a while longer)."""
    doublings = min(max(exclusions - 1, 0), MAX_EXCLUSION_DOUBLINGS)
    return policy.exclude_seconds * float(2**doublings)


def on_probation(record: NodeRecord | None) -> bool:
    """Was the node excluded before, and is let back now (its record not yet forgotten)?"""
    return record is not None and record.level is None and record.exclusions > 0


def avoid_lists(
    nodes: Mapping[str, NodeRecord], pool: Pool, cluster: ClusterView
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hard, soft) node names a new shard of `pool` should avoid."""
    ready = cluster.ready_nodes.get(pool)
    hard = []
    soft = []
    for name, record in sorted(nodes.items()):
        if ready is not None and name not in ready:
            continue  # not a node of this pool (or gone): no point naming it
        if record.level == HARD:
            hard.append(name)
        elif record.level == SOFT:
            soft.append(name)
    return tuple(hard), tuple(soft)


def avoid_lists_for_retry(
    nodes: Mapping[str, NodeRecord], indexes: IndexSet, pool: Pool, cluster: ClusterView
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`avoid_lists`, plus the nodes where failures await judgement, for a retry of `indexes`.

    A retry does not run where its microtasks failed (as Spark does not rerun a failed task
    where it failed): there it would only fail again and prove nothing, however often. Nor, if
    it can help it, on another node with failures awaiting judgement: a second failure there
    would clear both nodes (the program's, it would seem) when both may be bad. Nor on a node on
    probation after an exclusion: a retry may be a microtask's last attempt, and one lost there
    would fail it for good before the node is judged again. Each group is required while ready
    nodes of the pool remain outside the lists, else only preferred.
    """
    hard, soft = avoid_lists(nodes, pool, cluster)
    ready = cluster.ready_nodes.get(pool)
    if ready is None:
        return hard, soft
    pending = {n: r.suspect for n, r in nodes.items() if r.suspect and n in ready}
    own = {n for n, suspect in pending.items() if not suspect.isdisjoint(indexes)}
    own |= {n for n, r in nodes.items() if n in ready and on_probation(r)}
    required, preferred = set(hard), set(soft)
    for names in (own, set(pending) - own):
        group = names - required
        if not group:
            continue
        if ready - required - group:
            required |= group
        else:
            preferred |= group
    return tuple(sorted(required)), tuple(sorted(preferred - required))
