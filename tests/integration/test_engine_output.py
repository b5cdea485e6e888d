"""What comes out of a generation: encoding quality, metadata, previews and safety filtering."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from tiny_pipelines import tiny_safety_checker

from pixelgate.client import (
    ServerError,
    Unavailable,
)
from pixelgate.client.credentials import channel_credentials
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_SOFTWARE = 0x0131
FILTERED = pb.ImageComplete.FINISH_REASON_FILTERED
COMPLETE = pb.ImageComplete.FINISH_REASON_COMPLETE


@pytest.fixture
def raw(pki, mint):
    """Opens raw ImageService stubs (every request field available) to a server."""
    channels: list[grpc.Channel] = []

    def _open(server) -> pb_grpc.ImageServiceStub:
        credentials = channel_credentials(
            ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, token=mint()
        )
        channel = grpc.secure_channel(server.target, credentials)
        channels.append(channel)
        return pb_grpc.ImageServiceStub(channel)

    yield _open
    for channel in channels:
        channel.close()


def _generate(stub, **fields) -> list[pb.GenerateImageResponse]:
    fields.setdefault("prompt", "a lighthouse at dusk")
    fields.setdefault("steps", 2)
    return list(stub.GenerateImage(pb.GenerateImageRequest(**fields), timeout=60))


def _of(responses, kind: str) -> list:
    return [getattr(r, kind) for r in responses if r.WhichOneof("event") == kind]


def _image_bytes(responses) -> list[bytes]:
    """Each image's bytes, by image index, checked against its ImageComplete."""
    data: dict[int, bytearray] = {}
    for chunk in _of(responses, "chunk"):
        data.setdefault(chunk.image_index, bytearray()).extend(chunk.data)
    completes = _of(responses, "complete")
    assert all(c.finish_reason == COMPLETE for c in completes)
    assert sorted(data) == [c.image_index for c in completes]
    for complete in completes:
        assert len(data[complete.image_index]) == complete.size_bytes
    return [bytes(data[index]) for index in sorted(data)]


def test_lower_jpeg_and_webp_quality_gives_smaller_files(server, raw):
    """A caller asking for quality 20 gets a much smaller file than at quality 95."""
    stub = raw(server)
    for output_format in (pb.OUTPUT_FORMAT_JPEG, pb.OUTPUT_FORMAT_WEBP):
        sizes = {}
        for quality in (20, 95):
            [data] = _image_bytes(
                _generate(
                    stub,
                    seed=3,
                    width=128,
                    height=128,
                    output_format=output_format,
                    quality=quality,
                )
            )
            sizes[quality] = len(data)
        assert sizes[20] < sizes[95] * 0.8, (output_format, sizes)


def test_metadata_is_written_only_when_asked_and_never_names_the_prompt(server, raw):
    """include_metadata records model, seed and steps in the file; without it the file is bare."""
    stub = raw(server)
    prompt = "a very particular lighthouse"
    for output_format in (pb.OUTPUT_FORMAT_PNG, pb.OUTPUT_FORMAT_JPEG, pb.OUTPUT_FORMAT_WEBP):
        [tagged] = _image_bytes(
            _generate(
                stub, prompt=prompt, seed=42, output_format=output_format, include_metadata=True
            )
        )
        [bare] = _image_bytes(_generate(stub, prompt=prompt, seed=42, output_format=output_format))
        assert prompt.encode() not in tagged and b"lighthouse" not in tagged
        assert b"pixelgate" not in bare and b"seed" not in bare
        with Image.open(io.BytesIO(tagged)) as image, Image.open(io.BytesIO(bare)) as plain:
            if output_format == pb.OUTPUT_FORMAT_PNG:
                assert image.info["pixelgate:seed"] == "42"
                assert image.info["pixelgate:model"] == "tiny-sd-test"
                assert image.info["pixelgate:steps"] == "2"
                assert not [key for key in plain.info if str(key).startswith("pixelgate")]
            else:
                exif = image.getexif()
                description = exif[EXIF_IMAGE_DESCRIPTION]
                assert "seed=42" in description
                assert "model=tiny-sd-test" in description
                assert "steps=2" in description
                assert exif[EXIF_SOFTWARE] == "pixelgate"
                assert len(plain.getexif()) == 0
                assert "exif" not in plain.info


