"""The output encodings a caller may ask for (the request's `output_format`)."""

from __future__ import annotations

import enum


class ImageFormat(enum.Enum):
    """An output encoding: (Pillow format name, MIME type)."""

    PNG = ("PNG", "image/png")
    JPEG = ("JPEG", "image/jpeg")
    WEBP = ("WEBP", "image/webp")

    @property
    def pillow_name(self) -> str:
        """The name Pillow's `save` takes."""
        return self.value[0]

    @property
    def mime_type(self) -> str:
        """What the bytes are, for the caller."""
        return self.value[1]


__all__ = ["ImageFormat"]
