"""Small demonstration workers for Python mode, present in every runner install.

They let a newcomer try `callable:` without building an image:
`callable: microtask_runner.demo:checksum`.
"""

from __future__ import annotations

from typing import Any


def _data(item: Any) -> bytes:
    import json  # here, not at import time: `noop` measures the runner's start-up too

    return (item if isinstance(item, str) else json.dumps(item)).encode()


def checksum(index: int, item: Any) -> None:
    """Print the SHA-256 of the item (1,000 rounds, so each microtask does a little work)."""
    import hashlib

    data = _data(item)
    for _ in range(1000):
        data = hashlib.sha256(data).digest()
    print(index, data.hex())


def sha256(index: int, item: Any) -> None:
    """1,000 rounds of SHA-256 over the item, silently: a little real work for benchmarks."""
    import hashlib

    del index
    data = _data(item)
    for _ in range(1000):
        data = hashlib.sha256(data).digest()


def noop(index: int, item: Any) -> None:
    """Do nothing: measures the runner's own overhead per microtask."""
    del index, item
