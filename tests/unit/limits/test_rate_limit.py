"""Token buckets: the same behaviour from the in-memory and the Redis backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from pixelgate.server.core.errors import Unavailable
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.buckets import BackendUnavailable, Limiter, MemoryBackend
from pixelgate.server.limits.redis_backend import RedisBackend

# 30 a minute: one unit every 2 s (0.5 units/s, exact in binary floating point).
THIRTY_A_MINUTE = Limit("requests", capacity=3, per_second=0.5)


class Buckets:
    """One backend behind a synchronous face, with a clock the test moves."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        if kind == "memory":
            self.backend: MemoryBackend | RedisBackend = MemoryBackend(clock=lambda: self.now)
        else:
            assert redis_url is not None
            self.backend = RedisBackend.from_url(redis_url, key_prefix="t:", timeout_seconds=5)
            self.backend.pinned_time = self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        if isinstance(self.backend, RedisBackend):
            self.backend.pinned_time = self.now

    def take(self, key: str = "alice", limit: Limit = THIRTY_A_MINUTE, cost: float = 1) -> Decision:
        return self.loop.run_until_complete(self.backend.take(key, limit, cost))

    def give_back(self, amount: float, key: str = "alice", limit: Limit = THIRTY_A_MINUTE) -> None:
        self.loop.run_until_complete(self.backend.give_back(key, limit, amount))

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.aclose())
        self.loop.close()


@pytest.fixture(params=["memory", "redis"])
def buckets(request: pytest.FixtureRequest) -> Iterator[Buckets]:
    """Each test runs against both backends."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    harness = Buckets(request.param, url)
    yield harness
    harness.close()


def test_exact_burst_then_refused(buckets: Buckets) -> None:
    """A fresh caller gets exactly `capacity` calls at once; the next one must wait."""
    assert [buckets.take().allowed for _ in range(3)] == [True, True, True]
    refused = buckets.take()
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(2.0)


def test_remaining_counts_down(buckets: Buckets) -> None:
    """Each decision says how many calls are left and when the bucket is full again."""
    first = buckets.take()
    assert first.remaining == pytest.approx(2)
    assert first.reset_after == pytest.approx(2.0)
    second = buckets.take()
    assert second.remaining == pytest.approx(1)
    assert second.reset_after == pytest.approx(4.0)


def test_wait_is_time_to_next_token(buckets: Buckets) -> None:
    """The wait returned is exactly the time until enough units have refilled."""
    for _ in range(3):
        buckets.take()
    assert buckets.take().retry_after == pytest.approx(2.0)
    buckets.advance(0.5)
    assert buckets.take().retry_after == pytest.approx(1.5)
    buckets.advance(1.25)
    assert buckets.take().retry_after == pytest.approx(0.25)


def test_refill_after_waiting(buckets: Buckets) -> None:
    """After waiting one refill interval, exactly one more call is admitted."""
    for _ in range(3):
        buckets.take()
    buckets.advance(2.0)
    assert buckets.take().allowed
    assert not buckets.take().allowed


def test_refused_calls_are_not_charged(buckets: Buckets) -> None:
    """Asking again while refused does not push the next allowed time further out."""
    for _ in range(3):
        buckets.take()
    for _ in range(5):
        assert buckets.take().retry_after == pytest.approx(2.0)
    buckets.advance(2.0)
    assert buckets.take().allowed


def test_refill_is_capped_at_capacity(buckets: Buckets) -> None:
    """A long idle period refills the bucket to its capacity, no more."""
    buckets.take()
    buckets.advance(3600)
    assert [buckets.take().allowed for _ in range(4)] == [True, True, True, False]


def test_costs_above_one_take_that_many_units(buckets: Buckets) -> None:
    """A request costing 2.5 units leaves 0.5; the next unit comes 1 s later."""
    gpu = Limit("gpu", capacity=3, per_second=0.5)
    assert buckets.take(limit=gpu, cost=2.5).remaining == pytest.approx(0.5)
    refused = buckets.take(limit=gpu, cost=1)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)


def test_give_back_refunds_but_never_beyond_capacity(buckets: Buckets) -> None:
    """Unused cost returns to the bucket; refunds cannot raise it over its size."""
    buckets.take(cost=3)
    buckets.give_back(2)
    assert buckets.take(cost=2).allowed
    buckets.give_back(100)
    assert [buckets.take().allowed for _ in range(4)] == [True, True, True, False]


def test_callers_and_limits_are_independent(buckets: Buckets) -> None:
    """One caller's empty bucket does not affect another caller or another limit."""
    for _ in range(3):
        buckets.take("alice")
    assert not buckets.take("alice").allowed
    assert buckets.take("bob").allowed
    other = Limit("peer", capacity=3, per_second=0.5)
    assert buckets.take("alice", limit=other).allowed


