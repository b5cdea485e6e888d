"""Rate-limit buckets in Redis, so every replica draws on one budget.

Each bucket is a hash (tokens, updated) changed by one Lua script, which Redis
runs atomically; the time is Redis's own (`TIME`), so replicas with skewed
clocks still agree. Keys expire once their bucket would be full again. Any
Redis error or timeout becomes BackendUnavailable, and the Limiter decides
whether that fails closed or open. The same Redis holds the callers'
concurrency slots as expiring leases (`slots`, redis_slots.py).
"""

from __future__ import annotations

import asyncio
import hashlib

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.buckets import BackendUnavailable
from pixelgate.server.limits.redis_slots import RedisSlots

MAX_CONNECTIONS = 32
"""Connections to Redis per server process."""

# KEYS[1]: the bucket. ARGV: capacity, per_second, cost (negative = give back),
# and optionally `now` in seconds (tests pin time; otherwise Redis's TIME).
_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
if now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate)
  updated = now
end
local allowed = 0
local retry = 0
if cost <= 0 then
  tokens = math.min(capacity, tokens - cost)
  allowed = 1
elseif tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(updated))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry), tostring((capacity - tokens) / rate)}
"""


class RedisBackend:
    """Buckets in Redis, updated atomically by a Lua script."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "pixelgate:ratelimit:",
        timeout_seconds: float = 0.5,
        pinned_time: float | None = None,
        probe_client: redis.Redis | None = None,
        slot_lease_seconds: float = 30.0,
    ) -> None:
        self._client = client
        self._probe_client = probe_client or client
        self._script = client.register_script(_SCRIPT)
        self._prefix = key_prefix
        self._timeout = timeout_seconds
        self.pinned_time = pinned_time
        """Tests set this to stand in for Redis's clock; None uses Redis TIME."""
        self.slots = RedisSlots(
            client,
            key_prefix=key_prefix,
            lease_seconds=slot_lease_seconds,
            timeout_seconds=timeout_seconds,
        )
        """Callers' concurrency slots, as leases every replica sees."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str,
        timeout_seconds: float,
        slot_lease_seconds: float = 30.0,
    ) -> RedisBackend:
        """A backend on the Redis at `url` (redis:// or rediss://); slots lapse after
        `slot_lease_seconds` without renewal."""
        # A blocking pool: a burst of calls waits briefly for a connection
        # (within the timeout) instead of failing for want of one. A pooled
        # connection a restarted Redis dropped fails its next command: that command
        # goes once more, at once, on a new connection, so no call is refused once
        # Redis is back. (A connection lost mid-command may so charge a call twice:
        # the safe side. A timeout is not retried: the outer timeout rules.)
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        # The health probe pings over a connection of its own: a pool busy with
        # calls must not read as Redis being down.
        probe = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        return cls(
            redis.Redis(connection_pool=pool),
            key_prefix=key_prefix,
            timeout_seconds=timeout_seconds,
            probe_client=probe,
            slot_lease_seconds=slot_lease_seconds,
        )

    def _key(self, key: str, limit: Limit) -> str:
        # Hashed: caller identities can be long or hold any character.
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        return f"{self._prefix}{limit.name}:{digest}"

    async def _run(self, key: str, limit: Limit, cost: float) -> Decision:
        args: list[str] = [repr(limit.capacity), repr(limit.per_second), repr(cost)]
        if self.pinned_time is not None:
            args.append(repr(self.pinned_time))
        try:
            async with asyncio.timeout(self._timeout):
                allowed, tokens, retry, reset = await self._script(
                    keys=[self._key(key, limit)], args=args
                )
        except (RedisError, OSError, TimeoutError) as error:
            raise BackendUnavailable(f"redis: {type(error).__name__}") from None
        return Decision(
            allowed=bool(allowed),
            remaining=float(tokens),
            retry_after=float(retry),
            reset_after=float(reset),
        )

    async def take(self, key: str, limit: Limit, cost: float) -> Decision:
        return await self._run(key, limit, cost)

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        await self._run(key, limit, -amount)

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe_client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            raise BackendUnavailable(f"redis: {type(error).__name__}") from None

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._probe_client is not self._client:
            await self._probe_client.aclose()


__all__ = ["RedisBackend"]
