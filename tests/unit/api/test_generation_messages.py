"""The servicer's conversions: GenerateImage requests to the data plane's input, events to messages.

Unset optional fields stay distinguishable from zero (a seed of 0 and a
guidance scale of 0 are real choices), an output format the server does not
know reaches validation as such, and each event becomes the message a caller
reads.
"""

from __future__ import annotations

from pixelgate.server.api.generation_events import (
    ImageBytes,
    ImageDone,
    ImageFiltered,
    InQueue,
    StepDone,
)
from pixelgate.server.api.generation_messages import ask_from, response_for
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.v1 import image_service_pb2 as pb


def test_unset_fields_stay_unset() -> None:
    """A request with only a prompt leaves every other field to validation's defaults."""
    ask = ask_from(pb.GenerateImageRequest(prompt="a fox"))
    assert ask.prompt == "a fox"
    assert (ask.model, ask.width, ask.height, ask.steps, ask.num_images) == ("", 0, 0, 0, 0)
    assert ask.seed is None and ask.guidance_scale is None
    assert ask.output_format is ImageFormat.PNG  # UNSPECIFIED means PNG


def test_zero_seed_and_guidance_are_kept() -> None:
    """A seed or guidance scale explicitly set to 0 is 0, not "unset"."""
    ask = ask_from(pb.GenerateImageRequest(prompt="a fox", seed=0, guidance_scale=0.0))
    assert ask.seed == 0 and ask.guidance_scale == 0.0


def test_output_formats() -> None:
    """Each known output format maps to its encoding; an unknown number to None (refused later)."""
    formats = {
        pb.OUTPUT_FORMAT_PNG: ImageFormat.PNG,
        pb.OUTPUT_FORMAT_JPEG: ImageFormat.JPEG,
        pb.OUTPUT_FORMAT_WEBP: ImageFormat.WEBP,
        99: None,
    }
    for number, expected in formats.items():
        ask = ask_from(pb.GenerateImageRequest(prompt="a fox", output_format=number))  # type: ignore[arg-type]
        assert ask.output_format is expected


def test_progress_messages() -> None:
    """Queue position and steps travel as Progress, QUEUED then RUNNING, with the ETA."""
    queued = response_for(InQueue(position=3, total_steps=20, eta=None)).progress
    assert (queued.state, queued.queue_position, queued.total_steps) == (
        pb.Progress.STATE_QUEUED,
        3,
        20,
    )
    assert queued.eta_seconds == 0.0  # no estimate: 0
    step = response_for(StepDone(step=5, total=20, eta=2.5, preview_jpeg=b"jpg")).progress
    assert (step.state, step.step, step.total_steps, step.eta_seconds, step.preview_jpeg) == (
        pb.Progress.STATE_RUNNING,
        5,
        20,
        2.5,
        b"jpg",
    )


def test_image_messages() -> None:
    """Chunks carry their offset; completion carries the digest; a filtered image says so."""
    sent = response_for(ImageBytes(image_index=1, offset=64, data=b"abc"))
    chunk = pb.GenerateImageResponse.FromString(sent).chunk
    assert (chunk.image_index, chunk.offset, chunk.data) == (1, 64, b"abc")
    done = response_for(
        ImageDone(1, "image/png", 64, 48, 3, "ab" * 32, seed=9, model="tiny", steps=4)
    ).complete
    assert done.finish_reason == pb.ImageComplete.FINISH_REASON_COMPLETE
    assert (done.sha256, done.size_bytes, done.width, done.height) == ("ab" * 32, 3, 64, 48)
    assert (done.mime_type, done.seed, done.model, done.steps) == ("image/png", 9, "tiny", 4)
    filtered = response_for(ImageFiltered(image_index=0, seed=9, model="tiny", steps=4))
    assert filtered.complete.finish_reason == pb.ImageComplete.FINISH_REASON_FILTERED
    assert not filtered.complete.sha256 and not filtered.complete.size_bytes
