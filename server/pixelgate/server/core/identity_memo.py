"""Values worked out from objects, remembered by those objects' identity.

Hot paths meet the same few objects again and again (the cached token of a
caller, its certificate, its principal): keying on `id()` costs no hashing
of their contents. An entry keeps its objects alive, so their ids cannot be
reused by other objects while it stands; the oldest entry goes when full.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Value = TypeVar("Value")


class IdentityMemo(Generic[Value]):
    """A bounded map from a tuple of objects (by identity) to a value."""

    def __init__(self, size: int) -> None:
        # A plain dict, not cachetools.FIFOCache: a hit measured 300 ns here, 450 ns there.
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], Value]] = {}
        self._size = size

    def get(self, objects: tuple[object, ...]) -> Value | None:
        """The value remembered for exactly these objects, or None."""
        entry = self._entries.get(tuple(map(id, objects)))
        return None if entry is None else entry[1]

    def remember(self, objects: tuple[object, ...], value: Value) -> Value:
        """Remembers `value` for these objects (keeping them alive); returns it."""
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[tuple(map(id, objects))] = (objects, value)
        return value


__all__ = ["IdentityMemo"]
