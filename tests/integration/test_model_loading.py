"""Model loading as a GPU server needs it: the checker comes with the model, previews stay off
the denoising thread, and a load that outlasts the grace does not hold up shutdown."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_pipelines import save_sd_with_checker

from pixelgate.server.core.config import EngineSettings, ModelSettings
from pixelgate.server.core.model_card import ModelCard
from pixelgate.server.engine.engine import GenerationEngine
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.models import safety
from pixelgate.server.models.registry import ModelRegistry, RegisteredModel
from pixelgate.server.models.safety import DiffusersSafetyChecker
from pixelgate.v1 import image_service_pb2 as pb


@pytest.fixture(scope="module")
def sd_with_checker(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model saved with a (random, flag-everything) safety checker."""
    return save_sd_with_checker(model_cache, tmp_path_factory.mktemp("sd-with-checker"))


def test_the_output_checker_loads_with_the_model_once_in_its_dtype(
    start_server, connect, tiny_model, sd_with_checker, monkeypatch
):
    """With warm-up off, the checker is loaded before the server reports SERVING (not on the
    first image, in that caller's time), in the model's dtype, and never again."""
    loads: list[tuple[str, torch.dtype]] = []

    class CountedChecker(DiffusersSafetyChecker):
        def __init__(self, source: str, device: str, dtype: torch.dtype = torch.float32):
            super().__init__(source, device, dtype)
            loads.append((device, dtype))

    monkeypatch.setattr(safety, "DiffusersSafetyChecker", CountedChecker)
    bfloat16_model = copy.deepcopy(tiny_model)
    bfloat16_model.dtype = "bfloat16"  # what a bfloat16 model reports; the checker follows

    server = start_server(
        loader=lambda settings, device: bfloat16_model,
        engine={"warmup": False},
        safety={"output_checker": "diffusers", "checker_source": str(sd_with_checker)},
    )
    client = connect(server)
    assert client.health() == "SERVING"
    assert loads == [("cpu", torch.bfloat16)]

    for seed in (1, 2):
        events = list(client.stream("a fox", steps=2, seed=seed, timeout=60))
        assert events
    assert loads == [("cpu", torch.bfloat16)]


def test_preview_frames_are_encoded_off_the_worker_thread_in_step_order(
    start_server, raw_stub, monkeypatch
):
    """The step callback only snapshots the latents: the JPEG is made on another thread, and
    the progress events still arrive in step order with the frames on the right steps."""
    from pixelgate.server.engine import worker as worker_module

    encoded_on: list[str] = []
    encode = worker_module.preview_jpeg

    def recording(snapshot: Any, latent_format: Any) -> bytes | None:
        encoded_on.append(threading.current_thread().name)
        return encode(snapshot, latent_format)

    monkeypatch.setattr(worker_module, "preview_jpeg", recording)
    stub = raw_stub(start_server())
    responses = list(
        stub.GenerateImage(
            pb.GenerateImageRequest(prompt="a fox", seed=3, steps=6, preview_every_steps=3),
            timeout=60,
        )
    )
    running = [
        r.progress
        for r in responses
        if r.WhichOneof("event") == "progress" and r.progress.state == pb.Progress.STATE_RUNNING
    ]
    assert [p.step for p in running] == [1, 2, 3, 4, 5, 6]
    assert [p.step for p in running if p.preview_jpeg] == [3, 6]
    assert len(encoded_on) == 2
    # The worker's preview thread ("pixelgate-worker-0-cpu-previews_0"), not the worker itself.
    assert all(name.startswith("pixelgate-worker") and "-previews" in name for name in encoded_on)


@pytest.fixture
def raw_stub(pki, mint):
    """Opens raw ImageService stubs (every request field available) to a server."""
    import grpc

    from pixelgate.client.credentials import channel_credentials
    from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

    channels: list[Any] = []

    def _open(server: Any) -> Any:
        credentials = channel_credentials(
            ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, token=mint()
        )
        channels.append(grpc.secure_channel(server.target, credentials))
        return pb_grpc.ImageServiceStub(channels[-1])

    yield _open
    for channel in channels:
        channel.close()


def test_closing_the_engine_does_not_wait_past_the_grace_for_a_model_still_loading(caplog):
    """A load that outlasts the grace (a slow disk, a download) is abandoned, and said so in
    the log: the worker is a daemon thread, so the process stops on time."""
    caplog.set_level(logging.WARNING, logger="pixelgate.engine")
    loading, never = threading.Event(), threading.Event()

    def stuck_loader(settings: ModelSettings, device: str) -> Any:
        loading.set()
        never.wait(60)  # released at the end of the test
        raise RuntimeError("abandoned")

    settings = ModelSettings(id="slow")
    registry = ModelRegistry(
        [RegisteredModel(settings, ModelCard.of(settings, None), ("cpu",), None)], "slow"
    )
    engine = GenerationEngine(
        registry,
        ["cpu"],
        settings=EngineSettings(devices=("cpu",)),
        loader=stuck_loader,
        memory=MemoryGuard(None),
    )

    async def start_then_close() -> float:
        await engine.start()
        await asyncio.to_thread(loading.wait, 10)
        began = time.monotonic()
        await engine.aclose(grace=0.2)
        return time.monotonic() - began

    try:
        took = asyncio.run(start_then_close())
    finally:
        never.set()
    assert took < 2.0
    assert any("loading model slow" in record.getMessage() for record in caplog.records)
