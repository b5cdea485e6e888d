"""The server's tracing, built from its settings: its own TracerProvider, never the global one.

A provider per server keeps servers in one process (the tests') apart. Spans are
recorded only where they go somewhere: an OTLP endpoint (OTLP over gRPC, batched)
or a span processor the caller hands in (the tests' in-memory exporter). With
neither, no span is made at all and the chain only reads the caller's trace id
for the audit line: tracing on costs a metadata scan per call, not a span.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from pixelgate.server.core.config import ConfigError, TracingSettings
from pixelgate.server.rpc.interception import CallGuard, CallWrapper, MethodFilter, every_method
from pixelgate.server.tracing.call_span import CallSpans
from pixelgate.server.tracing.guard_span import SpannedGuard

log = logging.getLogger("pixelgate.tracing")

INSTRUMENTATION = "pixelgate.server"
FLUSH_SECONDS = 5.0
"""Most a stopping server waits for its last spans to be exported (a collector may be gone)."""


def otlp_processor(settings: TracingSettings) -> SpanProcessor | None:
    """A batching processor exporting over OTLP/gRPC to the configured endpoint, if any."""
    if settings.otlp_endpoint is None:
        return None
    # Imported here: the exporter loads its protobuf schema, which a server without
    # an endpoint never needs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    credentials = None
    if settings.otlp_ca_file is not None:
        try:
            roots = settings.otlp_ca_file.read_bytes()
        except OSError as error:
            raise ConfigError(
                f"cannot read tracing.otlp_ca_file {settings.otlp_ca_file}: {error.strerror}"
            ) from None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    exporter = OTLPSpanExporter(
        endpoint=settings.otlp_endpoint,
        # From the URL alone (the settings checked it), whatever OTEL_EXPORTER_OTLP_INSECURE says.
        insecure=settings.otlp_endpoint.startswith("http://"),
        credentials=credentials,
    )
    return BatchSpanProcessor(exporter)


@dataclass(frozen=True)
class Tracing:
    """How one server traces: the chain's call-span step, guards wrapped in spans, and closing."""

    enabled: bool
    provider: TracerProvider | None = None
    """None: spans go nowhere, so none is made (only the caller's trace id is kept)."""

    @property
    def tracer(self) -> Tracer | None:
        """The server's tracer, where spans are recorded."""
        return None if self.provider is None else self.provider.get_tracer(INSTRUMENTATION)

    def wrappers(self) -> list[CallWrapper]:
        """The chain's call-span step (to place just inside the audit wrapper), if on."""
        return [CallSpans(self.tracer)] if self.enabled else []

    def spanned(self, guard: CallGuard, name: str, where: MethodFilter = every_method) -> CallGuard:
        """`guard`, inside a child span `name` of its call on the methods `where` names, where
        spans are recorded."""
        return guard if self.provider is None else SpannedGuard(guard, name, where)

    async def aclose(self) -> None:
        """Exports what is left (at most FLUSH_SECONDS) and stops the exporters."""
        if self.provider is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self.provider.shutdown), FLUSH_SECONDS)
        except TimeoutError:
            log.warning("spans not exported within %.0f s of stopping: dropped", FLUSH_SECONDS)


def build_tracing(
    settings: TracingSettings, span_processors: Sequence[SpanProcessor] = ()
) -> Tracing:
    """The tracing `settings` ask for; `span_processors` receive the spans too (tests)."""
    if not settings.enabled:
        return Tracing(enabled=False)
    processors = [*span_processors]
    exporting = otlp_processor(settings)
    if exporting is not None:
        processors.append(exporting)
    if not processors:
        return Tracing(enabled=True)
    provider = TracerProvider(
        # A caller's sampling decision is followed; calls that start a trace are sampled
        # at the configured ratio.
        sampler=ParentBased(root=TraceIdRatioBased(settings.sample_ratio)),
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
    )
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(enabled=True, provider=provider)


__all__ = ["FLUSH_SECONDS", "INSTRUMENTATION", "Tracing", "build_tracing", "otlp_processor"]
