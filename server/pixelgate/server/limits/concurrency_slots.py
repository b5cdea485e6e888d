"""Concurrency slots: how many generations one caller has in flight, and the cap on them.

A slot is held from admission to the end of the generation. In this process
(MemorySlots) a slot is a count that cannot leak; shared through Redis
(redis_slots.py) it is a lease that expires unless renewed, so the slots of a
replica that died come back on their own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ConcurrencySlots(Protocol):
    """Holds callers' slots; every operation is atomic per caller.

    Raises BackendUnavailable (limits/buckets.py) when the store cannot answer.
    """

    renew_every: float | None
    """Seconds between renewals of a held lease; None when leases never expire."""

    async def acquire(self, key: str, cap: int) -> str | None:
        """A lease on one of `key`'s slots if fewer than `cap` are held, else None."""
        ...

    async def renew(self, key: str, lease: str) -> bool:
        """Extends `lease`; False when it had already expired (and was lost)."""
        ...

    async def release(self, key: str, lease: str) -> None:
        """Frees `lease`'s slot (a no-op for a lease already gone)."""
        ...


@dataclass(frozen=True)
class SlotLease:
    """One held slot: whose, its id, and the store holding it (renewed and freed there)."""

    key: str
    id: str
    store: ConcurrencySlots


@runtime_checkable
class HoldsSlots(Protocol):
    """A limits backend that also holds concurrency slots (Redis: shared by the fleet)."""

    slots: ConcurrencySlots


class MemorySlots:
    """Slots counted in this process: exact, per replica, nothing to expire."""

    renew_every: float | None = None

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()

    async def acquire(self, key: str, cap: int) -> str | None:
        # No await inside: on the event loop, the check and the count are one step.
        if self._held[key] >= cap:
            return None
        self._held[key] += 1
        return key

    async def renew(self, key: str, lease: str) -> bool:
        return True

    async def release(self, key: str, lease: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]


__all__ = ["ConcurrencySlots", "HoldsSlots", "MemorySlots", "SlotLease"]
