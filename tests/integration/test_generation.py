"""GenerateImage over real mTLS: progress, verified image bytes, formats, seeds."""

from __future__ import annotations

import hashlib
import io
import os

from PIL import Image
from support import FakeRuntime

from pixelgate.client import GeneratedImage
from pixelgate.v1 import image_service_pb2 as pb


def test_generation_streams_progress_then_a_verified_png(server, connect):
    """A caller sees queued, then every step, then a PNG whose SHA-256 matches and opens at size."""
    client = connect(server)
    events = list(client.stream("a red fox in the snow", width=64, height=96, steps=4, seed=11))

    progress = [e for e in events if isinstance(e, pb.Progress)]
    images = [e for e in events if isinstance(e, GeneratedImage)]
    assert progress[0].state == pb.Progress.STATE_QUEUED
    assert [p.step for p in progress[1:]] == [1, 2, 3, 4]
    assert all(p.total_steps == 4 for p in progress)
    [image] = images
    assert hashlib.sha256(image.data).hexdigest() == image.sha256
    assert image.mime_type == "image/png"
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.size == (64, 96)
    assert (image.seed, image.steps, image.model) == (11, 4, "tiny-sd-test")


def test_same_seed_and_parameters_give_the_same_image(server, connect):
    """Reproducibility: the seed fully determines the image on one machine."""
    client = connect(server)
    [first] = client.generate("a lighthouse", steps=3, seed=1234)
    [again] = client.generate("a lighthouse", steps=3, seed=1234)
    [other] = client.generate("a lighthouse", steps=3, seed=1235)
    assert first.sha256 == again.sha256
    assert first.sha256 != other.sha256


def test_unset_seed_is_random_and_echoed_so_the_image_can_be_reproduced(server, connect):
    """A request without a seed gets a random one, and asking for it again reproduces the image."""
    client = connect(server)
    [first] = client.generate("a lighthouse", steps=2)
    [second] = client.generate("a lighthouse", steps=2)
    assert first.seed != second.seed
    [replay] = client.generate("a lighthouse", steps=2, seed=first.seed)
    assert replay.sha256 == first.sha256


def test_several_images_each_arrive_complete_with_their_own_seed(server, connect):
    """num_images > 1: every image has its own digest and seed (seed + i)."""
    client = connect(server)
    images = client.generate("a lighthouse", steps=2, seed=50, num_images=3)
    assert [i.index for i in images] == [0, 1, 2]
    assert [i.seed for i in images] == [50, 51, 52]
    assert len({i.sha256 for i in images}) == 3
    [alone] = client.generate("a lighthouse", steps=2, seed=51)
    # Batched arithmetic may round differently from a batch of one: compare pixels.
    assert _max_pixel_difference(alone.data, images[1].data) <= 2


def _max_pixel_difference(first: bytes, second: bytes) -> int:
    with Image.open(io.BytesIO(first)) as a, Image.open(io.BytesIO(second)) as b:
        a_pixels, b_pixels = a.convert("RGB").tobytes(), b.convert("RGB").tobytes()
    return max(abs(x - y) for x, y in zip(a_pixels, b_pixels, strict=True))


def test_each_output_format_decodes_at_the_requested_size(server, connect):
    """JPEG and WebP come back as what their MIME type says."""
    client = connect(server)
    for name, pillow_format, mime in (
        ("jpeg", "JPEG", "image/jpeg"),
        ("webp", "WEBP", "image/webp"),
    ):
        [image] = client.generate("a lighthouse", steps=2, width=128, height=64, output_format=name)
        assert image.mime_type == mime
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert (decoded.format, decoded.size) == (pillow_format, (128, 64))


class _NoiseModel:
    """Paints noise, which PNG cannot compress: a large image without a large model's work."""

    def run(self, batch, on_step):
        from PIL import Image

        for index in range(1, batch.steps + 1):
            on_step(index, batch.steps, None)
        noise = os.urandom(3 * batch.width * batch.height)
        return [Image.frombytes("RGB", (batch.width, batch.height), noise) for _ in batch.seeds]


def test_a_large_image_arrives_whole_in_chunks_of_at_most_1_mib(start_server, pki, mint, connect):
    """A 1024x768 PNG of noise (about 2.3 MiB) streams in 1 MiB chunks, in order, that add up
    to the announced size and digest; the Python client takes them and verifies the image."""
    import grpc

    from pixelgate.client.credentials import channel_credentials
    from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

    server = start_server(
        loader=lambda settings, device: FakeRuntime(_NoiseModel()),
        models=[{"max_width": 1024, "max_height": 1024, "activation_mb_per_megapixel": 1}],
    )
    request = pb.GenerateImageRequest(prompt="noise", width=1024, height=768, steps=1)
    credentials = channel_credentials(
        ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, token=mint()
    )
    with grpc.secure_channel(server.target, credentials) as channel:
        responses = list(pb_grpc.ImageServiceStub(channel).GenerateImage(request))
    chunks = [r.chunk for r in responses if r.WhichOneof("event") == "chunk"]
    [complete] = [r.complete for r in responses if r.WhichOneof("event") == "complete"]
    assert [len(c.data) for c in chunks[:2]] == [1 << 20, 1 << 20]
    assert len(chunks) == 3 and 0 < len(chunks[2].data) <= 1 << 20
    assert [c.offset for c in chunks] == [
        sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))
    ]
    data = b"".join(c.data for c in chunks)
    assert len(data) == complete.size_bytes
    assert hashlib.sha256(data).hexdigest() == complete.sha256

    [image] = connect(server).generate("noise", width=1024, height=768, steps=1)
    assert hashlib.sha256(image.data).hexdigest() == image.sha256
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (1024, 768)


def test_list_models_names_the_test_model_and_its_bounds(server, connect):
    """ListModels tells a caller the default model is a test model, and its limits."""
    [model] = connect(server).list_models()
    assert model.id == "tiny-sd-test"
    assert model.is_default and model.is_test_model
    assert (model.min_size, model.max_width, model.max_height) == (64, 512, 512)
    assert model.max_prompt_tokens == 75