def test_concurrent_callers_never_exceed_the_bucket(buckets: Buckets) -> None:
    """Many tasks hammering one key at the same instant get exactly `capacity` admissions."""
    limit = Limit("hammer", capacity=25, per_second=0.5)

    async def hammer() -> int:
        decisions = await asyncio.gather(
            *(buckets.backend.take("shared", limit, 1) for _ in range(400))
        )
        return sum(decision.allowed for decision in decisions)

    assert buckets.loop.run_until_complete(hammer()) == 25


def test_threads_hammering_the_memory_backend_never_exceed_the_bucket() -> None:
    """Eight threads x 200 calls on one key, frozen clock: exactly `capacity` get through."""
    backend = MemoryBackend(clock=lambda: 0.0)
    limit = Limit("hammer", capacity=50, per_second=1)
    admitted: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        admitted.append(sum(backend.take_now("shared", limit, 1).allowed for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 50


def test_memory_is_bounded_and_drops_the_least_recently_used() -> None:
    """Beyond max_keys the idlest caller's bucket is dropped (it starts full again)."""
    backend = MemoryBackend(clock=lambda: 0.0, max_keys=2)
    limit = Limit("requests", capacity=1, per_second=0.001)
    assert backend.take_now("alice", limit, 1).allowed
    assert backend.take_now("bob", limit, 1).allowed
    assert not backend.take_now("alice", limit, 1).allowed  # alice is now the most recent
    assert backend.take_now("carol", limit, 1).allowed  # evicts bob
    assert backend.take_now("bob", limit, 1).allowed
    assert not backend.take_now("carol", limit, 1).allowed


class _BrokenBackend:
    async def take(self, key: str, limit: Limit, cost: float) -> Decision:
        raise BackendUnavailable("down")

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        raise BackendUnavailable("down")

    async def aclose(self) -> None:
        return None


def test_a_failed_backend_fails_closed_by_default() -> None:
    """Without a backend answer the call is refused with UNAVAILABLE, not let through."""
    limiter = Limiter(_BrokenBackend())
    with pytest.raises(Unavailable, match="rate limiting is unavailable"):
        asyncio.run(limiter.take("alice", THIRTY_A_MINUTE))


def test_a_failed_backend_fails_open_when_configured() -> None:
    """With fail_open the call goes through, and a lost refund is not an error."""
    limiter = Limiter(_BrokenBackend(), fail_open=True)
    assert asyncio.run(limiter.take("alice", THIRTY_A_MINUTE)).allowed
    asyncio.run(limiter.give_back("alice", THIRTY_A_MINUTE, 1))


def test_an_unreachable_redis_is_backend_unavailable(tmp_path) -> None:
    """A Redis that does not answer becomes BackendUnavailable within the timeout."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = RedisBackend.from_url(
        f"redis://127.0.0.1:{port}/0", key_prefix="t:", timeout_seconds=0.5
    )

    async def attempt() -> None:
        try:
            await backend.take("alice", THIRTY_A_MINUTE, 1)
        finally:
            await backend.aclose()

    with pytest.raises(BackendUnavailable):
        asyncio.run(attempt())
