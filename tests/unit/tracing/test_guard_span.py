"""A guard in a span: where asked, around its whole check (a pending one too), failed when it
refuses; elsewhere, and outside a recorded call, the guard alone."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, set_span_in_context

from pixelgate.server.core.errors import Unauthenticated
from pixelgate.server.rpc.interception import CallGuard, Pending
from pixelgate.server.tracing.guard_span import SpannedGuard
from pixelgate.server.tracing.spans import in_call_context

GENERATE = "/pixelgate.v1.ImageService/GenerateImage"
LIST = "/pixelgate.v1.ImageService/ListModels"


class Guard(CallGuard):
    """Admits at once, after a wait, or refuses."""

    def __init__(self, outcome: str) -> None:
        super().__init__()
        self.outcome = outcome

    def admit(self, method: str, context: Any) -> Pending:
        if self.outcome == "refuse":
            raise Unauthenticated("token expired")
        if self.outcome == "wait":
            return asyncio.sleep(0)
        return None


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _admit_in_call(exporter: InMemorySpanExporter, guard: CallGuard, method: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    span = tracer.start_span("call")

    async def call() -> None:
        otel_context.attach(in_call_context(tracer, span, set_span_in_context(span)))
        pending = guard.admit(method, None)
        if pending is not None:
            await pending

    contextvars.copy_context().run(asyncio.run, call())


@pytest.mark.parametrize("outcome", ["at once", "wait"])
def test_the_span_covers_the_whole_check(exporter, outcome):
    _admit_in_call(exporter, SpannedGuard(Guard(outcome), "authentication"), GENERATE)
    [span] = exporter.get_finished_spans()
    assert span.name == "authentication"
    assert span.status.status_code is StatusCode.UNSET


def test_a_refusal_marks_the_span_failed_by_its_type_only(exporter):
    with pytest.raises(Unauthenticated):
        _admit_in_call(exporter, SpannedGuard(Guard("refuse"), "authentication"), GENERATE)
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "Unauthenticated"
    assert "expired" not in repr(span.to_json())


def test_only_the_methods_asked_for_get_the_span(exporter):
    guard = SpannedGuard(Guard("at once"), "authentication", lambda m: m == GENERATE)
    _admit_in_call(exporter, guard, LIST)
    assert exporter.get_finished_spans() == ()


def test_outside_a_recorded_call_the_guard_runs_alone():
    guard = Guard("refuse")
    with pytest.raises(Unauthenticated):
        SpannedGuard(guard, "authentication").admit(GENERATE, None)
    assert SpannedGuard(Guard("at once"), "authentication").applies_to is guard.applies_to
