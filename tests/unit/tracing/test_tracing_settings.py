"""Tracing settings and what they build: off, on without an exporter, on with one."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pixelgate.server.core.config import ConfigError, TracingSettings, load_settings
from pixelgate.server.rpc.interception import CallGuard
from pixelgate.server.tracing.call_span import CallSpans
from pixelgate.server.tracing.guard_span import SpannedGuard
from pixelgate.server.tracing.provider import build_tracing, otlp_processor


class Guard(CallGuard):
    def admit(self, method, context):
        return None


def test_tracing_is_on_by_default_and_exports_nothing():
    """By default the chain reads trace context, and no exporter, provider or span exists."""
    settings = load_settings(None)
    assert settings.tracing.enabled
    assert settings.tracing.otlp_endpoint is None
    tracing = build_tracing(settings.tracing)
    assert tracing.provider is None
    [step] = tracing.wrappers()
    assert isinstance(step, CallSpans)
    guard = Guard()
    assert tracing.spanned(guard, "authentication") is guard


def test_tracing_off_puts_nothing_in_the_chain():
    assert build_tracing(TracingSettings(enabled=False)).wrappers() == []


def test_a_span_processor_turns_spans_on_and_is_flushed_on_close():
    """Spans are recorded once they go somewhere; closing shuts the provider down."""
    exporter = InMemorySpanExporter()
    tracing = build_tracing(TracingSettings(), [SimpleSpanProcessor(exporter)])
    assert tracing.provider is not None
    assert isinstance(tracing.spanned(Guard(), "authentication"), SpannedGuard)
    asyncio.run(tracing.aclose())
    tracing.provider.get_tracer("t").start_span("after close").end()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "endpoint",
    ["https://otel-collector.observability:4317", "http://127.0.0.1:4317", "http://localhost:4317"],
)
def test_an_otlp_endpoint_exports_in_batches(endpoint):
    """https anywhere, plain http to a loopback sidecar: a batching OTLP/gRPC exporter."""
    processor = otlp_processor(TracingSettings(otlp_endpoint=endpoint))
    assert isinstance(processor, BatchSpanProcessor)
    processor.shutdown()


@pytest.mark.parametrize(
    "endpoint", ["http://otel-collector.observability:4317", "otel-collector:4317", "ftp://x"]
)
def test_a_plaintext_or_unclear_endpoint_off_the_host_is_refused(endpoint):
    """Spans name callers' traces and methods: they leave the host only over TLS."""
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load_settings(None, tracing={"otlp_endpoint": endpoint})


def test_sample_ratio_is_a_share_also_from_the_environment():
    with pytest.raises(ConfigError, match="sample_ratio"):
        load_settings(None, tracing={"sample_ratio": 1.5})
    assert load_settings(None, environ={"PIXELGATE_TRACING__SAMPLE_RATIO": "0.25"}).tracing == (
        TracingSettings(sample_ratio=0.25)
    )


def test_an_unreadable_otlp_ca_file_stops_start_up(tmp_path):
    settings = TracingSettings(
        otlp_endpoint="https://collector:4317", otlp_ca_file=tmp_path / "missing.pem"
    )
    with pytest.raises(ConfigError, match="otlp_ca_file"):
        build_tracing(settings)
