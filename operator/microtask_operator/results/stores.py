"""Result stores as the readers see them: one protocol, a directory or S3, picked by URL.

``open_store(url)`` gives a ``Store``:

* ``s3://bucket/prefix`` - ``S3Store`` (boto3, the ``s3`` extra; options: ``endpoint``,
  ``access_key``, ``secret_key``, ``region``, falling back to the usual environment);
* ``file:///path`` or a plain path - ``DirectoryStore`` (the S3 options do not apply).

Every store raises ``StoreError`` (a ``ValueError``) with a message naming the store and the
problem, and ``ObjectNotFound`` (also a ``FileNotFoundError``) for a name it does not hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from .dirstore import DirectoryStore
from .storeerrors import ObjectNotFound, StoreError

__all__ = ["DirectoryStore", "ObjectNotFound", "Store", "StoreError", "open_store"]

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


class Store(Protocol):
    """A result store: files named by ``/``-separated paths relative to its root."""

    @property
    def url(self) -> str:
        """Where the store is, for messages: ``s3://bucket/prefix`` or a directory."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """The names that start with ``prefix`` (``records/``), sorted as strings."""
        ...

    def open(self, name: str) -> BinaryIO:
        """The file for streaming reads (iterating gives its lines); ObjectNotFound if absent."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the store holds a file of that name."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Write the file whole, replacing any file of that name."""
        ...


def open_store(url: str, **s3_options: Any) -> Store:
    """The store at ``url``; StoreError for a URL no store here can read.

    ``s3_options`` go to ``S3Store`` (``endpoint``, ``access_key``, ``secret_key``, ``region``);
    a directory store has no options and ignores them.
    """
    text = url.strip()
    if not text:
        raise StoreError("the result store URL is empty")
    match = _SCHEME.match(text)
    if match is None:
        return DirectoryStore(text)
    scheme = match["scheme"].lower()
    if scheme == "s3":
        from .s3store import S3Store

        return S3Store(text, **s3_options)
    if scheme == "file":
        path = text[len("file://") :]
        if not path.startswith("/"):
            raise StoreError(f"{url}: a file:// URL needs an absolute path (file:///data/out)")
        return DirectoryStore(path)
    raise StoreError(f"{url}: unsupported result store (use a directory or s3://bucket/prefix)")
