"""Label and annotation keys on the objects the operator creates (Jobs and their pods).

They are how a restarted operator recognises its own Jobs, so they never change meaning: the
adapter selects on them, the builder sets them, the fake control plane of the tests reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

PREFIX: Final = "microtask.dev/"

#: Name of the owning MicrotaskJob.
JOB: Final = "microtask.dev/job"
#: UID of the owning MicrotaskJob (a re-created MicrotaskJob of the same name is another job).
JOB_UID: Final = "microtask.dev/job-uid"
#: Shard id, decimal.
SHARD: Final = "microtask.dev/shard"
#: Attempt number of the shard's microtasks (1 for first attempts), decimal.
ATTEMPT: Final = "microtask.dev/attempt"
#: Pool the shard was placed on: gpu or cpu.
POOL: Final = "microtask.dev/pool"
#: On speculative copies only: the shard id they duplicate.
COPY_OF: Final = "microtask.dev/copy-of"

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "microtask-operator"

#: Kueue's queue label (set when spec.queueName is).
KUEUE_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"

#: Annotation: the shard's index set (IndexSet.to_compact(): plain, or "z:" + compressed).
INDEXES: Final = "microtask.dev/indexes"

#: Annotation on a MicrotaskJob once it started (RFC 3339): outside the status, so a status reset
#: by someone else is recognised after a restart.
STARTED_AT: Final = "microtask.dev/started-at"

#: Node label Kubernetes sets on every node.
HOSTNAME: Final = "kubernetes.io/hostname"

#: Selector of everything the operator created.
MANAGED_SELECTOR: Final = f"{MANAGED_BY}={MANAGED_BY_VALUE}"


def job_selector(mtj_name: str) -> str:
    """Label selector of the Jobs/pods of one MicrotaskJob."""
    return f"{JOB}={mtj_name}"


def shard_selector(mtj_name: str, uid: str, shard_ids: Iterable[int]) -> str:
    """Label selector of the Jobs/pods of some shards of one MicrotaskJob (of this uid only,
    when given: a re-created MicrotaskJob of the same name has its own)."""
    ids = ",".join(str(i) for i in sorted(set(shard_ids)))
    owner = f"{JOB}={mtj_name}" + (f",{JOB_UID}={uid}" if uid else "")
    return f"{owner},{SHARD} in ({ids})"
