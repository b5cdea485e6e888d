"""The ImageService servicer: protobuf in, protobuf out, nothing decided here.

A generation is the data plane's (generation_service.py); the servicer hands
it the request, the caller and the call's record, writes its events as
messages through a StreamWriter (a reader that stalls ends the call), stops
the job when the call ends, and sends the quota metadata once the call is
admitted. Tokens, TLS and request rates were handled by the interceptors
before it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import grpc.aio

from pixelgate.server.api.generation_events import Admitted
from pixelgate.server.api.generation_messages import ask_from, response_for
from pixelgate.server.api.generation_service import GenerationService
from pixelgate.server.api.model_messages import model_info
from pixelgate.server.limits.quota_metadata import send_quota_metadata, set_quota_trailers
from pixelgate.server.models.registry import ModelRegistry
from pixelgate.server.rpc.call_record import current_principal, current_record
from pixelgate.server.rpc.stream_writer import STALLED_READER, StreamWriter
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ImageServicer(pb_grpc.ImageServiceServicer):
    """Serves pixelgate.v1.ImageService."""

    def __init__(
        self,
        generations: GenerationService[Any],
        registry: ModelRegistry,
        *,
        stall_timeout: float,
    ) -> None:
        self._generations = generations
        self._registry = registry
        self._stall_timeout = stall_timeout
        self._model_list: tuple[int, pb.ListModelsResponse] | None = None

    async def GenerateImage(  # type: ignore[override]  # the stubs know only iterators
        self, request: pb.GenerateImageRequest, context: Context
    ) -> None:
        """Streams a generation, writing each message itself (grpcio's writer form), so a
        send its reader holds past the stall timeout ends the call."""
        record = current_record()
        writer = StreamWriter(context, self._stall_timeout)
        events = self._generations.generate(
            ask_from(request), current_principal(), record, time_left=context.time_remaining
        )
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    if isinstance(event, Admitted):
                        # Stop the pipeline however the call ends: cancelled, deadline, disconnect.
                        context.add_done_callback(_on_done(event.cancel))  # type: ignore[arg-type]
                        await send_quota_metadata(context)
                    else:
                        await writer.write(response_for(event))
        finally:
            writer.close()
            if writer.stalled:
                record.reason = STALLED_READER

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        set_quota_trailers(context)
        version = self._registry.version
        if self._model_list is None or self._model_list[0] != version:
            response = pb.ListModelsResponse(
                models=[
                    model_info(model, model.id == self._registry.default_model)
                    for model in self._registry.values()
                ]
            )
            self._model_list = (version, response)
        return self._model_list[1]


def _on_done(cancel: Callable[[], None]) -> Callable[[object], None]:
    return lambda _: cancel()


__all__ = ["ImageServicer"]
