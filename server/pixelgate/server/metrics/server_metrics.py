"""A server's metrics, whole: its provider, its instruments, its `/metrics` listener.

The composition root builds one per server when metrics are on, hands its pieces to the
chain, the engine and the data plane, registers the state it reads at scrape time, and
closes it as the server stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from opentelemetry.metrics import Meter

from pixelgate.server.core.config import MetricsSettings
from pixelgate.server.metrics.endpoint import MetricsEndpoint, start_endpoint
from pixelgate.server.metrics.grpc_calls import CallMetrics
from pixelgate.server.metrics.instruments import ServiceMetrics
from pixelgate.server.metrics.principals import PrincipalLabels
from pixelgate.server.metrics.provider import MeterSetup, build_meter_provider

METER_NAME = "pixelgate.server"


@dataclass
class ServerMetrics:
    """What a server records with, and where it is scraped."""

    setup: MeterSetup
    meter: Meter
    """For the instruments that read state at scrape time (state_gauges.py)."""
    service: ServiceMetrics
    calls: CallMetrics
    endpoint: MetricsEndpoint | None = None

    @property
    def port(self) -> int | None:
        """Where `/metrics` listens, once started."""
        return None if self.endpoint is None else self.endpoint.port

    def start(self, address: str) -> None:
        """Starts serving `/metrics` at `address` (OSError when it cannot listen)."""
        self.endpoint = start_endpoint(address, self.setup.registry)

    async def aclose(self) -> None:
        """Stops the listener, then the provider (off the loop: both block)."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)
        await asyncio.to_thread(self.setup.shutdown)


def build_server_metrics(settings: MetricsSettings) -> ServerMetrics:
    """The provider and instruments for one server (not yet listening)."""
    setup = build_meter_provider()
    meter = setup.provider.get_meter(METER_NAME)
    principals = (
        PrincipalLabels(settings.max_principal_labels) if settings.principal_labels else None
    )
    return ServerMetrics(
        setup=setup,
        meter=meter,
        service=ServiceMetrics(meter, principals),
        calls=CallMetrics(meter, setup.registry),
    )


__all__ = ["METER_NAME", "ServerMetrics", "build_server_metrics"]
