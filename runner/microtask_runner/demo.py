"""Small demonstration workers for Python mode, present in every runner install.

They let a newcomer try `callable:` without building an image:
`callable: microtask_runner.demo:checksum`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def checksum(index: int, item: Any) -> None:
    """Print the SHA-256 of the item (1,000 rounds, so each microtask does a little work)."""
    data = (item if isinstance(item, str) else json.dumps(item)).encode()
    for _ in range(1000):
        data = hashlib.sha256(data).digest()
    print(index, data.hex())


def noop(index: int, item: Any) -> None:
    """Do nothing: measures the runner's own overhead per microtask."""
    del index, item