def test_previews_arrive_every_n_steps_at_an_eighth_of_the_size(server, raw):
    """preview_every_steps=2 shows a small JPEG on steps 2, 4 and 6, and none in between."""
    stub = raw(server)
    responses = _generate(stub, seed=8, steps=6, width=128, height=64, preview_every_steps=2)
    running = [p for p in _of(responses, "progress") if p.state == pb.Progress.STATE_RUNNING]
    assert [p.step for p in running] == [1, 2, 3, 4, 5, 6]
    assert [p.step for p in running if p.preview_jpeg] == [2, 4, 6]
    for progress in running:
        if progress.preview_jpeg:
            with Image.open(io.BytesIO(progress.preview_jpeg)) as preview:
                assert preview.format == "JPEG"
                assert preview.size == (128 // 8, 64 // 8)
    assert not [
        p
        for p in _of(responses, "progress")
        if p.state == pb.Progress.STATE_QUEUED and p.preview_jpeg
    ]
    assert len(_image_bytes(responses)) == 1

    without = _generate(stub, seed=8, steps=6, width=128, height=64)
    assert not [p for p in _of(without, "progress") if p.preview_jpeg]


def test_a_denylisted_prompt_is_filtered_without_running(start_server, raw):
    """A prompt with a denied phrase, however cased or spaced, yields filtered images, no bytes."""
    server = start_server(safety={"prompt_denylist": ["forbidden phrase"]})
    stats = server.running.engine.stats
    stub = raw(server)
    for prompt in (
        "a FORBIDDEN   phrase here",
        "Forbidden \u00a0 Phrase",  # a no-break space among the spaces
        "ｆｏｒｂｉｄｄｅｎ phrase",  # noqa: RUF001  (fullwidth letters fold to ASCII)
    ):
        responses = _generate(stub, prompt=prompt, seed=5, num_images=2)
        assert not _of(responses, "chunk")
        assert not [p for p in _of(responses, "progress") if p.state == pb.Progress.STATE_RUNNING]
        completes = _of(responses, "complete")
        assert [(c.image_index, c.seed) for c in completes] == [(0, 5), (1, 6)]
        for complete in completes:
            assert complete.finish_reason == FILTERED
            assert (complete.size_bytes, complete.sha256) == (0, "")
            assert complete.model == "tiny-sd-test"
    assert stats.jobs_started == 0
    assert stats.images_filtered == 6

    # Whole words only: a longer word that merely contains the phrase is not denied.
    [data] = _image_bytes(_generate(stub, prompt="forbidden phrases", seed=5))
    assert data
    assert stats.jobs_started == 1
    assert stats.images_filtered == 6


def test_the_python_client_reports_a_filtered_image_as_filtered_not_as_corrupt(
    start_server, connect
):
    """A filtered image reaches a Python caller as a policy outcome, not a transfer error."""
    server = start_server(safety={"prompt_denylist": ["forbidden phrase"]})
    client = connect(server)
    images = client.generate("a forbidden phrase", steps=2, seed=5, num_images=2)
    assert [(i.index, i.filtered, i.data) for i in images] == [(0, True, b""), (1, True, b"")]


def _safety_checker_dir(directory: Path, threshold: float) -> Path:
    """A tiny random CLIP safety checker saved to `directory` (see tiny_safety_checker)."""
    checker, extractor = tiny_safety_checker(threshold)
    checker.save_pretrained(directory)
    extractor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checker_dirs(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Two saved safety checkers: one that flags every image, one that flags none."""
    yield {
        "flags_all": _safety_checker_dir(tmp_path_factory.mktemp("flags-all"), -10.0),
        "flags_none": _safety_checker_dir(tmp_path_factory.mktemp("flags-none"), 10.0),
    }


def test_images_the_output_checker_flags_are_never_sent(start_server, raw, checker_dirs):
    """With the diffusers safety checker on, flagged images arrive as filtered with no bytes."""
    server = start_server(
        safety={"output_checker": "diffusers", "checker_source": str(checker_dirs["flags_all"])}
    )
    stats = server.running.engine.stats
    responses = _generate(raw(server), seed=9, num_images=2, steps=3)
    assert not _of(responses, "chunk")
    steps = [p.step for p in _of(responses, "progress") if p.state == pb.Progress.STATE_RUNNING]
    assert steps == [1, 2, 3]  # the job ran; its output was blocked
    completes = _of(responses, "complete")
    assert [(c.image_index, c.seed, c.finish_reason) for c in completes] == [
        (0, 9, FILTERED),
        (1, 10, FILTERED),
    ]
    assert all((c.size_bytes, c.sha256) == (0, "") for c in completes)
    assert (stats.images_filtered, stats.jobs_started, stats.jobs_completed) == (2, 1, 1)


def test_images_the_output_checker_passes_come_back_normally(start_server, raw, checker_dirs):
    """With a checker that flags nothing, every image arrives whole."""
    server = start_server(
        safety={"output_checker": "diffusers", "checker_source": str(checker_dirs["flags_none"])}
    )
    stats = server.running.engine.stats
    images = _image_bytes(_generate(raw(server), seed=9, num_images=2, steps=3))
    assert len(images) == 2
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (64, 64)
    assert stats.images_filtered == 0


def test_an_output_checker_that_cannot_load_fails_requests_without_hanging(
    start_server, connect, tmp_path
):
    """A misconfigured safety checker gives callers an error, never an unchecked image or a hang."""
    server = start_server(
        safety={"output_checker": "diffusers", "checker_source": str(tmp_path / "no-checker")}
    )
    client = connect(server)
    for seed in (1, 2):  # the worker is still there for the second request
        with pytest.raises((ServerError, Unavailable)):
            client.generate("a fox", steps=2, seed=seed, timeout=3)
    assert server.running.engine.stats.jobs_completed == 0
