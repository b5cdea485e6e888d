"""A generation as the caller asked for it, before validation: the data plane's input.

The servicer makes one from a GenerateImageRequest; validation checks it and
fills in the defaults. Zero and empty values mean "not set", as in proto3;
the two fields where zero is a real choice (seed, guidance scale) are None
when unset.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelgate.server.core.image_format import ImageFormat


@dataclass(frozen=True, slots=True)
class GenerationAsk:
    """The caller's fields, unchecked."""

    prompt: str
    negative_prompt: str = ""
    model: str = ""
    """Empty: the server's default model."""
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance_scale: float | None = None
    num_images: int = 0
    output_format: ImageFormat | None = ImageFormat.PNG
    """None: a format this server does not know (refused by validation)."""
    quality: int = 0
    include_metadata: bool = False
    preview_every_steps: int = 0
    seed: int | None = None


__all__ = ["GenerationAsk"]
