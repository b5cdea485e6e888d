"""An engine job's spans under its call's: the wait in the queue, then each pipeline call.

A job is submitted on the serving loop, in its call's context, and runs in a
worker thread, where that context is not: JobSpans takes the call's trace along.
The queue wait span is written once the job leaves the queue (a worker took it,
or it ended waiting), with its start as it was queued, so no span is ever left
open by a job that never runs. A batch of jobs from several calls gives each its
own denoising span, in its own trace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from opentelemetry.trace import Span

from pixelgate.server.tracing.spans import CallTrace, call_trace, failed

QUEUE_WAIT = "queue wait"
DENOISING = "denoising"


class JobSpans:
    """One job's spans; created on the loop as the job is queued, used from its worker."""

    __slots__ = ("_call", "_queued_ns", "_waited")

    def __init__(self, call: CallTrace) -> None:
        self._call = call
        self._queued_ns = time.time_ns()
        self._waited = False

    def left_queue(self) -> None:
        """Writes the queue wait span, up to now; only the first call does."""
        if self._waited:
            return
        self._waited = True
        self._call.start(QUEUE_WAIT, start_time=self._queued_ns).end()

    def start_denoising(self, attributes: dict[str, str | int]) -> Span:
        """Starts a denoising span for this job's part of a pipeline call."""
        return self._call.start(DENOISING, attributes)


def job_spans() -> JobSpans | None:
    """Spans for a job submitted now, in the current call; None when the call records none."""
    call = call_trace()
    return None if call is None else JobSpans(call)


class TracedJob(Protocol):
    """What the denoising spans read of a job."""

    @property
    def trace(self) -> JobSpans | None:
        """The job's spans, when its call records them."""
        ...

    @property
    def steps_run(self) -> int:
        """Denoising steps run for it in the current pipeline call."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once its caller went away (a cancelled batch is no failure)."""
        ...


@contextmanager
def denoising(
    jobs: Sequence[TracedJob], *, model: str, steps: int, batch_images: int
) -> Iterator[None]:
    """A denoising span for each traced job of a batch, around its pipeline call: the model,
    the steps asked for and run, and the batch's size in images and jobs."""
    attributes: dict[str, str | int] = {
        "pixelgate.model": model,
        "pixelgate.steps": steps,
        "pixelgate.batch.images": batch_images,
        "pixelgate.batch.jobs": len(jobs),
    }
    traced = [(job, job.trace.start_denoising(attributes)) for job in jobs if job.trace is not None]
    if not traced:
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        for job, span in traced:
            span.set_attribute("pixelgate.steps_run", job.steps_run)
            if job.cancelled:
                span.set_attribute("pixelgate.cancelled", True)
            elif error is not None:
                failed(span, error)
            span.end()


__all__ = ["DENOISING", "QUEUE_WAIT", "JobSpans", "TracedJob", "denoising", "job_spans"]
