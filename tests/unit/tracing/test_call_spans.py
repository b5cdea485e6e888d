"""The call's span step: the caller's trace context in, the status out, the trace id noted."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode

from pixelgate.server.rpc.call_record import CallRecord, current_record, open_record
from pixelgate.server.tracing.call_span import CallSpans, MetadataGetter
from pixelgate.server.tracing.spans import call_trace, child_span

METHOD = "/pixelgate.v1.ImageService/ListModels"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


class Context:
    """The little of a servicer context the step reads."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self._code = code

    def invocation_metadata(self) -> Any:
        return ()

    def code(self) -> grpc.StatusCode | None:
        return self._code


def _in_call(
    metadata: tuple[tuple[str, str | bytes], ...], run: Callable[[], Any]
) -> tuple[CallRecord, Any]:
    """Runs `run` as a call with `metadata` does: in a context of its own, with its record."""

    def call() -> tuple[CallRecord, Any]:
        open_record(METHOD, metadata)
        return current_record(), run()

    return contextvars.copy_context().run(call)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


def test_the_getter_reads_text_values_of_a_key_only():
    """Binary values (a `-bin` key) are never handed to the propagator; a missing key is None."""
    metadata = (("traceparent", PARENT), ("x-bin", b"\x00"), ("tracestate", "a=1"))
    getter = MetadataGetter()
    assert getter.get(metadata, "traceparent") == [PARENT]
    assert getter.get(metadata, "x-bin") is None
    assert getter.get(metadata, "absent") is None
    assert getter.keys(metadata) == ["traceparent", "x-bin", "tracestate"]


@pytest.mark.parametrize(
    ("metadata", "trace_id"),
    [
        ((("authorization", "Bearer x"),), None),
        ((("traceparent", PARENT),), TRACE_ID),
        ((("traceparent", UNSAMPLED),), TRACE_ID),
        ((("traceparent", "00-not-a-trace-01"),), None),
        ((("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01"),), None),
    ],
)
def test_without_a_tracer_only_a_valid_callers_trace_id_is_noted(metadata, trace_id):
    """No exporter, no span: the record gets the caller's trace id, when it sent a valid one."""
    step = CallSpans(None)
    record, state = _in_call(metadata, lambda: step.enter(METHOD, Context()))
    assert state is None
    assert record.trace_id == trace_id
    assert step.exit(state, METHOD, Context(), None) is None


def test_the_call_span_is_a_child_of_the_callers_and_current_for_the_call(tracer, exporter):
    """Its parent is the caller's span; child spans opened during the call hang under it."""
    step = CallSpans(tracer)

    def call() -> Any:
        span = step.enter(METHOD, Context())
        with child_span("authentication"):
            pass
        step.exit(span, METHOD, Context(), None)
        return span

    record, _ = _in_call((("traceparent", PARENT), ("tracestate", "vendor=1")), call)
    authentication, span = exporter.get_finished_spans()
    assert record.trace_id == TRACE_ID
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.context.trace_state.get("vendor") == "1"
    assert span.name == "pixelgate.v1.ImageService/ListModels"
    assert authentication.parent is not None
    assert authentication.parent.span_id == span.context.span_id
    assert call_trace() is None  # nothing leaks out of the call's context


@pytest.mark.parametrize(
    ("error", "code", "status", "failed"),
    [
        (None, None, "OK", False),
        (grpc.aio.AbortError(), grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", False),
        (grpc.aio.AbortError(), grpc.StatusCode.INTERNAL, "INTERNAL", True),
        (RuntimeError("the prompt was: herons"), None, "UNKNOWN", True),
        (GeneratorExit(), None, "CANCELLED", False),
    ],
)
def test_the_span_ends_with_the_status_the_caller_sees(
    tracer, exporter, error, code, status, failed
):
    """The status name and number; only a server fault marks the span failed, and no
    exception text is ever recorded."""
    step = CallSpans(tracer)
    _in_call((), lambda: step.exit(step.enter(METHOD, Context()), METHOD, Context(code), error))
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == status
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode[status].value[0]
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "pixelgate.v1.ImageService"
    assert span.attributes["rpc.method"] == "ListModels"
    assert (span.status.status_code is StatusCode.ERROR) == failed
    assert "herons" not in repr(span.to_json())


def test_a_root_call_not_sampled_records_nothing_and_names_no_trace(exporter):
    """With a ratio of 0, a call that starts its own trace is neither recorded nor audited
    with a trace id (it would name a trace that exists nowhere); a sampled caller's is."""
    provider = TracerProvider(sampler=ParentBased(root=TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    step = CallSpans(provider.get_tracer("test"))

    def call() -> Any:
        span = step.enter(METHOD, Context())
        step.exit(span, METHOD, Context(), None)
        return span

    root, state = _in_call((), call)
    assert state is None and root.trace_id is None
    joined, _ = _in_call((("traceparent", PARENT),), call)
    assert joined.trace_id == TRACE_ID
    assert len(exporter.get_finished_spans()) == 1
