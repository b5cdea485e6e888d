"""Server reflection that serves the protos' comments too.

grpcurl users read the field comments (units, bounds, defaults), but the
descriptors compiled into `*_pb2.py` carry no source info. `make proto` also
writes a descriptor set with source info beside the stubs; this servicer
answers reflection as usual and swaps in those documented file descriptors.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from pixelgate.v1 import image_service_pb2

log = logging.getLogger("pixelgate.server")

DESCRIPTOR_SET = "descriptor_set.binpb"
"""File name of the documented descriptor set, written beside the generated stubs."""


def documented_files(path: Path | None = None) -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with comments, by proto file name; empty if absent."""
    path = path or Path(image_service_pb2.__file__).with_name(DESCRIPTOR_SET)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.warning("%s missing: reflection serves no comments (run `make proto`)", DESCRIPTOR_SET)
        return {}
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    return {file.name: file.SerializeToString() for file in descriptor_set.file}


class DocumentedReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]
    """grpc.reflection.v1alpha, answering with documented descriptors where it has them."""

    def __init__(self, service_names: Iterable[str], documented: Mapping[str, bytes]) -> None:
        super().__init__(tuple(service_names))
        self._documented = dict(documented)

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                for index, serialized in enumerate(files):
                    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                    files[index] = self._documented.get(name, serialized)
            yield response


__all__ = ["DESCRIPTOR_SET", "DocumentedReflectionServicer", "documented_files"]
