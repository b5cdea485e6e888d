"""A submitted job and its event channel: the one thing the engine, its workers and a caller share.

Workers hand events over from their threads through `call_soon_threadsafe`; the
caller reads them on the event loop until the end marker. A job is cancelled
through a flag the worker's step callback checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass

from pixelgate.server.core.generation import EngineEvent, GenerationRequest
from pixelgate.server.tracing.job_spans import JobSpans


@dataclass
class EngineStats:
    """Counters for monitoring (updated under the engine's lock)."""

    jobs_started: int = 0
    """Jobs a worker began; one retried after running out of memory counts once."""
    jobs_completed: int = 0
    jobs_cancelled: int = 0
    jobs_failed: int = 0
    steps_run: int = 0
    batches_run: int = 0
    images_filtered: int = 0


@dataclass(frozen=True)
class EndOfEvents:
    """The last thing on a job's channel: its failure, or None when it ended well."""

    error: BaseException | None = None


class Job:
    """A submitted generation: its events as they happen, and a way to stop it."""

    def __init__(
        self,
        request: GenerationRequest,
        caller: str,
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[Job], None],
    ) -> None:
        self.request = request
        self.caller = caller
        self.model_id = request.model_id
        self.images = len(request.seeds)
        self.batch_key: Hashable = request.batch_key
        self.solo = False
        self.held = False
        self.started = False
        """A worker has run (part of) it: a retry after running out of memory is no new start."""
        self.steps_run = 0
        """Denoising steps run for this job in its current pipeline call."""
        self.steps_reported = 0
        """The highest step its caller was told of (a retry re-runs steps silently up to it)."""
        self.submitted_at = 0.0
        """time.monotonic() at admission."""
        self.eta_at_submit: float | None = None
        """Seconds to its end estimated at admission; None without an estimate."""
        self.last_position: int | None = None
        self.trace: JobSpans | None = None
        """Its spans under its call's (queue wait, denoising), when the call records spans."""
        self._loop = loop
        self._on_cancel = on_cancel
        self._events: asyncio.Queue[EngineEvent | EndOfEvents] = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stops the job at its next step, or drops it from the queue. Idempotent."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._on_cancel(self)

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[EngineEvent]:
        """Queued, then StepDone per step, then a GeneratedImage per image; raises on failure."""
        while True:
            event = await self._events.get()
            if isinstance(event, EndOfEvents):
                if event.error is not None:
                    raise event.error
                return
            yield event

    def emit_now(self, event: EngineEvent | EndOfEvents) -> None:
        """Hands an event over at once; on the event loop thread only (keeps it first)."""
        self._events.put_nowait(event)

    def emit(self, event: EngineEvent | EndOfEvents) -> None:
        """Hands an event to the job's consumer; safe from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is gone: nobody listens any more
            self._cancelled.set()


__all__ = ["EndOfEvents", "EngineStats", "Job"]
