"""The server's MeterProvider and the Prometheus registry its one reader fills.

The OpenTelemetry API rather than prometheus-client's own metric classes: the gRPC call
metrics are OpenTelemetry instruments (gRFC A66 names), so ours share their provider and
their `/metrics`, and the exporter is one reader away should OTLP be wanted. The registry
is the server's own, never prometheus-client's global one: a test process runs several
servers, and each one's scrape must show its own figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

SERVICE_NAME = "pixelgate"


@dataclass(frozen=True)
class MeterSetup:
    """A server's meter provider and the registry `/metrics` renders."""

    provider: MeterProvider
    registry: CollectorRegistry

    def shutdown(self) -> None:
        """Stops the provider; its reader leaves the registry."""
        self.provider.shutdown()


def build_meter_provider() -> MeterSetup:
    """A provider whose one reader fills a registry of its own."""
    registry = CollectorRegistry(auto_describe=True)
    # Scope labels would add the instrumentation library's name to every series: noise.
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": SERVICE_NAME}),
        # The text format Prometheus scrapes has no exemplars: looking at the current
        # span for one on every measurement would be work for nothing.
        exemplar_filter=AlwaysOffExemplarFilter(),
        shutdown_on_exit=False,  # the server shuts it down as it stops
    )
    return MeterSetup(provider, registry)


__all__ = ["SERVICE_NAME", "MeterSetup", "build_meter_provider"]
