"""An engine job's spans: one queue wait however the job leaves the queue, a denoising span
per traced job of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pixelgate.server.tracing.job_spans import JobSpans, denoising
from pixelgate.server.tracing.spans import CallTrace, in_call_context


@dataclass
class Job:
    trace: JobSpans | None
    steps_run: int = 0
    cancelled: bool = False


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def call(exporter: InMemorySpanExporter) -> CallTrace:
    """A call's trace, as the call's step leaves it in the context."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    span = tracer.start_span("call")
    return CallTrace(tracer, in_call_context(tracer, span, trace.set_span_in_context(span)))


def test_the_queue_wait_is_written_once_from_queueing_to_leaving(call, exporter):
    """Taken by a worker, then finished: one span, starting when the job was queued."""
    spans = JobSpans(call)
    spans.left_queue()
    spans.left_queue()
    [wait] = exporter.get_finished_spans()
    assert wait.name == "queue wait"
    assert wait.start_time is not None and wait.end_time is not None
    assert wait.start_time <= wait.end_time


def test_each_traced_job_of_a_batch_gets_its_denoising_span(call, exporter):
    """With the steps asked for and run, and the batch's size; untraced members get none."""
    jobs = [Job(JobSpans(call)), Job(None), Job(JobSpans(call))]
    with denoising(jobs, model="tiny", steps=4, batch_images=3):
        for job in jobs:
            job.steps_run = 4
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["denoising", "denoising"]
    for span in spans:
        assert span.attributes is not None
        assert dict(span.attributes) == {
            "pixelgate.model": "tiny",
            "pixelgate.steps": 4,
            "pixelgate.steps_run": 4,
            "pixelgate.batch.images": 3,
            "pixelgate.batch.jobs": 3,
        }


def test_a_cancelled_job_is_no_failure_and_a_failed_batch_is(call, exporter):
    """A caller who went away: steps run so far, cancelled; a failing pipeline: failed, by type."""
    gone, waiting = Job(JobSpans(call), steps_run=2, cancelled=True), Job(JobSpans(call))
    with (
        pytest.raises(RuntimeError),
        denoising([gone, waiting], model="m", steps=4, batch_images=2),
    ):
        raise RuntimeError("out of memory for 'a secret prompt'")
    cancelled, failed = exporter.get_finished_spans()
    assert cancelled.attributes is not None and failed.attributes is not None
    assert cancelled.attributes["pixelgate.cancelled"] is True
    assert cancelled.attributes["pixelgate.steps_run"] == 2
    assert cancelled.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    assert "secret" not in repr(failed.to_json())


def test_no_traced_job_no_span(exporter):
    """Calls that record no span cost their jobs nothing."""
    with denoising([Job(None)], model="m", steps=1, batch_images=1):
        pass
    assert exporter.get_finished_spans() == ()
