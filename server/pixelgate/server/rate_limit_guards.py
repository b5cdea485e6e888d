"""Rate-limit guards: per peer address before authentication, per caller after.

The peer bucket bounds what an unauthenticated flood can cost (TLS and token
checks are not free); the caller bucket, keyed on the verified principal and
never on anything the caller chooses freely, keeps one client from starving
the others.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from pixelgate.server.call_record import current_record
from pixelgate.server.interception import CallGuard, MethodFilter
from pixelgate.server.principal import current_principal
from pixelgate.server.rate_limit import Limit, Limiter
from pixelgate.server.rate_limit_fields import over_limit


def peer_address(peer: str) -> str:
    """The peer's address without its port: "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7"."""
    address, _, port = peer.rpartition(":")
    return address if port.isdigit() and address else peer


class PeerRateLimit(CallGuard):
    """Refuses calls from a peer address over its rate, before any token check."""

    def __init__(self, limiter: Limiter, limit: Limit, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._limiter = limiter
        self._limit = limit

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        decision = await self._limiter.take(peer_address(context.peer()), self._limit)
        if not decision.allowed:
            raise over_limit(self._limit, decision, who="peer address", unit="calls")


class CallerRateLimit(CallGuard):
    """Refuses calls over the caller's request rate; records what is left."""

    def __init__(self, limiter: Limiter, limit: Limit, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._limiter = limiter
        self._limit = limit

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        decision = await self._limiter.take(current_principal().key, self._limit)
        if not decision.allowed:
            raise over_limit(self._limit, decision, who="caller", unit="calls")
        current_record().quota.append((self._limit, decision))


__all__ = ["CallerRateLimit", "PeerRateLimit", "peer_address"]
