"""Propagates the caller's current OpenTelemetry trace context to the server, as W3C metadata.

A call made inside an active span carries `traceparent` (and `tracestate`) in
its metadata, so the server's span for it joins the caller's trace; outside one,
nothing is added. Only the W3C trace context travels: never baggage, which an
application may fill with things a server should not see. Needs only the
OpenTelemetry API: the application brings its SDK, or has none and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
_FIELDS = frozenset(_W3C.fields)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Details(_CallDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails with its fields (grpc's own class is abstract)."""


def with_trace_context(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
    """`details` with the current trace context in its metadata; unchanged outside a span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    if not carrier:
        return details
    kept = [(key, value) for key, value in details.metadata or () if key not in _FIELDS]
    return _Details(
        details.method,
        details.timeout,
        (*kept, *carrier.items()),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class TraceContextInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the current trace context to every unary and server-streaming call."""

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallFuture[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> grpc.CallFuture[Any]:
        return continuation(with_trace_context(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallIterator[Any]],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> grpc.CallIterator[Any]:
        return continuation(with_trace_context(client_call_details), request)


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with the caller's trace context added to each call."""
    return grpc.intercept_channel(channel, TraceContextInterceptor())


__all__ = ["TraceContextInterceptor", "traced_channel", "with_trace_context"]
