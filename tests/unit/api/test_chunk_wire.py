"""Pre-encoded image chunks: what a client parses must be what protobuf would have sent."""

from __future__ import annotations

import pytest

from pixelgate.server.api.chunk_wire import chunk_response, serialize_response
from pixelgate.v1 import image_service_pb2 as pb

MIB = 1 << 20


@pytest.mark.parametrize(
    ("image_index", "offset", "size"),
    [
        (0, 0, 0),  # every field at its default: an empty chunk
        (0, 0, 1),
        (1, 0, 127),  # the last length with a 1-byte varint
        (1, 127, 128),  # the first with a 2-byte one
        (127, 128, 16383),
        (128, 16384, 16384),  # image_index past one varint byte
        (15, 2**21, MIB),  # exactly the default chunk_size; offset with a 4-byte varint
        (3, 2**21 + 1, MIB - 1),
        (2**32 - 1, 2**35 + 5, 1000),  # the largest uint32 index; offset past 32 bits
        (0, 3 * MIB, MIB),
    ],
)
def test_chunk_bytes_are_protobufs(image_index: int, offset: int, size: int) -> None:
    """The pre-encoded bytes equal protobuf's own serialization, and parse back to the chunk."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = pb.GenerateImageResponse(
        chunk=pb.ImageChunk(image_index=image_index, offset=offset, data=data)
    ).SerializeToString()
    sent = chunk_response(image_index, offset, data)
    assert sent == expected
    assert chunk_response(image_index, offset, memoryview(b"-" + data)[1:]) == expected
    parsed = pb.GenerateImageResponse.FromString(sent)
    assert parsed.WhichOneof("event") == "chunk"
    assert (parsed.chunk.image_index, parsed.chunk.offset, parsed.chunk.data) == (
        image_index,
        offset,
        data,
    )


def test_negative_fields_are_refused() -> None:
    """Unsigned fields: a negative index or offset is a bug, not a huge varint."""
    with pytest.raises(ValueError):
        chunk_response(-1, 0, b"x")
    with pytest.raises(ValueError):
        chunk_response(0, -1, b"x")


def test_serializer_passes_bytes_and_serializes_messages() -> None:
    """GenerateImage's serializer sends chunk bytes unchanged and other messages as protobuf."""
    chunk = chunk_response(2, 10, b"abc")
    assert serialize_response(chunk) is chunk
    complete = pb.GenerateImageResponse(complete=pb.ImageComplete(image_index=2, size_bytes=13))
    assert serialize_response(complete) == complete.SerializeToString()
