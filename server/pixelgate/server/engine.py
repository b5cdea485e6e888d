"""The generation engine: a bounded work queue in front of one worker thread.

The pipeline runs in the worker, never on the event loop, one job at a time.
Progress crosses back to the loop through `call_soon_threadsafe`. A job is
cancelled through a threading.Event that the step callback checks, so a
cancelled or expired call stops the pipeline at its next step and frees the
worker for the next job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pixelgate.server.errors import ResourceExhausted
from pixelgate.server.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.models import LoadedModel

log = logging.getLogger("pixelgate.engine")


class GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback to stop a cancelled job."""


@dataclass
class EngineStats:
    """Counters for monitoring; written by the worker thread only."""

    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_cancelled: int = 0
    jobs_failed: int = 0
    steps_run: int = 0


_END = object()


class Job:
    """A submitted generation: its events as they happen, and a way to stop it."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.steps_run = 0
        self._loop = loop
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._future: asyncio.Future[None] | None = None

    def cancel(self) -> None:
        """Stops the job at its next step (or before it starts). Safe from any thread."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[EngineEvent]:
        """Queued, then StepDone per step, then a GeneratedImage per image; raises on failure."""
        while True:
            event = await self._events.get()
            if event is _END:
                break
            yield event  # type: ignore[misc]
        assert self._future is not None
        self._future.result()

    def _emit(self, event: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancel()


class GenerationEngine:
    """Runs generation jobs in a worker thread, first come first served."""

    def __init__(self, models: Mapping[str, LoadedModel], *, max_queued_jobs: int) -> None:
        self._models = dict(models)
        self._max_queued = max_queued_jobs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelgate-worker")
        self._active: set[Job] = set()
        self.stats = EngineStats()

    def submit(self, request: GenerationRequest) -> Job:
        """Queues `request`; RESOURCE_EXHAUSTED when the queue is full. Call on the loop."""
        if len(self._active) >= self._max_queued:
            raise ResourceExhausted("server busy: the generation queue is full; retry later")
        loop = asyncio.get_running_loop()
        job = Job(request, loop)
        job._events.put_nowait(Queued(position=len(self._active)))
        self._active.add(job)
        future = loop.run_in_executor(self._executor, self._run, job)
        job._future = future

        def finished(_: asyncio.Future[None]) -> None:
            self._active.discard(job)
            job._events.put_nowait(_END)

        future.add_done_callback(finished)
        return job

    def _run(self, job: Job) -> None:
        if job.cancelled:
            self.stats.jobs_cancelled += 1
            return
        self.stats.jobs_started += 1
        request = job.request

        def on_step(step: int, total: int) -> None:
            self.stats.steps_run += 1
            job.steps_run += 1
            if job.cancelled:
                raise GenerationCancelled
            job._emit(StepDone(step=step, total=total))

        try:
            images = self._models[request.model_id].generate(request, on_step)
        except GenerationCancelled:
            self.stats.jobs_cancelled += 1
            log.info("job cancelled after %d of %d steps", job.steps_run, request.steps)
            return
        except BaseException:
            self.stats.jobs_failed += 1
            raise
        for index, (seed, image) in enumerate(zip(request.seeds, images, strict=True)):
            job._emit(GeneratedImage(index=index, seed=seed, steps=job.steps_run, image=image))
        self.stats.jobs_completed += 1

    async def aclose(self) -> None:
        """Cancels every job and waits for the worker to stop (within one step)."""
        for job in list(self._active):
            job.cancel()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


__all__ = ["EngineStats", "GenerationCancelled", "GenerationEngine", "Job"]
