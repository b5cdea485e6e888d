"""The gate a replica closes as it starts draining: from then on every call but health is
refused UNAVAILABLE with pushback, which a fleet client's retry policy sends to another
replica.

The port stays open a moment after health turns NOT_SERVING (so clients watching health
move away before it closes: a call cut off by the closing port is CANCELLED, which no
client retries); this gate makes sure nothing new is served in that moment.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from pixelgate.server.core.errors import DRAINING_MESSAGE, ReplicaBusy
from pixelgate.server.rpc.interception import CallGuard, MethodFilter, Pending, every_method


class DrainingGate(CallGuard):
    """Admits calls until `close()`; refuses them with ReplicaBusy after."""

    def __init__(self, applies_to: MethodFilter = every_method) -> None:
        super().__init__(applies_to)
        self.closed = False

    def close(self) -> None:
        """Refuses every call from now on (the replica is draining)."""
        self.closed = True

    def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Pending:
        if self.closed:
            raise ReplicaBusy(DRAINING_MESSAGE)
        return None


__all__ = ["DrainingGate"]
