"""Reassembling streamed images, so nothing truncated passes as complete.

Chunks must arrive in order without gaps; an image counts only once its
ImageComplete arrives and the bytes match its size and SHA-256. An image the
server's safety policy filtered arrives as a GeneratedImage with
`filtered=True` and no bytes: a policy outcome, not a transfer error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pixelgate.client.errors import IncompleteImage
from pixelgate.v1 import image_service_pb2 as pb


@dataclass(frozen=True)
class GeneratedImage:
    """One whole, verified image (or, when `filtered`, the notice that it was withheld)."""

    index: int
    data: bytes
    mime_type: str
    width: int
    height: int
    sha256: str
    seed: int
    model: str
    steps: int
    filtered: bool = False
    """The server's safety policy blocked the image; `data` is empty."""


class ImageAssembler:
    """Collects ImageChunk and ImageComplete messages into verified images."""

    def __init__(self) -> None:
        self._buffers: dict[int, bytearray] = {}
        self._done: set[int] = set()

    def add_chunk(self, chunk: pb.ImageChunk) -> None:
        """Appends a chunk; raises IncompleteImage on a gap, overlap or late chunk."""
        if chunk.image_index in self._done:
            raise IncompleteImage(f"image {chunk.image_index}: bytes after its completion")
        buffer = self._buffers.setdefault(chunk.image_index, bytearray())
        if chunk.offset != len(buffer):
            raise IncompleteImage(
                f"image {chunk.image_index}: chunk at offset {chunk.offset}, expected {len(buffer)}"
            )
        buffer.extend(chunk.data)

    def complete(self, message: pb.ImageComplete) -> GeneratedImage:
        """Closes an image; raises IncompleteImage unless size and digest match."""
        data = bytes(self._buffers.pop(message.image_index, b""))
        if message.image_index in self._done:
            raise IncompleteImage(f"image {message.image_index}: completed twice")
        filtered = message.finish_reason == pb.ImageComplete.FINISH_REASON_FILTERED
        if filtered:
            if data or message.size_bytes:
                raise IncompleteImage(f"image {message.image_index}: filtered yet has bytes")
            self._done.add(message.image_index)
            return GeneratedImage(
                index=message.image_index,
                data=b"",
                mime_type="",
                width=0,
                height=0,
                sha256="",
                seed=message.seed,
                model=message.model,
                steps=message.steps,
                filtered=True,
            )
        if len(data) != message.size_bytes:
            raise IncompleteImage(
                f"image {message.image_index}: got {len(data)} bytes, expected {message.size_bytes}"
            )
        if hashlib.sha256(data).hexdigest() != message.sha256.lower():
            raise IncompleteImage(f"image {message.image_index}: SHA-256 does not match")
        self._done.add(message.image_index)
        return GeneratedImage(
            index=message.image_index,
            data=data,
            mime_type=message.mime_type,
            width=message.width,
            height=message.height,
            sha256=message.sha256,
            seed=message.seed,
            model=message.model,
            steps=message.steps,
        )

    def finish(self, expected_images: int) -> None:
        """At the end of the stream: raises IncompleteImage if any image is missing or partial."""
        if self._buffers:
            raise IncompleteImage(f"stream ended inside image {min(self._buffers)}")
        if len(self._done) != expected_images:
            raise IncompleteImage(f"got {len(self._done)} of {expected_images} images")


__all__ = ["GeneratedImage", "ImageAssembler"]
