"""Per-caller concurrency slots shared through Redis: one cap for the fleet, no leaked slots.

Replicas that share a Redis hold each caller's slots there as leases: the cap
counts every replica's generations, a running generation keeps its lease
renewed, and the leases of a replica that vanished lapse on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from support import FakeRuntime, generation_request, wait_for

from pixelgate.client import RateLimited
from pixelgate.server.core.principal import Principal
from pixelgate.server.core.quota import Limit
from pixelgate.server.limits.buckets import Limiter
from pixelgate.server.limits.gpu_quota import CostModel, GpuQuota
from pixelgate.server.limits.redis_backend import RedisBackend

TIMEOUT = 10.0
CAP = 2
LEASE_SECONDS = 1.0
CALLER = Principal(issuer="https://issuer.test", subject="alice", scopes=frozenset())
GPU = Limit("gpu", capacity=1e9, per_second=1e9)

pytestmark = pytest.mark.timeout(60)


def _replica(redis_url: str) -> RedisBackend:
    """One replica's view of the shared limits, with a short slot lease."""
    return RedisBackend(
        redis.Redis.from_url(redis_url),
        key_prefix="pixelgate:test:",
        slot_lease_seconds=LEASE_SECONDS,
    )


def _slot_keys(redis_url: str) -> int:
    async def count() -> int:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = await client.keys("pixelgate:*slots:*")
            return sum([await client.zcard(key) for key in keys])
        finally:
            await client.aclose()

    return asyncio.run(count())


@pytest.fixture
def gated_replicas(start_server, redis_url) -> Iterator[list]:
    """Two replicas sharing Redis, whose generations wait at a gate until the test opens it."""
    gates = [FakeRuntime(), FakeRuntime()]
    limits = {"backend": "redis", "redis_url": redis_url, "max_concurrent_generations": CAP}
    replicas = [
        start_server(loader=lambda settings, device, gate=gate: gate, rate_limit=limits)
        for gate in gates
    ]
    for gate in gates:
        gate.gate.clear()
    yield replicas
    for gate in gates:
        gate.gate.set()


def test_one_callers_generations_across_two_replicas_stop_at_one_cap(
    gated_replicas, connect, redis_url
):
    """With a cap of 2, one generation on each replica leaves no slot on either; ending them
    frees every slot, exactly."""
    first, second = gated_replicas
    on_first, on_second = connect(first), connect(second)
    running = [on_first.stream("one", steps=2), on_second.stream("two", steps=2)]
    for stream in running:
        next(stream)  # admitted: the slot is held
    for client in (on_first, on_second):
        with pytest.raises(RateLimited, match=f"at most {CAP} generations"):
            client.generate("one too many", steps=2, timeout=TIMEOUT)
    assert _slot_keys(redis_url) == CAP

    for stream in running:
        stream.close()
    wait_for(lambda: _slot_keys(redis_url) == 0, what="every slot released")


def test_a_vanished_replicas_slots_come_back_within_the_lease(redis_url):
    """Slots taken by a replica that never releases them (it died) lapse after the lease."""

    async def scenario() -> float:
        dead, alive = Limiter(_replica(redis_url)), Limiter(_replica(redis_url))
        for _ in range(CAP):
            assert await dead.acquire_slot(CALLER.key, CAP)
        assert await alive.acquire_slot(CALLER.key, CAP) is None
        started = time.monotonic()
        while True:  # Redis's clock decides when the lease lapses: poll it
            if await alive.acquire_slot(CALLER.key, CAP) is not None:
                return time.monotonic() - started
            await asyncio.sleep(0.05)

    assert asyncio.run(scenario()) <= LEASE_SECONDS + 0.5


def test_a_running_generation_keeps_its_lease_past_the_lease_length(redis_url):
    """A generation running longer than the lease keeps its slot (renewed), and frees it at
    its end."""

    async def scenario() -> None:
        here, elsewhere = Limiter(_replica(redis_url)), Limiter(_replica(redis_url))
        quota = GpuQuota(here, GPU, CostModel(), max_concurrent=1)
        async with quota.admit(CALLER, generation_request()):
            await asyncio.sleep(LEASE_SECONDS * 2.5)
            assert await elsewhere.acquire_slot(CALLER.key, 1) is None
        assert await elsewhere.acquire_slot(CALLER.key, 1)

    asyncio.run(scenario())
