"""Rate limiting: a token bucket per authenticated caller.

Keyed on the principal (issuer and subject from a verified token), never on
anything the caller chooses freely, so one client cannot starve the others or
the GPU by rotating request fields.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc.aio

from pixelgate.server.errors import ResourceExhausted
from pixelgate.server.interception import CallGuard, MethodFilter
from pixelgate.server.principal import current_principal

Clock = Callable[[], float]
"""Monotonic seconds."""


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `rate` tokens a second; a call takes `cost`."""

    capacity: float
    rate: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Takes `cost` tokens and returns 0, or returns the seconds until it could."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """Token buckets keyed by caller; bounded memory (least recently used are dropped)."""

    def __init__(
        self,
        *,
        requests_per_minute: float,
        burst: int,
        clock: Clock = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        self._rate = requests_per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """0 if `key` may proceed now (and charges it), else seconds to wait."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(self._burst, self._rate, self._burst, now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_callers:
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(key)
            return bucket.take(now, cost)


class RateLimitInterceptor(CallGuard):
    """Refuses calls over the caller's rate with RESOURCE_EXHAUSTED and `retry-after`."""

    def __init__(self, limiter: RateLimiter, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._limiter = limiter

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        wait = self._limiter.acquire(current_principal().key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ResourceExhausted(
                f"rate limit exceeded; retry in {seconds} s",
                trailers=(("retry-after", str(seconds)),),
            )


__all__ = ["Clock", "RateLimitInterceptor", "RateLimiter", "TokenBucket"]
