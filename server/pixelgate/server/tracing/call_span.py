"""The call's span: one per call, a child of the caller's W3C trace context, with its status.

A step of the interceptor chain, just inside the audit wrapper: it reads the
caller's `traceparent` (and `tracestate`) from the request metadata, opens the
call's server span under it and makes that span current for the guards and the
handler, and notes the trace id in the call's record for the audit line. As the
call ends it records the final status (the one the caller sees: error mapping
runs inside it). Attributes follow the RPC conventions (`rpc.system`,
`rpc.service`, `rpc.method`, the status); never metadata values, so never a token.

Without a tracer (no exporter: spans would go nowhere) it opens no span, and a
call pays for one scan of its metadata; one whose caller sent a trace context
still gets that trace id in its audit line.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pixelgate.server.rpc.call_record import Metadata, current_record
from pixelgate.server.rpc.call_status import call_status
from pixelgate.server.rpc.interception import CallWrapper, request_metadata
from pixelgate.server.tracing.spans import in_call_context

TRACEPARENT = "traceparent"

SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Statuses that mark a server span failed (OpenTelemetry's gRPC conventions); a refusal
(UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...) is the server doing its job."""


class MetadataGetter(Getter[Metadata]):
    """Reads propagation fields from gRPC request metadata (a tuple of key, value pairs)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        """Every text value of `key` (gRPC keys are lower case), or None."""
        values = [value for name, value in carrier if name == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        """Every key in the metadata."""
        return [name for name, _ in carrier]


_GETTER = MetadataGetter()
_W3C = TraceContextTextMapPropagator()


def _trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


class CallSpans(CallWrapper):
    """Opens each call's span under the caller's trace context and ends it with the call's
    status; `tracer` None: no span, only the caller's trace id for the audit line."""

    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer = tracer
        self._methods: dict[str, tuple[str, dict[str, str]]] = {}

    def enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Span | None:
        metadata = request_metadata(context)
        if self._tracer is None:
            self._note_callers_trace(metadata)
            return None
        parent = _W3C.extract(metadata, getter=_GETTER)
        name, attributes = self._described(method)
        span = self._tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
        if span.is_recording() or trace.get_current_span(parent).get_span_context().is_valid:
            # An unsampled call of the caller's trace is still in that trace.
            current_record().trace_id = _trace_id(span)
        if not span.is_recording():
            return None
        # Not detached: the context belongs to the call's own task, which ends with it.
        otel_context.attach(in_call_context(self._tracer, span, parent))
        return span

    def _note_callers_trace(self, metadata: Metadata) -> None:
        for key, _ in metadata:
            if key == TRACEPARENT:
                break
        else:
            return  # most calls: nothing more to do
        parent = trace.get_current_span(_W3C.extract(metadata, getter=_GETTER))
        if parent.get_span_context().is_valid:
            current_record().trace_id = _trace_id(parent)

    def _described(self, method: str) -> tuple[str, dict[str, str]]:
        # Methods are the registered handlers' (a bounded set): each is described once.
        known = self._methods.get(method)
        if known is None:
            name = method.lstrip("/")
            service, _, rpc_method = name.rpartition("/")
            known = name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}
            self._methods[method] = known
        return known

    def exit(
        self,
        state: Span | None,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        if state is None:
            return
        code = call_status(context, error)
        state.set_attributes(
            {"rpc.grpc.status_code": code.value[0], "rpc.response.status_code": code.name}
        )
        if code in SERVER_FAULTS:
            state.set_status(Status(StatusCode.ERROR, code.name))
        state.end()


__all__ = ["SERVER_FAULTS", "TRACEPARENT", "CallSpans", "MetadataGetter"]
