"""A call's child spans, opened where its work runs: on the serving loop or in a worker thread.

The call's step (call_span.py) puts the call's span, and beside it the server's
tracer, in the call's OpenTelemetry context, and only when that span records:
`call_trace()` finds them there (None otherwise, at the cost of a lookup), and a
job takes them along to its worker thread. Only the OpenTelemetry API is used
here, so the engine and the data plane can open spans without knowing the SDK or
gRPC. A span never holds a token, a prompt or an exception's text: a failure is
named by its exception type only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]

_TRACER_KEY = otel_context.create_key("pixelgate-call-tracer")


def in_call_context(tracer: Tracer, span: Span, parent: Context) -> Context:
    """`parent` with the call's `span` current and the server's `tracer` beside it."""
    return otel_context.set_value(_TRACER_KEY, tracer, trace.set_span_in_context(span, parent))


def failed(span: Span, error: BaseException) -> None:
    """Marks `span` failed by `error`'s type; its message may quote the caller, so never that."""
    name = type(error).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))


@dataclass(frozen=True, slots=True)
class CallTrace:
    """Where a call's child spans go: the server's tracer, and the context with the call's span."""

    tracer: Tracer
    context: Context

    def start(
        self, name: str, attributes: Attributes | None = None, start_time: int | None = None
    ) -> Span:
        """Starts a child span of the call (`start_time` in ns since the epoch: now if None);
        the caller ends it."""
        return self.tracer.start_span(
            name, self.context, attributes=attributes, start_time=start_time
        )

    @contextmanager
    def span(self, name: str, attributes: Attributes | None = None) -> Iterator[Span]:
        """A child span of the call around the block; an exception out of it marks it failed."""
        span = self.start(name, attributes)
        try:
            yield span
        except Exception as error:
            failed(span, error)
            raise
        finally:
            span.end()


def call_trace() -> CallTrace | None:
    """The current call's trace, or None when the call records no span (tracing off, no
    exporter, or not sampled)."""
    current = otel_context.get_current()
    tracer = current.get(_TRACER_KEY)
    if tracer is None:
        return None
    return CallTrace(tracer, current)  # type: ignore[arg-type]  # only in_call_context sets it


def child_span(
    name: str, attributes: Attributes | None = None
) -> AbstractContextManager[Span | None]:
    """A child span of the current call around a block, or nothing when the call records none."""
    trace_of_call = call_trace()
    if trace_of_call is None:
        return nullcontext()
    return trace_of_call.span(name, attributes)


__all__ = ["Attributes", "CallTrace", "call_trace", "child_span", "failed", "in_call_context"]
