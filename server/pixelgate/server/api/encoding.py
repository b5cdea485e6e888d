"""Image encoding: PIL images to PNG/JPEG/WebP bytes with their SHA-256.

By default the encoders write no metadata (no EXIF, no text chunks): the bytes
carry the picture and nothing about how or for whom it was made. On request
they record the model, seed and steps (PNG text chunks; EXIF for JPEG and WebP)
and never anything about the caller or the prompt.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from pixelgate.server.core.image_format import ImageFormat


@dataclass(frozen=True)
class EncodedImage:
    """An image's encoded bytes and what a receiver needs to check them."""

    data: bytes
    mime_type: str
    width: int
    height: int
    sha256: str


_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131


def encode_image(
    image: Image.Image,
    image_format: ImageFormat,
    quality: int = 90,
    metadata: Mapping[str, str] | None = None,
) -> EncodedImage:
    """Encodes `image`; `quality` applies to the lossy formats, `metadata` is written if given."""
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if image_format is ImageFormat.PNG:
        text = None
        if metadata:
            text = PngImagePlugin.PngInfo()
            for key, value in metadata.items():
                text.add_text(f"pixelgate:{key}", value)
        rgb.save(buffer, format="PNG", optimize=False, pnginfo=text)
    else:
        extra = {}
        if metadata:
            exif = Image.Exif()
            exif[_EXIF_SOFTWARE] = "pixelgate"
            exif[_EXIF_IMAGE_DESCRIPTION] = "; ".join(f"{k}={v}" for k, v in metadata.items())
            extra["exif"] = exif.tobytes()
        rgb.save(buffer, format=image_format.pillow_name, quality=quality, **extra)
    data = buffer.getvalue()
    return EncodedImage(
        data=data,
        mime_type=image_format.mime_type,
        width=rgb.width,
        height=rgb.height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def chunks(data: bytes, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, slice) pairs covering `data` in order, each at most `size` bytes."""
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield offset, bytes(view[offset : offset + size])


__all__ = ["EncodedImage", "chunks", "encode_image"]
