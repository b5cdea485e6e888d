"""Rate limits as token buckets, and where the buckets live.

A Limit (core/quota.py) is a bucket of `capacity` units refilled at
`per_second`; taking `cost` units either succeeds or says how long until it
would. Backends hold the buckets: in this process (the default), or in Redis
so that replicas share one budget (`redis_backend.py`, chosen by app.py).
The Limiter in front of a backend decides what a backend failure means:
refuse (fail closed, the default) or let the call through (fail open); the
same holds for callers' concurrency slots, which live where the buckets do.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pixelgate.server.core.errors import Unavailable
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.concurrency_slots import (
    ConcurrencySlots,
    HoldsSlots,
    MemorySlots,
    SlotLease,
)

log = logging.getLogger("pixelgate.ratelimit")

Clock = Callable[[], float]
"""Seconds, monotonic."""


class BackendUnavailable(Exception):
    """The rate-limit backend could not answer."""


class RateLimitBackend(Protocol):
    """Holds buckets by key; all operations are atomic per key."""

    async def take(self, key: str, limit: Limit, cost: float) -> Decision:
        """Takes `cost` units from `key`'s bucket if they are there."""
        ...

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        """Returns unused units to `key`'s bucket (never beyond its capacity)."""
        ...

    async def ping(self) -> None:
        """Returns once the backend answers; raises BackendUnavailable otherwise."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...


class BackendObserver(Protocol):
    """Told what each call to the backend saw (the health probe listens)."""

    def observed(self, reachable: bool) -> None:
        """The backend answered (True) or could not (False)."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


def refill(tokens: float, elapsed: float, limit: Limit) -> float:
    """Tokens after `elapsed` seconds of refilling, capped at capacity."""
    return min(limit.capacity, tokens + max(0.0, elapsed) * limit.per_second)


def decide(tokens: float, cost: float, limit: Limit) -> tuple[float, Decision]:
    """Takes `cost` from `tokens` if it fits; returns the new level and the decision."""
    if tokens >= cost:
        left = tokens - cost
        return left, Decision(True, left, 0.0, (limit.capacity - left) / limit.per_second)
    wait = (cost - tokens) / limit.per_second
    return tokens, Decision(False, tokens, wait, (limit.capacity - tokens) / limit.per_second)


class MemoryBackend:
    """Buckets in this process: thread-safe, bounded (least recently used dropped)."""

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        # Not cachetools.LRUCache: as fast a take (1.16 vs 1.24 us), but a new key in a full
        # store (a flood of new peers) measured 150 ns here, 570 ns there.
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take_now(self, key: str, limit: Limit, cost: float) -> Decision:
        """take(), synchronously."""
        with self._lock:
            bucket = self._bucket(key, limit)
            bucket.tokens, decision = decide(bucket.tokens, cost, limit)
            return decision

    async def take(self, key: str, limit: Limit, cost: float) -> Decision:
        return self.take_now(key, limit, cost)

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        with self._lock:
            bucket = self._bucket(key, limit)
            bucket.tokens = min(limit.capacity, bucket.tokens + amount)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _bucket(self, key: str, limit: Limit) -> _Bucket:
        now = self._clock()
        slot = (limit.name, key)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = _Bucket(limit.capacity, now)
            self._buckets[slot] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = refill(bucket.tokens, now - bucket.updated, limit)
            bucket.updated = now
        self._buckets.move_to_end(slot)
        return bucket


class Limiter:
    """Takes from buckets through a backend; a backend failure fails closed or open."""

    def __init__(
        self,
        backend: RateLimitBackend,
        *,
        fail_open: bool = False,
        observer: BackendObserver | None = None,
    ) -> None:
        self.backend = backend
        self._fail_open = fail_open
        self.observer = observer
        """Told whether each backend call got an answer; None = nobody."""
        self.slots: ConcurrencySlots = (
            backend.slots if isinstance(backend, HoldsSlots) else MemorySlots()
        )
        """Callers' concurrency slots: the backend's when it shares them, else this process's."""
        self._local_slots = MemorySlots()  # failing open, the cap still holds per replica

    def decided_now(self, key: str, limit: Limit, cost: float = 1.0) -> Decision | None:
        """The decision, when the buckets are in this process (no I/O, cannot fail);
        None for a remote backend: await take()."""
        backend = self.backend
        if type(backend) is MemoryBackend:  # exactly: a subclass may change take()
            return backend.take_now(key, limit, cost)
        return None

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        """The backend's decision; on backend failure, allowed (fail open) or UNAVAILABLE."""
        try:
            decision = await self.backend.take(key, limit, cost)
        except BackendUnavailable as error:
            if self.observer is not None:
                self.observer.observed(False)
            self._on_failure(error)
            return Decision.unknown(limit)
        if self.observer is not None:
            self.observer.observed(True)
        return decision

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        """Refunds `amount`; a backend failure only costs the caller the refund."""
        if amount <= 0:
            return
        try:
            await self.backend.give_back(key, limit, amount)
        except BackendUnavailable as error:
            log.warning("rate-limit refund lost: %s", error)

    async def acquire_slot(self, key: str, cap: int) -> SlotLease | None:
        """A lease on one of `key`'s `cap` slots, None when all are held. On backend
        failure: UNAVAILABLE, or (failing open) a slot counted in this process alone."""
        try:
            lease = await self.slots.acquire(key, cap)
        except BackendUnavailable as error:
            if self.observer is not None:
                self.observer.observed(False)
            self._on_failure(error)
            local = await self._local_slots.acquire(key, cap)
            return None if local is None else SlotLease(key, local, self._local_slots)
        if self.observer is not None:
            self.observer.observed(True)
        return None if lease is None else SlotLease(key, lease, self.slots)

    async def renew_slot(self, lease: SlotLease) -> None:
        """Keeps `lease` from lapsing; a failure is logged, and the lease may lapse."""
        try:
            if not await lease.store.renew(lease.key, lease.id):
                log.warning("concurrency slot lapsed before its generation ended")
        except BackendUnavailable as error:
            log.warning("concurrency slot renewal failed: %s", error)

    async def release_slot(self, lease: SlotLease) -> None:
        """Frees `lease`; a backend failure only leaves it to lapse."""
        try:
            await lease.store.release(lease.key, lease.id)
        except BackendUnavailable as error:
            log.warning("concurrency slot release failed, left to lapse: %s", error)

    def _on_failure(self, error: BackendUnavailable) -> None:
        """Returns when failing open; raises UNAVAILABLE when failing closed."""
        if self._fail_open:
            log.warning("rate-limit backend failed, letting the call through: %s", error)
            return
        log.warning("rate-limit backend failed, refusing the call: %s", error)
        raise Unavailable("rate limiting is unavailable; retry shortly")


def whole_seconds(seconds: float) -> int:
    """Seconds rounded up, at least 1: what `retry-after` says."""
    return max(1, math.ceil(seconds))


__all__ = [
    "BackendObserver",
    "BackendUnavailable",
    "Clock",
    "Limiter",
    "MemoryBackend",
    "RateLimitBackend",
    "decide",
    "refill",
    "whole_seconds",
]
