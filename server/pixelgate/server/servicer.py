"""The ImageService servicer: a thin adapter between protobuf and the pieces.

For a generation it validates the request, applies the caller's policy
limits, charges the GPU quota, submits the job and translates engine events
into the response stream. Tokens, TLS and request rates were handled by the
interceptors before it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc.aio

from pixelgate.server.call_record import current_record, send_quota_metadata
from pixelgate.server.caller_policy import CallerPolicy
from pixelgate.server.encoding import chunks, encode_image
from pixelgate.server.engine import GenerationEngine
from pixelgate.server.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.gpu_quota import GpuQuota
from pixelgate.server.models import ModelCard
from pixelgate.server.principal import current_principal
from pixelgate.server.validation import RequestValidator
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
        models: Sequence[ModelCard],
        *,
        default_model: str,
        chunk_size: int,
    ) -> None:
        self._engine = engine
        self._validator = validator
        self._policy = policy
        self._quota = quota
        self._chunk_size = chunk_size
        self._model_list = pb.ListModelsResponse(
            models=[_model_info(card, card.id == default_model) for card in models]
        )

    async def GenerateImage(
        self, request: pb.GenerateImageRequest, context: Context
    ) -> AsyncIterator[pb.GenerateImageResponse]:
        generation = self._validator.validate(request)
        principal = current_principal()
        record = current_record()
        _record_request(generation)
        self._policy.check(principal, generation)
        async with self._quota.admit(principal, generation) as charge:
            record.quota.append((self._quota.limit, charge.decision))
            await send_quota_metadata(context)
            job = self._engine.submit(generation)
            # Stop the pipeline however the call ends: cancelled, deadline, disconnect.
            context.add_done_callback(lambda _: job.cancel())  # type: ignore[arg-type]
            try:
                async for event in job.events():
                    if isinstance(event, StepDone):
                        charge.steps_done = event.step
                    async for response in self._responses(event, generation):
                        yield response
                charge.finished = True
            finally:
                job.cancel()
                record.cost_charged = charge.cost - charge.unused

    async def _responses(
        self, event: EngineEvent, generation: GenerationRequest
    ) -> AsyncIterator[pb.GenerateImageResponse]:
        if isinstance(event, Queued):
            yield _progress(
                pb.Progress.STATE_QUEUED,
                queue_position=event.position,
                total_steps=generation.steps,
            )
        elif isinstance(event, StepDone):
            yield _progress(pb.Progress.STATE_RUNNING, step=event.step, total_steps=event.total)
        elif isinstance(event, GeneratedImage):
            async for response in self._image_messages(event, generation):
                yield response

    async def _image_messages(
        self, image: GeneratedImage, generation: GenerationRequest
    ) -> AsyncIterator[pb.GenerateImageResponse]:
        # Encoding is CPU work: off the event loop, and off the model's worker.
        encoded = await asyncio.to_thread(encode_image, image.image, generation.output_format)
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
            )
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        await send_quota_metadata(context)
        return self._model_list


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


def _progress(state: Any, **fields: int) -> pb.GenerateImageResponse:
    return pb.GenerateImageResponse(progress=pb.Progress(state=state, **fields))


def _model_info(card: ModelCard, is_default: bool) -> pb.ModelInfo:
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
    )


__all__ = ["ImageServicer"]
