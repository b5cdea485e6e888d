"""What real pipelines do to results, through the service: step counts, safety, SDXL batching.

Each model here is loaded by the server's own loader (from_pretrained on a saved
tiny pipeline), so diffusers' behaviour, not a fake's, is what the caller sees.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import FakeRuntime, wait_for
from tiny_pipelines import save_sd_with_checker, tiny_model_entry

from pixelgate.client import GeneratedImage
from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.runtime import load_model
from pixelgate.server.models.tiny_sdxl import ensure_tiny_sdxl
from pixelgate.v1 import image_service_pb2 as pb


def _real_loader(cache_dir: Path) -> Any:
    return lambda settings, device: load_model(settings, device, cache_dir)


def _running(events: list[Any]) -> list[pb.Progress]:
    return [
        e for e in events if isinstance(e, pb.Progress) and e.state == pb.Progress.STATE_RUNNING
    ]


def _images(events: list[Any]) -> list[GeneratedImage]:
    return [e for e in events if isinstance(e, GeneratedImage)]


def _pixels(image: GeneratedImage) -> np.ndarray:
    with Image.open(io.BytesIO(image.data)) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.int16)


def _difference(a: GeneratedImage, b: GeneratedImage) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "HeunDiscreteScheduler"])
def test_a_request_reports_the_steps_the_caller_asked_for(
    start_server, connect, model_cache, scheduler
):
    """PNDM (SD1.5's default) runs 21 timesteps for 20 steps, Heun 39; the caller sees 1..20."""
    server = start_server(
        loader=_real_loader(model_cache),
        models=[{"scheduler": scheduler}],
        engine={"warmup": False},
    )
    events = list(connect(server).stream("a red fox", steps=20, seed=4))
    running = _running(events)
    assert [(p.step, p.total_steps) for p in running] == [(step, 20) for step in range(1, 21)]
    [image] = _images(events)
    assert image.steps == 20


@pytest.fixture(scope="module")
def sd_with_checker(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model saved with its own (flag-everything) safety checker, as SD1.5 ships."""
    return save_sd_with_checker(model_cache, tmp_path_factory.mktemp("sd-with-checker"))


def test_the_pipelines_own_checker_never_sends_a_black_image_as_complete(
    start_server, connect, model_cache, sd_with_checker
):
    """With no output checker configured, the pipeline's checker does not blank the image."""
    server = start_server(
        loader=_real_loader(model_cache),
        models=[tiny_model_entry(sd_with_checker)],
        engine={"warmup": False},
    )
    [image] = connect(server).generate("a red fox", steps=2, seed=4)
    assert not image.filtered
    assert _pixels(image).max() > 0


def test_the_pipelines_checker_asked_for_as_output_checker_reports_filtered(
    start_server, connect, model_cache, sd_with_checker
):
    """safety.output_checker = "diffusers" on the pipeline's directory: flagged is FILTERED."""
    server = start_server(
        loader=_real_loader(model_cache),
        models=[tiny_model_entry(sd_with_checker)],
        engine={"warmup": False},
        safety={"output_checker": "diffusers", "checker_source": str(sd_with_checker)},
    )
    images = connect(server).generate("a red fox", steps=2, seed=4, num_images=2)
    assert [(i.index, i.filtered, i.data) for i in images] == [(0, True, b""), (1, True, b"")]


@pytest.fixture(scope="module")
def tiny_sdxl(model_cache: Path) -> Any:
    """The tiny SDXL-shaped model, loaded back through from_pretrained (float32 on the CPU)."""
    settings = ModelSettings(**tiny_model_entry(ensure_tiny_sdxl(model_cache), id="tiny-sdxl"))
    return load_model(settings, "cpu", model_cache)


def _drain(streams: list[Iterator[Any]]) -> list[list[Any]]:
    with ThreadPoolExecutor(len(streams)) as pool:
        return list(pool.map(list, streams))


def test_an_sdxl_image_is_the_same_alone_and_queued_with_a_negative_prompt_job(
    start_server, connect, mint, tiny_sdxl
):
    """Same seed and prompt, same picture, whether or not a job with a negative prompt waited
    beside it (SDXL zeroes an empty negative only when the whole call has none)."""
    gated = FakeRuntime(copy.deepcopy(tiny_sdxl))
    server = start_server(loader=lambda settings, device: gated, models=[{"id": "tiny-sdxl"}])
    busy, fox, bird = (connect(server, token=mint(subject=f"caller-{i}")) for i in range(3))
    engine = server.running.engine
    gated.gate.clear()
    try:
        blocker = busy.stream("occupies the worker", steps=1, seed=1)
        next(blocker)
        wait_for(lambda: len(gated.calls) == 1, what="the first job started")
        streams = [
            fox.stream("a red fox", steps=3, seed=500),
            bird.stream("a red fox", negative_prompt="blurry", steps=3, seed=600),
        ]
        for stream in streams:
            next(stream)

        def queued() -> bool:
            order = engine.queue.in_service_order()
            return len(order) == 2 and not any(job.held for job in order)

        wait_for(queued, what="two released jobs in the queue")
    finally:
        gated.gate.set()
    _, fox_events, _ = _drain([blocker, *streams])

    assert sorted(gated.calls[1:]) == [(500,), (600,)]  # not one batch
    [fox_queued] = _images(fox_events)
    [fox_alone] = fox.generate("a red fox", steps=3, seed=500)
    assert _difference(fox_queued, fox_alone) <= 2
