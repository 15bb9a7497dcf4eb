"""Item-level retries: backoff, the verdict on a failed microtask, and the bounded retry queue."""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

from microtask_runner.contract import ENV_NO_RETRY_EXIT_CODES, ENV_RETRY_AFTER_SECONDS
from microtask_runner.indexset import IndexSet

from .failures import COMMAND_NOT_FOUND_CODES
from .state import MAX_RETRY_BATCHES, RetryBatch
from .types import RetryPolicy


def backoff_seconds(policy: RetryPolicy, attempts: int) -> float:
    """Exponential: base, 2x base, 4x base... after the 1st, 2nd, 3rd attempt; capped."""
    exponent = max(0, attempts - 1)
    # Cap the exponent before computing, so 100 attempts cannot overflow a float.
    delay = policy.backoff_seconds * (2.0 ** min(exponent, 32))
    return float(min(delay, policy.max_backoff_seconds))


def in_pod_delay(policy: RetryPolicy, attempt: int) -> float | None:
    """How long after a failure a pod of a shard of `attempt` runs the microtask again itself.

    None: it does not (`inPod` off, or the retry would exceed `maxAttempts`). The wait is the
    backoff the operator would wait before the retry; the pod saves the start-up of a new shard.
    """
    if not policy.in_pod or attempt >= policy.max_attempts:
        return None
    return backoff_seconds(policy, attempt)


def no_retry_codes(policy: RetryPolicy) -> frozenset[int]:
    """Exit codes a pod never retries itself: those `is_permanent` judges final at once."""
    codes = set(policy.non_retryable_exit_codes)
    if not policy.retry_command_not_found:
        codes |= COMMAND_NOT_FOUND_CODES
    return frozenset(codes)


def in_pod_env(policy: RetryPolicy, attempt: int) -> dict[str, str]:
    """The runner's environment for its own retries in a shard of `attempt` (empty: none)."""
    delay = in_pod_delay(policy, attempt)
    if delay is None:
        return {}
    env = {ENV_RETRY_AFTER_SECONDS: repr(delay)}
    codes = no_retry_codes(policy)
    if codes:
        env[ENV_NO_RETRY_EXIT_CODES] = ",".join(str(code) for code in sorted(codes))
    return env


def is_permanent(
    policy: RetryPolicy, exit_code: int, attempts: int, *, from_runner: bool = True
) -> bool:
    """A failure is final when its code says retrying is pointless or attempts are exhausted.

    `from_runner`: the runner reported the code for the microtask itself (126 and 127 then mean
    its command cannot run); otherwise it is the code of a pod that died.
    """
    return (
        exit_code in policy.non_retryable_exit_codes
        or (from_runner and is_command_not_found(policy, exit_code))
        or attempts >= policy.max_attempts
    )


def is_command_not_found(policy: RetryPolicy, exit_code: int) -> bool:
    """126/127: the command is missing or not executable, so a retry would fail the same way."""
    return exit_code in COMMAND_NOT_FOUND_CODES and not policy.retry_command_not_found


def allowed_failures(policy: RetryPolicy, total: int) -> int:
    """Permanently failed microtasks tolerated: the larger of the count and the fraction."""
    return max(policy.max_failed_microtasks, _by_fraction(policy, total))


def _by_fraction(policy: RetryPolicy, total: int) -> int:
    if policy.max_failed_fraction is None:
        return 0
    # As written in decimal: 0.29 x 100 is 29 (in binary floating point, 28.999999999999996).
    return math.floor(Fraction(repr(policy.max_failed_fraction)) * total)


def failure_limit(policy: RetryPolicy, total: int) -> str:
    """Which limit `allowed_failures` applies, in the spec's words."""
    by_count = f"maxFailedMicrotasks={policy.max_failed_microtasks}"
    fraction = policy.max_failed_fraction
    if fraction is None:
        return by_count
    by_fraction = _by_fraction(policy, total)
    if by_fraction > policy.max_failed_microtasks:
        return f"maxFailedFraction={fraction:g} ({by_fraction} of {total} microtasks)"
    return f"{by_count} (maxFailedFraction={fraction:g} allows {by_fraction})"


def add_batch(
    batches: Iterable[RetryBatch], attempts: int, not_before: float, indexes: IndexSet
) -> tuple[RetryBatch, ...]:
    """Queue `indexes` (each having spent `attempts`) and keep the queue within its bound.

    Over the bound, two batches of the same attempt count with the closest times merge, taking the
    later time: a microtask may wait a little longer than its backoff, never less.
    """
    result = list(batches)
    if not indexes:
        return tuple(result)
    for i, batch in enumerate(result):
        if batch.attempts == attempts and batch.not_before == not_before:
            result[i] = RetryBatch(attempts, not_before, batch.indexes | indexes)
            break
    else:
        result.append(RetryBatch(attempts, not_before, indexes))
    while len(result) > MAX_RETRY_BATCHES:
        result = _merge_closest(result)
    result.sort(key=lambda b: (b.not_before, b.attempts, b.indexes.first() or 0))
    return tuple(result)


def _merge_closest(batches: list[RetryBatch]) -> list[RetryBatch]:
    best: tuple[float, int, int] | None = None
    for i, a in enumerate(batches):
        for j in range(i + 1, len(batches)):
            b = batches[j]
            gap = abs(a.not_before - b.not_before)
            # Same attempt count first; across counts only when every count has one batch left.
            penalty = 0.0 if a.attempts == b.attempts else 1e18
            if best is None or gap + penalty < best[0]:
                best = (gap + penalty, i, j)
    assert best is not None
    _, i, j = best
    a, b = batches[i], batches[j]
    # Across counts, keep the larger count: never grants an attempt beyond maxAttempts.
    merged = RetryBatch(
        max(a.attempts, b.attempts), max(a.not_before, b.not_before), a.indexes | b.indexes
    )
    return [x for k, x in enumerate(batches) if k not in (i, j)] + [merged]


def without(batches: Iterable[RetryBatch], indexes: IndexSet) -> tuple[RetryBatch, ...]:
    """The queue minus `indexes` (now in flight or final); empty batches disappear."""
    if not indexes:
        return tuple(batches)
    kept = []
    for batch in batches:
        rest = batch.indexes - indexes
        if rest:
            kept.append(RetryBatch(batch.attempts, batch.not_before, rest))
    return tuple(kept)


def take_ready(
    batches: Iterable[RetryBatch], now: float, size: int, count: int
) -> tuple[list[tuple[int, IndexSet]], tuple[RetryBatch, ...]]:
    """Pack up to `count` retry shards of at most `size` microtasks from batches due by `now`.

    A retry shard holds microtasks of one attempt count, so the shard's attempt label is exact.
    Returns [(attempts already spent, indexes)] and the remaining queue.
    """
    # The batches are not merged into one set per attempt count (that costs all their ranges):
    # the first `size` microtasks of their union are among the first `size` of each.
    due: dict[int, list[IndexSet]] = {}
    for batch in batches:
        if batch.not_before <= now and batch.indexes:
            due.setdefault(batch.attempts, []).append(batch.indexes)
    shards: list[tuple[int, IndexSet]] = []
    taken = IndexSet.EMPTY
    for attempts in sorted(due):
        parts = due[attempts]
        while parts and len(shards) < count:
            head = IndexSet.EMPTY
            for part in parts:
                head = head | part.take(size)[0]
            chunk = head.take(size)[0]
            shards.append((attempts, chunk))
            taken = taken | chunk
            parts = [rest for part in parts if (rest := part - chunk)]
    return shards, without(batches, taken)
