"""The ImageService servicer: a thin adapter between protobuf and the pieces.

For a generation it validates the request, applies the caller's policy
limits, charges the GPU quota, submits the job and translates engine events
into the response stream. Tokens, TLS and request rates were handled by the
interceptors before it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc.aio

from pixelgate.server.api.encoding import chunks, encode_image
from pixelgate.server.api.validation import RequestValidator
from pixelgate.server.core.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.core.principal import current_principal
from pixelgate.server.engine.engine import GenerationEngine
from pixelgate.server.limits.caller_policy import CallerPolicy
from pixelgate.server.limits.gpu_quota import GpuQuota
from pixelgate.server.models.registry import ModelState, RegisteredModel
from pixelgate.server.rpc.call_record import (
    current_record,
    send_quota_metadata,
    set_quota_trailers,
)
from pixelgate.server.rpc.stream_writer import STALLED_READER, StreamWriter
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ImageServicer(pb_grpc.ImageServiceServicer):
    """Serves pixelgate.v1.ImageService."""

    def __init__(
        self,
        engine: GenerationEngine,
        validator: RequestValidator,
        policy: CallerPolicy,
        quota: GpuQuota,
        *,
        chunk_size: int,
        stall_timeout: float,
    ) -> None:
        self._engine = engine
        self._registry = engine.registry
        self._validator = validator
        self._policy = policy
        self._quota = quota
        self._chunk_size = chunk_size
        self._stall_timeout = stall_timeout
        self._model_list: tuple[int, pb.ListModelsResponse] | None = None

    async def GenerateImage(  # type: ignore[override]  # the stubs know only iterators
        self, request: pb.GenerateImageRequest, context: Context
    ) -> None:
        """Streams a generation, writing each message itself (grpcio's writer form), so a
        send its reader holds past the stall timeout ends the call."""
        record = current_record()
        writer = StreamWriter(context, self._stall_timeout)
        try:
            async with contextlib.aclosing(self._generation(request, context)) as messages:
                async for message in messages:
                    await writer.write(message)
        finally:
            writer.close()
            if writer.stalled:
                record.reason = STALLED_READER

    async def _generation(
        self, request: pb.GenerateImageRequest, context: Context
    ) -> AsyncGenerator[pb.GenerateImageResponse, None]:
        generation = self._validator.validate(request)
        principal = current_principal()
        record = current_record()
        _record_request(generation)
        self._policy.check(principal, generation)
        async with self._quota.admit(principal, generation) as charge:
            record.quota.append((self._quota.limit, charge.decision))
            job = self._engine.submit(
                generation, caller=principal.key, deadline=context.time_remaining(), hold=True
            )
            # Stop the pipeline however the call ends: cancelled, deadline, disconnect.
            context.add_done_callback(lambda _: job.cancel())  # type: ignore[arg-type]
            try:
                await send_quota_metadata(context)
                async for event in job.events():
                    if isinstance(event, GeneratedImage) and not event.filtered:
                        async for response in self._image_messages(event, generation):
                            yield response
                    else:  # the per-step path: one message, no further generator
                        yield _event_message(event, generation)
                    # The caller has its first answer; now the job may start.
                    self._engine.release(job)
            finally:
                job.cancel()
                charge.steps_done = job.steps_run
                record.cost_charged = charge.cost - charge.unused

    async def _image_messages(
        self, image: GeneratedImage, generation: GenerationRequest
    ) -> AsyncIterator[pb.GenerateImageResponse]:
        assert image.image is not None
        metadata = None
        if generation.include_metadata:
            metadata = {
                "model": generation.model_id,
                "seed": str(image.seed),
                "steps": str(image.steps),
            }
        # Encoding is CPU work: off the event loop, and off the model's workers.
        encoded = await asyncio.to_thread(
            encode_image, image.image, generation.output_format, generation.quality, metadata
        )
        current_record().image_sha256s.append(encoded.sha256)
        for offset, data in chunks(encoded.data, self._chunk_size):
            yield pb.GenerateImageResponse(
                chunk=pb.ImageChunk(image_index=image.index, offset=offset, data=data)
            )
        yield pb.GenerateImageResponse(
            complete=pb.ImageComplete(
                image_index=image.index,
                mime_type=encoded.mime_type,
                width=encoded.width,
                height=encoded.height,
                size_bytes=len(encoded.data),
                sha256=encoded.sha256,
                seed=image.seed,
                model=generation.model_id,
                steps=image.steps,
                finish_reason=pb.ImageComplete.FINISH_REASON_COMPLETE,
            )
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        set_quota_trailers(context)
        version = self._registry.version
        if self._model_list is None or self._model_list[0] != version:
            response = pb.ListModelsResponse(
                models=[
                    _model_info(model, model.id == self._registry.default_model)
                    for model in self._registry.values()
                ]
            )
            self._model_list = (version, response)
        return self._model_list[1]


def _record_request(generation: GenerationRequest) -> None:
    record = current_record()
    record.parameters = {
        "model": generation.model_id,
        "width": generation.width,
        "height": generation.height,
        "steps": generation.steps,
        "guidance_scale": round(generation.guidance_scale, 3),
        "num_images": len(generation.seeds),
        "seed": generation.seeds[0],
        "output_format": generation.output_format.name,
    }
    record.prompt_sha256 = hashlib.sha256(generation.prompt.encode("utf-8")).hexdigest()


def _event_message(event: EngineEvent, generation: GenerationRequest) -> pb.GenerateImageResponse:
    if isinstance(event, StepDone):
        return pb.GenerateImageResponse(
            progress=pb.Progress(
                state=pb.Progress.STATE_RUNNING,
                step=event.step,
                total_steps=event.total,
                eta_seconds=event.eta or 0.0,
                preview_jpeg=event.preview_jpeg or b"",
            )
        )
    if isinstance(event, Queued):
        return pb.GenerateImageResponse(
            progress=pb.Progress(
                state=pb.Progress.STATE_QUEUED,
                queue_position=event.position,
                total_steps=generation.steps,
                eta_seconds=event.eta or 0.0,
            )
        )
    return pb.GenerateImageResponse(  # a filtered image: no bytes, only the reason
        complete=pb.ImageComplete(
            image_index=event.index,
            seed=event.seed,
            model=generation.model_id,
            steps=event.steps,
            finish_reason=pb.ImageComplete.FINISH_REASON_FILTERED,
        )
    )


_STATES = {
    ModelState.NOT_LOADED: pb.ModelInfo.STATE_NOT_LOADED,
    ModelState.LOADING: pb.ModelInfo.STATE_LOADING,
    ModelState.READY: pb.ModelInfo.STATE_READY,
    ModelState.FAILED: pb.ModelInfo.STATE_FAILED,
}


def _model_info(model: RegisteredModel, is_default: bool) -> pb.ModelInfo:
    card = model.card
    return pb.ModelInfo(
        id=card.id,
        description=card.description,
        is_default=is_default,
        is_test_model=card.is_test_model,
        min_size=card.min_size,
        max_width=card.max_width,
        max_height=card.max_height,
        default_width=card.default_width,
        default_height=card.default_height,
        default_steps=card.default_steps,
        max_steps=card.max_steps,
        max_prompt_tokens=card.max_prompt_tokens or 0,
        state=_STATES[model.state],
        load_error=model.error,
        pipeline=model.pipeline_name or model.settings.pipeline or "",
        devices=list(model.devices),
        dtype=model.dtype,
        cost_factor=model.settings.cost_factor,
    )


__all__ = ["ImageServicer"]
