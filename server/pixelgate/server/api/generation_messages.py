"""GenerateImage messages to the data plane's types and back: field for field, nothing decided."""

from __future__ import annotations

from typing import overload

from pixelgate.server.api.chunk_wire import chunk_response
from pixelgate.server.api.generation_ask import GenerationAsk
from pixelgate.server.api.generation_events import (
    ImageBytes,
    ImageDone,
    ImageFiltered,
    InQueue,
    StepDone,
)
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.v1 import image_service_pb2 as pb

_FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: ImageFormat.PNG,
    pb.OUTPUT_FORMAT_PNG: ImageFormat.PNG,
    pb.OUTPUT_FORMAT_JPEG: ImageFormat.JPEG,
    pb.OUTPUT_FORMAT_WEBP: ImageFormat.WEBP,
}

StreamedEvent = InQueue | StepDone | ImageBytes | ImageDone | ImageFiltered
"""The events a caller receives (Admitted is not sent)."""


def ask_from(request: pb.GenerateImageRequest) -> GenerationAsk:
    """The request's fields as the data plane reads them; unset optional fields are None."""
    return GenerationAsk(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        model=request.model,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=(request.guidance_scale if request.HasField("guidance_scale") else None),
        num_images=request.num_images,
        output_format=_FORMATS.get(request.output_format),
        quality=request.quality,
        include_metadata=request.include_metadata,
        preview_every_steps=request.preview_every_steps,
        seed=request.seed if request.HasField("seed") else None,
    )


@overload
def response_for(event: ImageBytes) -> bytes: ...
@overload
def response_for(
    event: InQueue | StepDone | ImageDone | ImageFiltered,
) -> pb.GenerateImageResponse: ...
@overload
def response_for(event: StreamedEvent) -> pb.GenerateImageResponse | bytes: ...
def response_for(event: StreamedEvent) -> pb.GenerateImageResponse | bytes:
    """The one message that carries `event`; an image chunk comes as the message's wire
    bytes (chunk_wire.py), for GenerateImage's serializer to pass through."""
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
    if isinstance(event, ImageBytes):
        # Wire bytes, not a message: a message copies up to chunk_size bytes of image
        # twice (into itself, then into its serialization), costlier than the send.
        return chunk_response(event.image_index, event.offset, event.data)
    if isinstance(event, InQueue):
        return pb.GenerateImageResponse(
            progress=pb.Progress(
                state=pb.Progress.STATE_QUEUED,
                queue_position=event.position,
                total_steps=event.total_steps,
                eta_seconds=event.eta or 0.0,
            )
        )
    if isinstance(event, ImageDone):
        return pb.GenerateImageResponse(
            complete=pb.ImageComplete(
                image_index=event.image_index,
                mime_type=event.mime_type,
                width=event.width,
                height=event.height,
                size_bytes=event.size_bytes,
                sha256=event.sha256,
                seed=event.seed,
                model=event.model,
                steps=event.steps,
                finish_reason=pb.ImageComplete.FINISH_REASON_COMPLETE,
            )
        )
    return pb.GenerateImageResponse(
        complete=pb.ImageComplete(
            image_index=event.image_index,
            seed=event.seed,
            model=event.model,
            steps=event.steps,
            finish_reason=pb.ImageComplete.FINISH_REASON_FILTERED,
        )
    )


__all__ = ["StreamedEvent", "ask_from", "response_for"]
