"""The digest of a MicrotaskJob's item source, recorded in `status.items.digest` when it starts.

Once a job runs, microtask i must keep meaning the same item: the digest is what "the same"
is compared with. It covers `spec.items` as the API server returns it (defaults filled in) and,
for `configMapRef`, the text of the ConfigMap's key, since editing that ConfigMap changes the
items without touching the spec. JSON objects are hashed with sorted keys, so the digest does
not depend on the order in which a client or a watch cache happens to hold them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DIGEST_PREFIX", "items_digest"]

DIGEST_PREFIX = "sha256:"


def _plain(value: Any) -> Any:
    """JSON types only: watched bodies hold mapping and sequence views, not dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return [_plain(item) for item in value]
    return value


def items_digest(spec_items: Mapping[str, Any], config_map_text: str | None) -> str:
    """`sha256:<hex>` of `spec.items` and, for a configMapRef source, its key's text.

    `config_map_text` is None for the other sources. The two parts are hashed as one JSON
    array, so no choice of items and text can collide with another split of the same bytes.
    """
    parts: list[Any] = [_plain(spec_items)]
    if config_map_text is not None:
        parts.append(config_map_text)
    canonical = json.dumps(
        parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    # surrogatepass: a lone surrogate (from a JSON escape) is hashed, not an error.
    return DIGEST_PREFIX + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
