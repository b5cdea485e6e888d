"""Image chunks as GenerateImageResponse wire bytes, written straight from the image's bytes.

A chunk is most of what GenerateImage sends, and up to `chunk_size` (1 MiB) of
image: building it as a protobuf message copies the image bytes into the
message and again into its serialization, and each copy of a MiB costs about
as much as grpcio's own send of it. Written here instead, as the bytes
`GenerateImageResponse(chunk=ImageChunk(...)).SerializeToString()` gives (a
short header, then the data: one copy), and sent through `serialize_response`,
which passes bytes through and serializes every other message as usual.
"""

from __future__ import annotations

from typing import Final

from pixelgate.v1 import image_service_pb2 as pb

# Tags (field number << 3 | wire type), from image_service.proto.
_RESPONSE_CHUNK: Final = b"\x12"  # GenerateImageResponse.chunk = 2, length-delimited
_CHUNK_IMAGE_INDEX: Final = b"\x08"  # ImageChunk.image_index = 1, varint
_CHUNK_OFFSET: Final = b"\x10"  # ImageChunk.offset = 2, varint
_CHUNK_DATA: Final = b"\x1a"  # ImageChunk.data = 3, length-delimited


def _varint(value: int) -> bytes:
    """`value` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def chunk_response(image_index: int, offset: int, data: bytes | memoryview) -> bytes:
    """The wire bytes of `GenerateImageResponse(chunk=ImageChunk(image_index, offset, data))`.

    Byte for byte what protobuf writes: fields in number order, a field holding
    its default (0, empty) left out, as proto3 does. `data` may be a view of the
    whole image (one copy, into the message, instead of two).
    """
    if image_index < 0 or offset < 0:
        raise ValueError("image_index and offset are unsigned")
    head = bytearray()
    if image_index:
        head += _CHUNK_IMAGE_INDEX + _varint(image_index)
    if offset:
        head += _CHUNK_OFFSET + _varint(offset)
    if data:
        head += _CHUNK_DATA + _varint(len(data))
    return b"".join((_RESPONSE_CHUNK, _varint(len(head) + len(data)), head, data))


_serialize = pb.GenerateImageResponse.SerializeToString


def serialize_response(response: pb.GenerateImageResponse | bytes) -> bytes:
    """GenerateImage's response serializer: wire bytes as they are, messages serialized."""
    if type(response) is bytes:
        return response
    return _serialize(response)  # type: ignore[arg-type]


__all__ = ["chunk_response", "serialize_response"]
