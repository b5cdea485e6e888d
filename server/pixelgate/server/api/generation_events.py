"""What a generation tells its caller, in order, before it becomes protobuf.

A stream reads: Admitted (not sent; the call's quota is known and the job
can be stopped), InQueue, StepDone per step, then per image either its
ImageBytes chunks and an ImageDone, or an ImageFiltered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pixelgate.server.core.generation import StepDone


@dataclass(frozen=True)
class Admitted:
    """Quota charged and job submitted; `cancel` stops the job however the call ends."""

    cancel: Callable[[], None]


@dataclass(frozen=True)
class InQueue:
    """The job waits behind `position` others; `eta` seconds until it is expected done."""

    position: int
    total_steps: int
    eta: float | None


@dataclass(frozen=True)
class ImageBytes:
    """A slice of image `image_index`'s encoded bytes, starting at `offset`."""

    image_index: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class ImageDone:
    """Image `image_index` was sent whole; `sha256` is the digest of all its bytes."""

    image_index: int
    mime_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    seed: int
    model: str
    steps: int


@dataclass(frozen=True)
class ImageFiltered:
    """Image `image_index` was blocked by the safety policy: no bytes are sent."""

    image_index: int
    seed: int
    model: str
    steps: int


GenerationEvent = Admitted | InQueue | StepDone | ImageBytes | ImageDone | ImageFiltered

__all__ = [
    "Admitted",
    "GenerationEvent",
    "ImageBytes",
    "ImageDone",
    "ImageFiltered",
    "InQueue",
    "StepDone",
]
