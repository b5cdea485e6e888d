"""Concurrency slots through the Limiter: the cap, and what a failing store means."""

from __future__ import annotations

import asyncio

import pytest

from pixelgate.server.core.errors import Unavailable
from pixelgate.server.limits.buckets import BackendUnavailable, Limiter, MemoryBackend
from pixelgate.server.limits.concurrency_slots import MemorySlots


class _DownSlots:
    """A slot store that cannot answer (Redis down)."""

    renew_every = 1.0

    async def acquire(self, key: str, cap: int) -> str | None:
        raise BackendUnavailable("redis: ConnectionError")

    async def renew(self, key: str, lease: str) -> bool:
        raise BackendUnavailable("redis: ConnectionError")

    async def release(self, key: str, lease: str) -> None:
        raise BackendUnavailable("redis: ConnectionError")


def _limiter(*, fail_open: bool) -> Limiter:
    limiter = Limiter(MemoryBackend(), fail_open=fail_open)
    limiter.slots = _DownSlots()
    return limiter


def test_memory_slots_stop_at_the_cap_and_come_back_on_release():
    """In one process, a caller gets `cap` slots, no more, and one back per release."""

    async def scenario() -> None:
        limiter = Limiter(MemoryBackend())
        assert isinstance(limiter.slots, MemorySlots)
        leases = [await limiter.acquire_slot("alice", 2) for _ in range(2)]
        assert all(leases)
        assert await limiter.acquire_slot("alice", 2) is None
        assert await limiter.acquire_slot("bob", 2)  # per caller
        await limiter.release_slot(leases[0])  # type: ignore[arg-type]
        assert await limiter.acquire_slot("alice", 2)

    asyncio.run(scenario())


def test_a_down_slot_store_fails_closed_with_unavailable():
    """Failing closed, a call that cannot take a slot is refused UNAVAILABLE."""
    with pytest.raises(Unavailable, match="rate limiting is unavailable"):
        asyncio.run(_limiter(fail_open=False).acquire_slot("alice", 2))


def test_a_down_slot_store_failing_open_still_caps_each_replica():
    """Failing open, slots are counted in this process: the cap holds per replica, and a
    release frees the slot there."""

    async def scenario() -> None:
        limiter = _limiter(fail_open=True)
        leases = [await limiter.acquire_slot("alice", 2) for _ in range(2)]
        assert all(leases)
        assert await limiter.acquire_slot("alice", 2) is None
        await limiter.release_slot(leases[0])  # type: ignore[arg-type]
        assert await limiter.acquire_slot("alice", 2)

    asyncio.run(scenario())
