"""Immutable value classes, without ``dataclasses``.

``dataclasses`` imports ``inspect``, which alone takes longer than the rest of the runner's
start-up; a shard's pod pays for every millisecond of it. ``Value`` gives the little the
runner's classes need: fields set once in ``__init__``, equality, hashing and a readable repr.
"""

from __future__ import annotations

#: ``typing.TYPE_CHECKING`` without importing typing (slow); type checkers read it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


__all__ = ["Value"]


class Value:
    """Fields listed in ``_fields``, set once by ``__init__`` through ``_set``."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"
