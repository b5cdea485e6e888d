"""RateLimiter and TokenBucket: per-caller token buckets on an injected clock."""

from __future__ import annotations

import sys
import threading

import pytest

from pixelgate.server.rate_limit import RateLimiter, TokenBucket


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _limiter(clock: FakeClock, *, rpm: float = 30, burst: int = 3, **kwargs: int) -> RateLimiter:
    # 30 requests a minute = one token every 2 s (0.5 tokens/s, exact in binary).
    return RateLimiter(requests_per_minute=rpm, burst=burst, clock=clock, **kwargs)


def test_exact_burst_then_refused() -> None:
    """A fresh caller gets exactly `burst` calls at once; the next one must wait."""
    limiter = _limiter(FakeClock(), burst=5)
    assert [limiter.acquire("alice") for _ in range(5)] == [0.0] * 5
    assert limiter.acquire("alice") > 0


def test_wait_is_time_to_next_token() -> None:
    """The wait returned is exactly the time until the next token refills."""
    clock = FakeClock()
    limiter = _limiter(clock, rpm=30, burst=2)
    limiter.acquire("alice")
    limiter.acquire("alice")
    assert limiter.acquire("alice") == pytest.approx(2.0)
    clock.advance(0.5)
    assert limiter.acquire("alice") == pytest.approx(1.5)
    clock.advance(1.25)
    assert limiter.acquire("alice") == pytest.approx(0.25)


def test_refused_calls_are_not_charged() -> None:
    """Asking again while refused does not push the next allowed time further out."""
    clock = FakeClock()
    limiter = _limiter(clock, rpm=30, burst=1)
    limiter.acquire("alice")
    for _ in range(10):
        assert limiter.acquire("alice") == pytest.approx(2.0)
    clock.advance(2.0)
    assert limiter.acquire("alice") == 0.0


def test_refill_after_waiting() -> None:
    """After waiting the returned time, the caller is admitted again, once."""
    clock = FakeClock()
    limiter = _limiter(clock, rpm=30, burst=3)
    for _ in range(3):
        limiter.acquire("alice")
    wait = limiter.acquire("alice")
    clock.advance(wait)
    assert limiter.acquire("alice") == 0.0
    assert limiter.acquire("alice") > 0


def test_refill_is_capped_at_burst() -> None:
    """However long a caller idles, it gets at most `burst` calls at once."""
    clock = FakeClock()
    limiter = _limiter(clock, rpm=30, burst=3)
    for _ in range(3):
        limiter.acquire("alice")
    clock.advance(3600)
    assert [limiter.acquire("alice") for _ in range(3)] == [0.0] * 3
    assert limiter.acquire("alice") > 0


def test_callers_are_independent() -> None:
    """One caller using up its burst does not slow another caller down."""
    limiter = _limiter(FakeClock(), burst=2)
    limiter.acquire("alice")
    limiter.acquire("alice")
    assert limiter.acquire("alice") > 0
    assert [limiter.acquire("bob") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("bob") > 0


def test_least_recently_used_caller_is_evicted() -> None:
    """Over max_callers, the least recently seen caller's bucket is forgotten, not others'."""
    limiter = _limiter(FakeClock(), burst=1, max_callers=2)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0
    assert limiter.acquire("a") > 0  # touches "a": "b" is now least recently used
    assert limiter.acquire("c") == 0.0  # third caller: "b" is dropped
    assert limiter.acquire("a") > 0  # "a" was kept, still empty
    assert limiter.acquire("b") == 0.0  # "b" was forgotten: a fresh bucket (drops "c")
    assert limiter.acquire("a") > 0


def test_memory_is_bounded_by_max_callers() -> None:
    """Many distinct callers never make the limiter hold more than max_callers buckets."""
    limiter = _limiter(FakeClock(), burst=1, max_callers=10)
    for caller in range(1000):
        assert limiter.acquire(f"caller-{caller}") == 0.0
    assert len(limiter._buckets) <= 10  # the memory bound itself; not otherwise observable
    assert limiter.acquire("caller-999") > 0  # most recent callers are remembered
    assert limiter.acquire("caller-0") == 0.0  # the oldest were forgotten


def _hammer(limiter: RateLimiter, threads: int, calls: int) -> int:
    start = threading.Barrier(threads)
    admitted: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        start.wait()
        mine = sum(1 for _ in range(calls) if limiter.acquire("shared") == 0.0)
        with lock:
            admitted.append(mine)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert len(admitted) == threads
    return sum(admitted)


def test_concurrent_callers_never_exceed_burst() -> None:
    """8 threads x 200 calls on one caller, frozen clock: exactly `burst` admissions in all."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so an unlocked race would show
    try:
        for _ in range(5):
            limiter = _limiter(FakeClock(), rpm=60, burst=50)
            assert _hammer(limiter, threads=8, calls=200) == 50
    finally:
        sys.setswitchinterval(previous)


def test_bucket_take_with_cost() -> None:
    """A bucket charges `cost` tokens and reports the wait for a cost it cannot cover."""
    bucket = TokenBucket(capacity=4, rate=2, tokens=4, updated=0.0)
    assert bucket.take(0.0, cost=3) == 0.0
    assert bucket.tokens == pytest.approx(1)
    assert bucket.take(0.0, cost=2) == pytest.approx(0.5)
    assert bucket.take(0.5, cost=2) == 0.0
    assert bucket.tokens == pytest.approx(0)


def test_bucket_refill_capped_at_capacity() -> None:
    """A bucket never holds more than its capacity, however long it idles."""
    bucket = TokenBucket(capacity=4, rate=2, tokens=0, updated=0.0)
    assert bucket.take(1000.0, cost=1) == 0.0
    assert bucket.tokens == pytest.approx(3)
