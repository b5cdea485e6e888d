"""What a generation job is and what it reports, independent of gRPC.

The data plane (api/generation_service.py) validates a caller's ask into a
GenerationRequest and turns the engine's events into its own; the engine and
models see only these.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pixelgate.server.core.image_format import ImageFormat


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: every field within bounds, defaults filled in."""

    model_id: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    """One seed per image; image i uses seeds[i]."""
    output_format: ImageFormat
    quality: int = 90
    """JPEG and WebP quality."""
    include_metadata: bool = False
    """Write model, seed and steps into the file."""
    preview_every: int = 0
    """Send a preview every this many steps; 0 = none."""

    @property
    def batch_key(self) -> tuple[str, int, int, int, float, bool]:
        """Jobs with equal keys can share one pipeline call."""
        # SDXL conditions on zeros for an empty negative prompt when the whole call
        # has none, but on the encoded "" when another image in it has one: mixing
        # the two would change a job's image with its batch-mates.
        return (
            self.model_id,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.negative_prompt == "",
        )


@dataclass(frozen=True)
class Queued:
    """The job waits; `position` jobs run first; `eta` seconds until it is expected done."""

    position: int
    eta: float | None = None


@dataclass(frozen=True)
class StepDone:
    """Denoising step `step` of `total` finished."""

    step: int
    total: int
    eta: float | None = None
    preview_jpeg: bytes | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """One finished image of the job; `image` is None when the safety policy filtered it."""

    index: int
    seed: int
    steps: int
    image: Image.Image | None

    @property
    def filtered(self) -> bool:
        """True when the image was blocked and must not be sent."""
        return self.image is None


EngineEvent = Queued | StepDone | GeneratedImage

__all__ = ["EngineEvent", "GeneratedImage", "GenerationRequest", "Queued", "StepDone"]
