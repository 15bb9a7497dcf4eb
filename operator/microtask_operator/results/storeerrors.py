"""What every result store raises, and the store file names they accept.

Kept apart from ``stores`` (which picks a store by URL) so the store modules can import it
without a cycle.
"""

from __future__ import annotations

__all__ = ["ObjectNotFound", "StoreError", "check_name", "check_prefix"]


class StoreError(ValueError):
    """A result store cannot be used or read; the message names the store and the problem."""


class ObjectNotFound(StoreError, FileNotFoundError):
    """The store has no file of that name (also a ``FileNotFoundError``, as for a path)."""


def check_name(name: str) -> str:
    """``name`` if it is a store file name: ``/``-separated parts, none empty, ``.`` or ``..``."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"not a store file name: {name!r:.80}")
    return name


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a prefix of store file names: ``""``, ``records/``, ``records/0000``."""
    if prefix and (prefix.startswith("/") or any(p in (".", "..") for p in prefix.split("/"))):
        raise StoreError(f"not a prefix of store file names: {prefix!r:.80}")
    return prefix
