"""Rate-limit guards: per peer address before authentication, per caller after.

The peer bucket bounds what an unauthenticated flood can cost (TLS and token
checks are not free); the caller bucket, keyed on the verified principal and
never on anything the caller chooses freely, keeps one client from starving
the others.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.buckets import Limiter
from pixelgate.server.limits.quota_fields import over_limit
from pixelgate.server.rpc.call_record import current_principal, current_record
from pixelgate.server.rpc.interception import CallGuard, MethodFilter, Pending


def peer_address(peer: str) -> str:
    """The peer's address without its port: "ipv4:10.0.0.7:5123" -> "ipv4:10.0.0.7"."""
    address, _, port = peer.rpartition(":")
    return address if port.isdigit() and address else peer


class _BucketGuard(CallGuard):
    """Takes one unit per call from a bucket keyed by `_key`, refusing when it is empty."""

    who = "caller"

    def __init__(self, limiter: Limiter, limit: Limit, applies_to: MethodFilter) -> None:
        super().__init__(applies_to)
        self._limiter = limiter
        self._limit = limit

    def _key(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        raise NotImplementedError

    def _allowed(self, decision: Decision) -> None:
        """Called for every call let through."""

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Pending:
        key = self._key(context)
        decision = self._limiter.decided_now(key, self._limit)
        if decision is None:  # buckets elsewhere (Redis): wait for the answer
            return self._take(key)
        self._judge(decision)
        return None

    async def _take(self, key: str) -> None:
        self._judge(await self._limiter.take(key, self._limit))

    def _judge(self, decision: Decision) -> None:
        if not decision.allowed:
            raise over_limit(self._limit, decision, who=self.who, unit="calls")
        self._allowed(decision)


class PeerRateLimit(_BucketGuard):
    """Refuses calls from a peer address over its rate, before any token check."""

    who = "peer address"

    def _key(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        # The audit wrapper, outermost, already asked gRPC for the peer: reuse its string.
        return peer_address(current_record().peer or context.peer())


class CallerRateLimit(_BucketGuard):
    """Refuses calls over the caller's request rate; records what is left."""

    def _key(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return current_principal().key

    def _allowed(self, decision: Decision) -> None:
        current_record().quota.append((self._limit, decision))


__all__ = ["CallerRateLimit", "PeerRateLimit", "peer_address"]
