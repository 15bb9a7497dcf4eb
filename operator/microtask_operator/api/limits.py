"""Safety limits of the MicrotaskJob API, in one place.

Each limit protects something concrete (etcd object size, a pod's environment, derived names); the
model enforces them, the CRD schema repeats the ones it can express, and the loader applies the
input-size ones before any YAML is parsed.
"""

from __future__ import annotations

from typing import Final

#: A MicrotaskJob name is a DNS-1123 label this long at most, so that `{name}-s{shard}` (Job names,
#: and the label values the Job controller derives from them) stays within 63 characters for
#: shard numbers of up to 16 digits.
MAX_NAME_LENGTH: Final = 45

#: The whole job: the status stays small (index sets and counters), but planning, progress and a
#: single object's retry bookkeeping are only tested this far.
MAX_TOTAL_MICROTASKS: Final = 10_000_000

#: An inline `items.list`: the spec is stored in etcd (1.5 MiB per object) and is read on every
#: reconcile, so big item lists belong in a ConfigMap.
MAX_INLINE_ITEMS: Final = 10_000
MAX_INLINE_ITEMS_BYTES: Final = 256 * 1024

#: The items of one shard travel in the worker's environment (MICROTASK_ITEMS); Linux refuses to
#: start a process with a single environment string over 128 KiB, so one shard's items must stay
#: well below that.
MAX_SHARD_ITEMS_BYTES: Final = 96 * 1024

MAX_MICROTASKS_PER_SHARD: Final = 10_000
MAX_PARALLELISM: Final = 10_000
MAX_ATTEMPTS: Final = 100
MAX_FAILED_MICROTASKS: Final = 10_000
MAX_KEEP_FAILED_SHARDS: Final = 20
MAX_DEPENDS_ON: Final = 100
MAX_GPU_COUNT: Final = 128

#: Upper bound of every duration in the spec (30 days): larger values are typos, and bounded
#: numbers keep the core's arithmetic far from overflow.
MAX_SECONDS: Final = 30 * 24 * 3600

#: Input files (`microtask validate/plan/run`): larger files are refused before parsing.
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
#: YAML documents per file.
MAX_DOCUMENTS: Final = 1_000
#: YAML nodes per file after expanding aliases (a "billion laughs" file expands to far more).
MAX_YAML_NODES: Final = 200_000
#: Nesting depth of YAML collections (the YAML composer recurses; deep input would crash it).
MAX_YAML_DEPTH: Final = 64
#: Problems reported per document, so one broken 10,000-entry list does not flood the terminal.
MAX_PROBLEMS_PER_DOCUMENT: Final = 50
