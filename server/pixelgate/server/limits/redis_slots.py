"""Concurrency slots in Redis, shared by every replica: leases that expire.

Each caller has a sorted set of leases scored by their expiry (Redis's own
clock, in milliseconds). Acquiring drops expired leases, then adds one if
fewer than the cap remain, in one Lua script, so two replicas cannot both
take the last slot. A replica renews its leases while their generations run;
one that dies stops renewing, and its leases lapse within `lease_seconds`.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from pixelgate.server.limits.buckets import BackendUnavailable

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the caller's leases. ARGV: cap, lease length (ms), new lease id.
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)

# KEYS[1]: the caller's leases. ARGV: lease length (ms), the lease id.
_RENEW = (
    _NOW_MS
    + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
)

RENEWALS_PER_LEASE = 3
"""A lease is renewed this many times per lease length: two renewals may fail in a row."""


class RedisSlots:
    """Slots as expiring leases in Redis, taken and renewed atomically by Lua scripts."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str,
        lease_seconds: float = 30.0,
        timeout_seconds: float = 0.5,
    ) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._prefix = f"{key_prefix}slots:"
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._timeout = timeout_seconds
        self.renew_every: float | None = lease_seconds / RENEWALS_PER_LEASE

    def _key(self, key: str) -> str:
        # Hashed: caller identities can be long or hold any character.
        return self._prefix + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]

    async def acquire(self, key: str, cap: int) -> str | None:
        lease = uuid.uuid4().hex
        taken = await self._call(
            lambda: self._acquire(keys=[self._key(key)], args=[cap, self._lease_ms, lease])
        )
        return lease if taken else None

    async def renew(self, key: str, lease: str) -> bool:
        kept = await self._call(
            lambda: self._renew(keys=[self._key(key)], args=[self._lease_ms, lease])
        )
        return bool(kept)

    async def release(self, key: str, lease: str) -> None:
        await self._call(lambda: self._client.zrem(self._key(key), lease))

    async def _call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as error:
            raise BackendUnavailable(f"redis: {type(error).__name__}") from None


__all__ = ["RENEWALS_PER_LEASE", "RedisSlots"]
