"""Health that follows what serving depends on: the model, and the shared limits backend.

ServingHealth says SERVING for the whole server and its services only while every
condition holds. BackendProbe watches a rate-limit backend (a ping every interval,
sooner when a call saw otherwise) and reports each change of reachability.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from grpc_health.v1 import health_pb2

from pixelgate.server.limits.buckets import BackendUnavailable

log = logging.getLogger("pixelgate.health")


class Pingable(Protocol):
    """A backend that can say whether it answers."""

    async def ping(self) -> None:
        """Returns once the backend answers; raises BackendUnavailable otherwise."""
        ...


class StatusSetter(Protocol):
    """Where health statuses go (grpc's health servicer)."""

    async def set(self, service: str, status: int) -> None:
        """Sets `service`'s serving status."""
        ...


class BackendProbe:
    """Pings a backend every `interval_seconds` and reports each change of reachability
    through `on_change`; what calls see (`observed`) makes it ping at once."""

    def __init__(
        self,
        backend: Pingable,
        *,
        interval_seconds: float,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._backend = backend
        self._interval = interval_seconds
        self._on_change = on_change
        self._reachable = True  # until a ping says otherwise
        self._wake = asyncio.Event()

    def observed(self, reachable: bool) -> None:
        """What a call to the backend just saw. Only a ping decides (a call's failure may
        be its own, a busy pool say); a call that disagrees with it asks for one now."""
        if reachable != self._reachable:
            self._wake.set()

    async def check(self) -> bool:
        """Pings once, reports a change, and returns whether the backend answered."""
        try:
            await self._backend.ping()
            reachable = True
        except BackendUnavailable:
            reachable = False
        except Exception:  # a probe that cannot tell must not report a healthy backend
            log.exception("the rate-limit backend probe failed")
            reachable = False
        if reachable != self._reachable:
            self._reachable = reachable
            if reachable:
                log.info("the rate-limit backend answers again")
            else:
                log.warning("the rate-limit backend does not answer")
            await self._on_change(reachable)
        return reachable

    async def run(self) -> None:
        """Checks now, then every interval or sooner when woken, until cancelled."""
        while True:
            self._wake.clear()
            await self.check()
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass


class ServingHealth:
    """The health status of the whole server and its services: SERVING only while every
    named condition holds, NOT_SERVING otherwise. Every condition starts unmet."""

    def __init__(
        self, servicer: StatusSetter, services: Sequence[str], conditions: Iterable[str]
    ) -> None:
        self._servicer = servicer
        self._services = tuple(services)
        self._holds = dict.fromkeys(conditions, False)
        # One update at a time, so the status last written follows the latest conditions.
        self._lock = asyncio.Lock()

    async def set(self, condition: str, holds: bool) -> None:
        """Records whether `condition` holds and publishes the status that follows."""
        if condition not in self._holds:
            raise KeyError(condition)
        async with self._lock:
            self._holds[condition] = holds
            serving = all(self._holds.values())
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in self._services:
                await self._servicer.set(service, status)


__all__ = ["BackendProbe", "Pingable", "ServingHealth", "StatusSetter"]
