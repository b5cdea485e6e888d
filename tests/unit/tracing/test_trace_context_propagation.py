"""The client library sends the caller's current W3C trace context with each call."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider

from pixelgate.client.trace_context import TraceContextInterceptor, with_trace_context


class Details(grpc.ClientCallDetails):
    def __init__(self, metadata: Any) -> None:
        self.method = "/pixelgate.v1.ImageService/ListModels"
        self.timeout = 5.0
        self.metadata = metadata
        self.credentials = None
        self.wait_for_ready = None
        self.compression = None


def test_outside_a_span_the_call_is_untouched():
    details = Details((("x", "1"),))
    assert with_trace_context(details) is details


def test_inside_a_span_its_traceparent_is_added_and_any_stale_one_replaced():
    tracer = TracerProvider().get_tracer("caller")
    stale = (("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), ("x", "1"))
    with tracer.start_as_current_span("caller") as span:
        sent = with_trace_context(Details(stale))
    context = span.get_span_context()
    ids = f"{context.trace_id:032x}-{context.span_id:016x}"
    assert sent.metadata is not None
    assert dict(sent.metadata) == {"x": "1", "traceparent": f"00-{ids}-{context.trace_flags:02x}"}
    assert [key for key, _ in sent.metadata].count("traceparent") == 1
    assert (sent.method, sent.timeout) == ("/pixelgate.v1.ImageService/ListModels", 5.0)


def test_the_interceptor_hands_the_traced_call_on():
    tracer = TracerProvider().get_tracer("caller")
    seen: list[grpc.ClientCallDetails] = []

    def continuation(details: grpc.ClientCallDetails, request: Any) -> Any:
        seen.append(details)
        return request

    interceptor = TraceContextInterceptor()
    with tracer.start_as_current_span("caller"):
        assert interceptor.intercept_unary_unary(continuation, Details(None), "req") == "req"
        interceptor.intercept_unary_stream(continuation, Details(None), "req")
    assert all("traceparent" in dict(details.metadata or ()) for details in seen)
    assert len(seen) == 2
