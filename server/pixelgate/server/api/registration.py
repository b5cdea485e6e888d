"""Registers the ImageService's handlers, as the generated `add_ImageServiceServicer_to_server`
does, but with GenerateImage's responses serialized by `serialize_response`, which passes
the pre-encoded image chunks (chunk_wire.py) through."""

from __future__ import annotations

from typing import Any

import grpc

from pixelgate.server.api.chunk_wire import serialize_response
from pixelgate.server.api.servicer import ImageServicer
from pixelgate.v1 import image_service_pb2 as pb

SERVICE = "pixelgate.v1.ImageService"


def image_service_handlers(servicer: ImageServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The ImageService's method handlers, by method name."""
    return {
        "GenerateImage": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateImage,
            request_deserializer=pb.GenerateImageRequest.FromString,
            response_serializer=serialize_response,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        ),
    }


def add_image_service(servicer: ImageServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` on `server` (or on the interceptor chain standing in for it)."""
    handlers = image_service_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # grpcio has it since 1.62; the grpc-stubs package does not know it yet.
    server.add_registered_method_handlers(SERVICE, handlers)  # type: ignore[attr-defined]


__all__ = ["SERVICE", "add_image_service", "image_service_handlers"]
