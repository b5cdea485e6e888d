"""What a generation job is and what it reports, independent of gRPC.

The servicer turns protobuf into a GenerationRequest (after validation) and
engine events back into protobuf; the engine and models see only these.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pixelgate.server.encoding import ImageFormat


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


@dataclass(frozen=True)
class Queued:
    """The job waits; `position` jobs are ahead of it."""

    position: int


@dataclass(frozen=True)
class StepDone:
    """Denoising step `step` of `total` finished."""

    step: int
    total: int


@dataclass(frozen=True)
class GeneratedImage:
    """One finished image of the job."""

    index: int
    seed: int
    steps: int
    image: Image.Image


EngineEvent = Queued | StepDone | GeneratedImage

__all__ = ["EngineEvent", "GeneratedImage", "GenerationRequest", "Queued", "StepDone"]
