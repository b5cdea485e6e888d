"""The generation data plane: one request's way from the caller's fields to image bytes.

validate -> caller policy -> GPU quota -> submit (held) -> engine events ->
encode -> GenerationEvents. The job is submitted held and released once the
caller has its first answer, so a busy worker never delays that answer. The
cost of steps never run is given back when the flow ends, however it ends.
It records the audit facts through CallFacts and knows no gRPC: the servicer
turns its events into messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

from pixelgate.server.api.call_facts import CallFacts
from pixelgate.server.api.encoding import chunks, encode_image
from pixelgate.server.api.generation_ask import GenerationAsk
from pixelgate.server.api.generation_events import (
    Admitted,
    GenerationEvent,
    ImageBytes,
    ImageDone,
    ImageFiltered,
    InQueue,
)
from pixelgate.server.api.validation import RequestValidator
from pixelgate.server.core.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.core.principal import Principal
from pixelgate.server.limits.caller_policy import CallerPolicy
from pixelgate.server.limits.gpu_quota import GpuQuota
from pixelgate.server.tracing.spans import child_span


class SubmittedJob(Protocol):
    """What the flow needs of a submitted job."""

    steps_run: int

    def events(self) -> AsyncIterator[EngineEvent]:
        """Queued, StepDone per step, a GeneratedImage per image; raises on failure."""
        ...

    def cancel(self) -> None:
        """Stops the job (idempotent)."""
        ...


JobT = TypeVar("JobT", bound=SubmittedJob)


class GenerationObserver(Protocol):
    """Hears how each admitted generation ended (metrics)."""

    def generation_ended(
        self,
        model_id: str,
        outcome: str,
        seconds: float,
        images: dict[str, int],
        caller: Principal | None,
    ) -> None:
        """`outcome`: completed, cancelled or failed; `images` by how each finished
        (completed, filtered, and cancelled or failed for those that never did)."""
        ...


class JobEngine(Protocol[JobT]):
    """What the flow needs of the engine: held submission and release."""

    def submit(
        self, request: GenerationRequest, *, caller: str, deadline: float | None, hold: bool
    ) -> JobT:
        """Admits and queues `request`, or raises the error that says why not."""
        ...

    def release(self, job: JobT) -> None:
        """Lets a held job start."""
        ...


class GenerationService(Generic[JobT]):
    """Runs generations for callers, from their request to encoded images."""

    def __init__(
        self,
        engine: JobEngine[JobT],
        validator: RequestValidator,
        policy: CallerPolicy,
        quota: GpuQuota,
        *,
        chunk_size: int,
        observer: GenerationObserver | None = None,
    ) -> None:
        self._engine = engine
        self._validator = validator
        self._policy = policy
        self._quota = quota
        self._chunk_size = chunk_size
        self._observer = observer

    async def generate(
        self,
        request: GenerationAsk,
        caller: Principal,
        facts: CallFacts,
        *,
        time_left: Callable[[], float | None],
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The call's events; raises a ServiceError (before Admitted) when it is refused.

        `time_left` gives the seconds to the caller's deadline (None: none), asked
        as the job is submitted. Nothing is charged before validation and policy
        pass. Close the iterator (`contextlib.aclosing`) when the caller goes: the
        job stops and the unused cost is given back.
        """
        generation = self._validator.validate(request)
        _record_request(generation, facts)
        self._policy.check(caller, generation)
        async with self._quota.admit(caller, generation) as charge:
            facts.quota.append((self._quota.limit, charge.decision))
            job = self._engine.submit(
                generation, caller=caller.key, deadline=time_left(), hold=True
            )
            admitted, outcome, sent, filtered = time.perf_counter(), "failed", 0, 0
            try:
                yield Admitted(cancel=job.cancel)
                async for event in job.events():
                    if isinstance(event, GeneratedImage) and event.image is not None:
                        async for output in self._image(event, generation, facts):
                            yield output
                        sent += 1
                    else:
                        if isinstance(event, GeneratedImage):
                            filtered += 1  # blocked by a safety check: no bytes
                        yield _progress_or_filtered(event, generation)
                    # The caller has its first answer; now the job may start.
                    self._engine.release(job)
                outcome = "completed"
            except (GeneratorExit, asyncio.CancelledError):
                outcome = "cancelled"  # the caller went away, or its stream was cut
                raise
            finally:
                job.cancel()
                charge.steps_done = job.steps_run
                facts.cost_charged = charge.cost - charge.unused
                if self._observer is not None:
                    images = {"completed": sent, "filtered": filtered}
                    unfinished = len(generation.seeds) - sent - filtered
                    if unfinished:
                        images["cancelled" if outcome == "cancelled" else "failed"] = unfinished
                    seconds = time.perf_counter() - admitted
                    self._observer.generation_ended(
                        generation.model_id, outcome, seconds, images, caller
                    )

    async def _image(
        self, image: GeneratedImage, generation: GenerationRequest, facts: CallFacts
    ) -> AsyncIterator[GenerationEvent]:
        assert image.image is not None
        metadata = None
        if generation.include_metadata:
            metadata = {
                "model": generation.model_id,
                "seed": str(image.seed),
                "steps": str(image.steps),
            }
        described = {"pixelgate.image.index": image.index}
        with child_span("encoding", described):
            # Encoding is CPU work: off the event loop, and off the model's workers.
            encoded = await asyncio.to_thread(
                encode_image, image.image, generation.output_format, generation.quality, metadata
            )
        facts.image_sha256s.append(encoded.sha256)
        # Each message is taken (written to the caller) before the next is made: the span
        # lasts until the caller's stream has taken the whole image.
        with child_span("streaming", {**described, "pixelgate.image.bytes": len(encoded.data)}):
            for offset, data in chunks(encoded.data, self._chunk_size):
                yield ImageBytes(image_index=image.index, offset=offset, data=data)
            yield ImageDone(
                image_index=image.index,
                mime_type=encoded.mime_type,
                width=encoded.width,
                height=encoded.height,
                size_bytes=len(encoded.data),
                sha256=encoded.sha256,
                seed=image.seed,
                model=generation.model_id,
                steps=image.steps,
            )


def _record_request(generation: GenerationRequest, facts: CallFacts) -> None:
    facts.parameters = {
        "model": generation.model_id,
        "width": generation.width,
        "height": generation.height,
        "steps": generation.steps,
        "guidance_scale": round(generation.guidance_scale, 3),
        "num_images": len(generation.seeds),
        "seed": generation.seeds[0],
        "output_format": generation.output_format.name,
    }
    facts.prompt_sha256 = hashlib.sha256(generation.prompt.encode("utf-8")).hexdigest()


def _progress_or_filtered(event: EngineEvent, generation: GenerationRequest) -> GenerationEvent:
    if isinstance(event, Queued):
        return InQueue(position=event.position, total_steps=generation.steps, eta=event.eta)
    if isinstance(event, StepDone):
        return event
    return ImageFiltered(  # a filtered image: no bytes, only the reason
        image_index=event.index, seed=event.seed, model=generation.model_id, steps=event.steps
    )


__all__ = ["GenerationObserver", "GenerationService", "JobEngine", "SubmittedJob"]
