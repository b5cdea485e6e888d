"""ImageAssembler: streamed chunks become images only when whole and verified."""

from __future__ import annotations

import hashlib

import pytest

from pixelgate.client.errors import IncompleteImage
from pixelgate.client.images import GeneratedImage, ImageAssembler
from pixelgate.v1 import image_service_pb2 as pb

IMAGE = bytes(range(256)) * 3 + b"tail"


def _chunks(index: int, data: bytes, size: int = 100) -> list[pb.ImageChunk]:
    return [
        pb.ImageChunk(image_index=index, offset=start, data=data[start : start + size])
        for start in range(0, len(data), size)
    ]


def _complete(index: int, data: bytes, **overrides: object) -> pb.ImageComplete:
    fields: dict[str, object] = {
        "image_index": index,
        "mime_type": "image/png",
        "width": 64,
        "height": 32,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "seed": 42 + index,
        "model": "tiny-sd-test",
        "steps": 10,
    }
    fields.update(overrides)
    return pb.ImageComplete(**fields)  # type: ignore[arg-type]


def _feed(assembler: ImageAssembler, index: int, data: bytes) -> GeneratedImage:
    for chunk in _chunks(index, data):
        assembler.add_chunk(chunk)
    return assembler.complete(_complete(index, data))


def test_whole_image_verified() -> None:
    """Chunks in order plus a matching ImageComplete give the image with its metadata."""
    assembler = ImageAssembler()
    image = _feed(assembler, 0, IMAGE)
    assert image == GeneratedImage(
        index=0,
        data=IMAGE,
        mime_type="image/png",
        width=64,
        height=32,
        sha256=hashlib.sha256(IMAGE).hexdigest(),
        seed=42,
        model="tiny-sd-test",
        steps=10,
    )
    assembler.finish(1)


def test_several_images_in_sequence() -> None:
    """Each image of a batch is assembled separately and the stream finishes cleanly."""
    assembler = ImageAssembler()
    first = _feed(assembler, 0, IMAGE)
    second = _feed(assembler, 1, IMAGE[::-1])
    assert (first.data, second.data) == (IMAGE, IMAGE[::-1])
    assert (first.seed, second.seed) == (42, 43)
    assembler.finish(2)


def test_gap_in_offsets_refused() -> None:
    """A chunk that skips bytes (offset beyond what arrived) is refused."""
    assembler = ImageAssembler()
    first, _, third, *_ = _chunks(0, IMAGE)
    assembler.add_chunk(first)
    with pytest.raises(IncompleteImage, match="offset 200, expected 100"):
        assembler.add_chunk(third)


def test_overlapping_chunk_refused() -> None:
    """A chunk that repeats bytes already received is refused."""
    assembler = ImageAssembler()
    first, second, *_ = _chunks(0, IMAGE)
    assembler.add_chunk(first)
    assembler.add_chunk(second)
    with pytest.raises(IncompleteImage):
        assembler.add_chunk(second)


def test_first_chunk_not_at_zero_refused() -> None:
    """An image whose first chunk does not start at offset 0 is refused."""
    with pytest.raises(IncompleteImage):
        ImageAssembler().add_chunk(pb.ImageChunk(image_index=0, offset=1, data=b"x"))


@pytest.mark.parametrize("size", [len(IMAGE) - 1, len(IMAGE) + 1, 0])
def test_wrong_size_refused(size: int) -> None:
    """An image whose bytes do not total the announced size is refused."""
    assembler = ImageAssembler()
    for chunk in _chunks(0, IMAGE):
        assembler.add_chunk(chunk)
    with pytest.raises(IncompleteImage, match="bytes, expected"):
        assembler.complete(_complete(0, IMAGE, size_bytes=size))


def test_wrong_digest_refused() -> None:
    """An image whose bytes do not hash to the announced SHA-256 is refused."""
    assembler = ImageAssembler()
    tampered = IMAGE[:-1] + b"X"
    for chunk in _chunks(0, tampered):
        assembler.add_chunk(chunk)
    with pytest.raises(IncompleteImage, match="SHA-256"):
        assembler.complete(_complete(0, IMAGE))


def test_failed_image_does_not_count() -> None:
    """An image that failed verification is missing at the end of the stream."""
    assembler = ImageAssembler()
    for chunk in _chunks(0, IMAGE):
        assembler.add_chunk(chunk)
    with pytest.raises(IncompleteImage):
        assembler.complete(_complete(0, IMAGE, sha256="0" * 64))
    with pytest.raises(IncompleteImage):
        assembler.finish(1)


def test_bytes_after_completion_refused() -> None:
    """A chunk for an image already completed is refused."""
    assembler = ImageAssembler()
    _feed(assembler, 0, IMAGE)
    with pytest.raises(IncompleteImage, match="after its completion"):
        assembler.add_chunk(pb.ImageChunk(image_index=0, offset=len(IMAGE), data=b"more"))


def test_completed_twice_refused() -> None:
    """A second ImageComplete for the same image is refused."""
    assembler = ImageAssembler()
    _feed(assembler, 0, IMAGE)
    with pytest.raises(IncompleteImage):
        assembler.complete(_complete(0, IMAGE))


def test_stream_ending_mid_image_refused() -> None:
    """A stream that ends after some chunks but before ImageComplete is incomplete."""
    assembler = ImageAssembler()
    first, *_ = _chunks(0, IMAGE)
    assembler.add_chunk(first)
    with pytest.raises(IncompleteImage, match="inside image 0"):
        assembler.finish(1)


def test_missing_image_refused() -> None:
    """A stream that delivers fewer images than requested is incomplete."""
    assembler = ImageAssembler()
    _feed(assembler, 0, IMAGE)
    with pytest.raises(IncompleteImage, match="1 of 2"):
        assembler.finish(2)


def test_empty_stream_refused() -> None:
    """A stream that delivers no image at all is incomplete."""
    with pytest.raises(IncompleteImage, match="0 of 1"):
        ImageAssembler().finish(1)
