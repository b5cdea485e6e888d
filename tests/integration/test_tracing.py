"""Traces: a call joins its caller's trace, with a span per stage, and the audit line names it.

The server's spans go to an in-memory exporter handed to start_server; the
caller's spans come from a tracer provider of the test's own (never the global
one), and travel to the server through the client library, over real mTLS.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from support import ServerUnderTest, wait_for

from pixelgate.client import PermissionDenied, Unauthenticated

GENERATE = "pixelgate.v1.ImageService/GenerateImage"
LIST_MODELS = "pixelgate.v1.ImageService/ListModels"
STAGES = {"authentication", "queue wait", "denoising", "encoding", "streaming"}
PROMPT = "a secret prompt about herons"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the traced server's spans end up."""
    return InMemorySpanExporter()


@pytest.fixture
def traced_server(
    start_server: Callable[..., ServerUnderTest], exporter: InMemorySpanExporter
) -> Callable[..., ServerUnderTest]:
    """Starts servers whose spans go to `exporter` (conftest's start_server stops them)."""

    def _start(**overrides: Any) -> ServerUnderTest:
        return start_server(span_processors=[SimpleSpanProcessor(exporter)], **overrides)

    return _start


@pytest.fixture
def caller_tracer() -> Iterator[Tracer]:
    """The calling application's tracer (its own provider: the global one stays untouched)."""
    provider = TracerProvider()
    yield provider.get_tracer("caller")
    provider.shutdown()


def _call_spans(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    def ended() -> list[ReadableSpan]:
        found = [span for span in exporter.get_finished_spans() if span.name == name]
        return found if len(found) >= count else []

    spans: list[ReadableSpan] = wait_for(ended, 10, f"{count} {name} spans")
    return spans


def _children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def _hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def test_a_generation_joins_the_callers_trace_with_a_span_per_stage(
    traced_server, exporter, connect, mint, caller_tracer
):
    """The call's span is a child of the caller's span, with children for authentication,
    queue wait, denoising (its steps and batch), encoding and streaming, all in that trace;
    the audit line names the trace."""
    server = traced_server()
    token = mint(subject="heron-watcher")
    with caller_tracer.start_as_current_span("caller") as caller:
        [image] = connect(server, token=token).generate(PROMPT, steps=3, width=128, height=64)
    trace_id = caller.get_span_context().trace_id

    [call] = _call_spans(exporter, GENERATE)
    assert call.kind is SpanKind.SERVER
    assert call.context.trace_id == trace_id
    assert call.parent is not None and call.parent.is_remote
    assert call.parent.span_id == caller.get_span_context().span_id
    assert call.attributes is not None
    assert call.attributes["rpc.system"] == "grpc"
    assert call.attributes["rpc.service"] == "pixelgate.v1.ImageService"
    assert call.attributes["rpc.method"] == "GenerateImage"
    assert call.attributes["rpc.response.status_code"] == "OK"
    assert call.status.status_code is StatusCode.UNSET

    children = _children(exporter, call)
    assert {span.name for span in children} == STAGES
    assert {span.context.trace_id for span in children} == {trace_id}
    [denoising] = [span for span in children if span.name == "denoising"]
    assert denoising.attributes is not None
    assert denoising.attributes["pixelgate.steps"] == 3
    assert denoising.attributes["pixelgate.steps_run"] == 3
    assert denoising.attributes["pixelgate.batch.images"] == 1
    [streaming] = [span for span in children if span.name == "streaming"]
    assert streaming.attributes is not None
    assert streaming.attributes["pixelgate.image.bytes"] == len(image.data)
    # In order: waiting, then denoising, then encoding, then streaming.
    by_name = {span.name: span for span in children}
    order = ["queue wait", "denoising", "encoding", "streaming"]
    for earlier, later in itertools.pairwise(order):
        assert by_name[earlier].end_time <= by_name[later].start_time  # type: ignore[operator]

    [entry] = [e for e in server.audit_entries() if e["method"] == f"/{GENERATE}"]
    assert entry["trace_id"] == _hex(trace_id)

    # No span holds the prompt or the token, in a name or an attribute.
    written = repr(
        [(span.name, dict(span.attributes or {})) for span in exporter.get_finished_spans()]
    )
    assert "herons" not in written
    assert token.split(".")[2] not in written


def test_a_call_without_a_trace_context_starts_a_new_trace(traced_server, exporter, connect):
    """A caller with no active span gets a root span, and the audit line carries its trace.
    A trivial call has its span and no child: they would cost more than its work."""
    server = traced_server()
    connect(server).list_models()

    [call] = _call_spans(exporter, LIST_MODELS)
    assert call.parent is None
    assert _children(exporter, call) == []
    [entry] = server.audit_entries()
    assert entry["trace_id"] == _hex(call.context.trace_id)


def test_a_refused_calls_span_carries_its_status(traced_server, exporter, connect, mint):
    """A bad token: the call's span says UNAUTHENTICATED and its authentication span failed;
    a missing scope: PERMISSION_DENIED. The audit lines carry their traces."""
    server = traced_server()
    with pytest.raises(Unauthenticated):
        connect(server, token=mint() + "x").generate(PROMPT)
    with pytest.raises(PermissionDenied):
        connect(server, token=mint(scopes=["images:generate"])).list_models()

    [refused] = _call_spans(exporter, GENERATE)
    [denied] = _call_spans(exporter, LIST_MODELS)
    assert refused.attributes is not None and denied.attributes is not None
    assert refused.attributes["rpc.response.status_code"] == "UNAUTHENTICATED"
    assert refused.attributes["rpc.grpc.status_code"] == 16
    assert denied.attributes["rpc.response.status_code"] == "PERMISSION_DENIED"
    [authentication] = _children(exporter, refused)
    assert authentication.status.status_code is StatusCode.ERROR
    assert authentication.attributes is not None
    assert authentication.attributes["error.type"] == "Unauthenticated"

    audited = {e["status"]: e["trace_id"] for e in server.audit_entries(2)}
    assert audited == {
        "UNAUTHENTICATED": _hex(refused.context.trace_id),
        "PERMISSION_DENIED": _hex(denied.context.trace_id),
    }


def test_a_callers_decision_not_to_sample_is_followed(traced_server, exporter, connect):
    """An unsampled caller's call records no span, yet its audit line names the caller's trace."""
    server = traced_server()
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("caller")
    with unsampled.start_as_current_span("caller") as caller:
        connect(server).list_models()

    [entry] = server.audit_entries()
    assert entry["trace_id"] == _hex(caller.get_span_context().trace_id)
    assert exporter.get_finished_spans() == ()


def test_without_an_exporter_only_the_callers_trace_id_is_kept(
    server, connect, caller_tracer, start_server
):
    """Tracing on by default with nothing to export to: the audit line still names a
    caller's trace, and a call outside any trace has no trace id; tracing off reads none."""
    with caller_tracer.start_as_current_span("caller") as caller:
        connect(server).list_models()
    connect(server).list_models()
    traced, untraced = server.audit_entries(2)
    assert traced["trace_id"] == _hex(caller.get_span_context().trace_id)
    assert "trace_id" not in untraced

    off = start_server(tracing={"enabled": False})
    with caller_tracer.start_as_current_span("caller"):
        connect(off).list_models()
    [entry] = off.audit_entries()
    assert "trace_id" not in entry
