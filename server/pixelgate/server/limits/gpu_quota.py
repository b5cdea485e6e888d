"""GPU quota: what a generation costs, and who may spend how much of the GPU.

A request's cost grows with width x height x steps x images and the model's
cost factor, in units of one 512x512 step of a factor-1 model. Each caller
has a cost bucket and a cap on generations in flight; a request costing
more than the whole bucket is refused outright, and the cost of steps a
cancelled or failed generation never ran is given back. The cap holds across
the fleet when limits live in Redis: each slot is a lease, renewed while its
generation runs and lapsing if its replica dies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pixelgate.server.core.errors import ResourceExhausted
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.principal import Principal
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.buckets import Limiter
from pixelgate.server.limits.concurrency_slots import SlotLease
from pixelgate.server.limits.quota_fields import beyond_capacity, over_limit

UNIT_PIXELS = 512 * 512
"""One cost unit is one denoising step over this many pixels."""


class CostModel:
    """Prices a request in GPU cost units."""

    def __init__(self, factors: Mapping[str, float] | None = None) -> None:
        self._factors = dict(factors or {})

    def cost(self, request: GenerationRequest) -> float:
        """width x height / 512^2 x steps x images x the model's factor."""
        factor = self._factors.get(request.model_id, 1.0)
        pixels = request.width * request.height
        return pixels / UNIT_PIXELS * request.steps * len(request.seeds) * factor


@dataclass
class Charge:
    """The cost charged for one generation, and how much of it was used."""

    cost: float
    decision: Decision
    steps_done: int = 0
    steps_total: int = 1

    @property
    def unused(self) -> float:
        """Cost of the steps never run: all of it for a job that never ran."""
        done = min(self.steps_done, self.steps_total) / max(1, self.steps_total)
        return self.cost * (1.0 - done)


class GpuQuota:
    """Charges cost and holds a concurrency slot per caller for each generation."""

    def __init__(
        self, limiter: Limiter, limit: Limit, costs: CostModel, *, max_concurrent: int
    ) -> None:
        self._limiter = limiter
        self.limit = limit
        self._costs = costs
        self._max_concurrent = max_concurrent

    @asynccontextmanager
    async def admit(
        self, principal: Principal, request: GenerationRequest
    ) -> AsyncIterator[Charge]:
        """Charges `request`; refunds what the generation did not use when it ends."""
        cost = self._costs.cost(request)
        if cost > self.limit.capacity:
            raise beyond_capacity(self.limit, cost, who="caller", unit="GPU cost units")
        key = principal.key
        # Taken before the cost: no two calls slip past the cap while the cost is weighed.
        lease = await self._limiter.acquire_slot(key, self._max_concurrent)
        if lease is None:
            raise ResourceExhausted(
                f"at most {self._max_concurrent} generations per caller at once;"
                " wait for one to finish"
            )
        renewal = self._keep_renewed(lease)
        try:
            decision = await self._limiter.take(key, self.limit, cost)
            if not decision.allowed:
                raise over_limit(self.limit, decision, who="caller", unit="GPU cost units")
            charge = Charge(cost=cost, decision=decision, steps_total=request.steps)
            try:
                yield charge
            finally:
                await self._limiter.give_back(key, self.limit, charge.unused)
        finally:
            try:
                if renewal is not None:
                    renewal.cancel()
                    # Waits for the task to end without re-raising what ended it, and
                    # without swallowing a cancellation of this call itself.
                    await asyncio.wait([renewal])
            finally:
                await self._limiter.release_slot(lease)

    def _keep_renewed(self, lease: SlotLease) -> asyncio.Task[None] | None:
        """A task renewing `lease` until cancelled; None when leases never lapse."""
        every = lease.store.renew_every
        if every is None:
            return None

        async def renew() -> None:
            while True:
                await asyncio.sleep(every)
                await self._limiter.renew_slot(lease)

        return asyncio.create_task(renew(), name="pixelgate-slot-renewal")


__all__ = ["UNIT_PIXELS", "Charge", "CostModel", "GpuQuota"]
