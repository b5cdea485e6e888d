"""The GPU report: full-size random SD1.5 and SDXL in float16 through the real loading path.

Skipped without CUDA. On a GPU host: `python -m pytest tests/gpu -s` (a few minutes on
one H200). It prints, per model family: peak memory (allocated, reserved) against the
memory guard's prediction for batches of 1, 4 and 8; the warm step time against the
warm-up's estimate; steps/s through the engine against the raw pipeline; a batch of 4
against 1; previews on against off; a forced decode out-of-memory followed by a normal
request; the same seed alone and batched. Everything it writes lies in a temporary
directory. PIXELGATE_GPU_FAMILIES="sd15" (or "sdxl") runs one family;
PIXELGATE_GPU_ON_CPU=1 runs the same script on the CPU with tiny configs (a check of the
script, not of a GPU).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
ON_CPU = os.environ.get("PIXELGATE_GPU_ON_CPU") == "1"
if not ON_CPU and not torch.cuda.is_available():
    pytest.skip("the GPU report needs a CUDA device", allow_module_level=True)

import numpy as np  # noqa: E402
from full_size_pipelines import SD15, SDXL, Family, build_and_save  # noqa: E402

from pixelgate.server.core.config import EngineSettings, ModelSettings  # noqa: E402
from pixelgate.server.core.errors import ResourceExhausted  # noqa: E402
from pixelgate.server.core.generation import (  # noqa: E402
    GeneratedImage,
    GenerationRequest,
    StepDone,
)
from pixelgate.server.core.image_format import ImageFormat  # noqa: E402
from pixelgate.server.engine.engine import GenerationEngine  # noqa: E402
from pixelgate.server.engine.memory_guard import MIB, MemoryGuard  # noqa: E402
from pixelgate.server.engine.step_timing import Shape  # noqa: E402
from pixelgate.server.models.device import memory_budget  # noqa: E402
from pixelgate.server.models.registry import ModelRegistry  # noqa: E402
from pixelgate.server.models.runtime import DiffusersModel, PipelineBatch, load_model  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]

DEVICE = "cpu" if ON_CPU else "cuda:0"
SCALE = "tiny" if ON_CPU else "full"
FAMILIES = {family.name: family for family in (SD15, SDXL)}
PROMPT = "a lighthouse on a cliff at dusk"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _size(family: Family) -> tuple[int, int]:
    return (64, 64) if ON_CPU else (family.width, family.height)


def _steps(family: Family) -> int:
    return 4 if ON_CPU else family.steps


def _line(name: str, text: str) -> None:
    print(f"[gpu-report] {name:5s} {text}", flush=True)


def _wanted(name: str) -> bool:
    chosen = os.environ.get("PIXELGATE_GPU_FAMILIES", "sd15,sdxl")
    return name in {part.strip() for part in chosen.split(",")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The temporary directory every file of the run goes to."""
    yield tmp_path_factory.mktemp("gpu-report")


def _settings(family: Family, source: Path) -> ModelSettings:
    width, height = _size(family)
    return ModelSettings(
        id=family.name,
        source=str(source),
        pipeline=family.pipeline,
        variant="fp16",
        dtype="auto",
        is_test_model=True,
        min_size=64,
        max_width=max(width, 64),
        max_height=max(height, 64),
        default_width=width,
        default_height=height,
        default_steps=_steps(family),
    )


def _batch(family: Family, images: int, steps: int, seed: int = 0) -> PipelineBatch:
    width, height = _size(family)
    return PipelineBatch(
        prompts=(PROMPT,) * images,
        negative_prompts=("",) * images,
        seeds=tuple(range(seed, seed + images)),
        width=width,
        height=height,
        steps=steps,
        guidance_scale=7.5,
    )


def _raw_seconds(model: DiffusersModel, family: Family, images: int, steps: int) -> float:
    """One call of the diffusers pipeline itself, as a user of diffusers would make it."""
    width, height = _size(family)
    pipeline = model._pipeline
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(images)]
    _sync()
    began = time.perf_counter()
    with torch.inference_mode():
        pipeline(
            prompt=[PROMPT] * images,
            width=width,
            height=height,
            num_inference_steps=steps,
            generator=generators,
            output_type="pil",
        )
    _sync()
    return time.perf_counter() - began


def _memory(model: DiffusersModel, family: Family, settings: ModelSettings) -> None:
    """Peak memory per batch size against the guard's prediction (configured, then learned)."""
    if not DEVICE.startswith("cuda"):
        _line(family.name, "memory: no CUDA, skipped")
        return
    width, height = _size(family)
    guard = MemoryGuard(memory_budget(EngineSettings(devices=(DEVICE,)), [DEVICE]))
    guard.describe_model(
        family.name, model.weights_bytes, settings.activation_mb_per_megapixel * MIB
    )
    guard.loaded(DEVICE, family.name)
    for images in (1, 4, 8):
        predicted = guard.predict(family.name, width, height, images)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        try:
            model.run(_batch(family, images, 2), lambda step, total, latents: None)
        except torch.cuda.OutOfMemoryError:
            _line(
                family.name,
                f"memory batch {images}: out of memory (predicted {predicted // MIB} MiB)",
            )
            continue
        allocated = torch.cuda.max_memory_allocated(DEVICE)
        reserved = torch.cuda.max_memory_reserved(DEVICE)
        guard.observe_peak(family.name, width, height, images, allocated, device=DEVICE)
        learned = guard.predict(family.name, width, height, images)
        _line(
            family.name,
            f"memory batch {images}: allocated {allocated // MIB} MiB, reserved"
            f" {reserved // MIB} MiB; predicted {predicted // MIB} MiB"
            f" (allocated/predicted {allocated / predicted:.2f},"
            f" reserved/predicted {reserved / predicted:.2f}); learned {learned // MIB} MiB",
        )


class EngineDriver:
    """A real engine on the device, with the already loaded model as what its loader returns."""

    def __init__(self, family: Family, settings: ModelSettings, model: DiffusersModel, cache: Path):
        self.family = family
        registry = ModelRegistry.from_settings([settings], family.name, [DEVICE], cache)
        self.engine = GenerationEngine(
            registry,
            [DEVICE],
            settings=EngineSettings(
                devices=(DEVICE,), max_batch_images=8, max_batch_delay_ms=300, warmup=True
            ),
            loader=lambda settings, device: model,
            memory=MemoryGuard(memory_budget(EngineSettings(devices=(DEVICE,)), [DEVICE])),
        )

    async def start(self) -> None:
        await self.engine.start()
        assert await self.engine.registry.wait_settled(self.family.name)

    def request(self, seeds: tuple[int, ...], *, steps: int, preview_every: int = 0) -> Any:
        width, height = _size(self.family)
        return GenerationRequest(
            self.family.name,
            PROMPT,
            "",
            width,
            height,
            steps,
            7.5,
            seeds,
            ImageFormat.PNG,
            preview_every=preview_every,
        )

    async def generate(
        self, seeds: tuple[int, ...], *, steps: int, preview_every: int = 0
    ) -> tuple[float, list[float], list[GeneratedImage], int]:
        """Seconds to the last image, step times as events arrived, the images, previews."""
        job = self.engine.submit(
            self.request(seeds, steps=steps, preview_every=preview_every), caller="gpu-report"
        )
        return await self.collect(job)

    async def collect(self, job: Any) -> tuple[float, list[float], list[GeneratedImage], int]:
        """A submitted job's outcome, as generate() gives it."""
        began = time.perf_counter()
        step_times: list[float] = []
        images: list[GeneratedImage] = []
        previews = 0
        async for event in job.events():
            if isinstance(event, StepDone):
                step_times.append(time.perf_counter())
                previews += event.preview_jpeg is not None
            elif isinstance(event, GeneratedImage):
                images.append(event)
        return time.perf_counter() - began, step_times, images, previews

    async def together(
        self, first: tuple[int, ...], second: tuple[int, ...], *, steps: int
    ) -> list[tuple[float, list[float], list[GeneratedImage], int]]:
        """Two jobs queued while held, then let go at once: one batch, as a busy server makes."""
        jobs = [
            self.engine.submit(self.request(seeds, steps=steps), caller=caller, hold=True)
            for seeds, caller in ((first, "caller-a"), (second, "caller-b"))
        ]
        for job in jobs:
            self.engine.release(job)
        return list(await asyncio.gather(*(self.collect(job) for job in jobs)))


def _per_step(step_times: list[float]) -> float:
    return (step_times[-1] - step_times[0]) / max(len(step_times) - 1, 1)


def _pixels(image: GeneratedImage) -> np.ndarray:
    assert image.image is not None
    return np.asarray(image.image, dtype=np.int16)


async def _through_engine(driver: EngineDriver, model: DiffusersModel, raw_step: float) -> None:
    family, name = driver.family, driver.family.name
    steps = _steps(family)
    width, height = _size(family)
    await driver.start()
    estimate = driver.engine.timer.estimate(Shape(name, width, height, 1))
    seconds, step_times, _, _ = await driver.generate((1,), steps=steps)
    warm_step = _per_step(step_times)
    if estimate is not None:
        _line(
            name,
            f"warm step {warm_step * 1000:.1f} ms vs warm-up estimate"
            f" {estimate.per_step * 1000:.1f} ms (ratio {warm_step / estimate.per_step:.2f});"
            f" call {seconds:.2f} s vs estimate {estimate.seconds(steps):.2f} s"
            f" (ratio {seconds / estimate.seconds(steps):.2f})",
        )
    else:
        _line(name, "warm-up left no estimate")
    _line(
        name,
        f"steps/s engine {1 / warm_step:.2f} vs raw pipeline {1 / raw_step:.2f}"
        f" (engine/raw {raw_step / warm_step:.2f})",
    )

    one, _, _, _ = await driver.generate((1,), steps=steps)
    four, _, images, _ = await driver.generate((1, 2, 3, 4), steps=steps)
    assert len(images) == 4
    _line(
        name,
        f"batch of 4: {four:.2f} s vs 1: {one:.2f} s; images/s ratio {4 * one / four:.2f}",
    )

    off, _, _, _ = await driver.generate((5,), steps=steps)
    on, _, _, previews = await driver.generate((5,), steps=steps, preview_every=1)
    assert previews == steps
    _line(name, f"previews every step: {on:.2f} s vs off {off:.2f} s (on/off {on / off:.3f})")

    # Before the injected out-of-memory: the guard then keeps batches of this size
    # smaller for a while (it learns from the failure).
    _, _, [alone], _ = await driver.generate((7,), steps=steps)
    batches_before = driver.engine.stats.batches_run
    results = await driver.together((7,), (8,), steps=steps)
    batched = results[0][2][0]
    batched_together = driver.engine.stats.batches_run - batches_before == 1
    difference = int(np.abs(_pixels(alone) - _pixels(batched)).max())
    _line(
        name,
        f"same seed alone vs batched ({'one batch' if batched_together else 'not batched'}):"
        f" max pixel difference {difference}"
        f"{' (identical)' if difference == 0 else ''}; image spread"
        f" {int(_pixels(alone).std())} (0 = a flat image, e.g. NaN in float16)",
    )
    vae = model._pipeline.vae
    dtype_before = vae.dtype
    decode = vae.decode
    failures = {"left": 1}

    def failing_decode(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 9 GiB (injected)"
            )
        return decode(*args, **kwargs)

    vae.decode = failing_decode
    try:
        with pytest.raises(ResourceExhausted):
            await driver.generate((6,), steps=2)
        _, _, after, _ = await driver.generate((6,), steps=2)
    finally:
        vae.decode = decode
    assert len(after) == 1 and vae.dtype == dtype_before
    _line(
        name,
        f"injected decode out-of-memory: RESOURCE_EXHAUSTED, then a normal request served;"
        f" VAE dtype {vae.dtype} as before",
    )

    await driver.engine.aclose(grace=30)


@pytest.mark.parametrize("family_name", ["sd15", "sdxl"])
def test_gpu_report(family_name: str, workspace: Path) -> None:
    """Prints the family's figures; fails only on a broken path (no image, no recovery)."""
    if not _wanted(family_name):
        pytest.skip(f"{family_name} not in PIXELGATE_GPU_FAMILIES")
    family = FAMILIES[family_name]
    began = time.perf_counter()
    source = build_and_save(family, workspace / family.name, device=DEVICE, scale=SCALE)
    built = time.perf_counter() - began
    settings = _settings(family, source)
    began = time.perf_counter()
    model = load_model(settings, DEVICE, workspace / "cache")
    loaded = time.perf_counter() - began
    _line(
        family.name,
        f"built+saved {built:.1f} s; loaded (fp16 variant) {loaded:.1f} s;"
        f" weights {model.weights_bytes // MIB} MiB, dtype {model.dtype}",
    )
    steps = _steps(family)
    _raw_seconds(model, family, 1, 2)  # cold: kernels, caches
    raw_short = _raw_seconds(model, family, 1, 2)
    raw_long = _raw_seconds(model, family, 1, steps)
    raw_step = (raw_long - raw_short) / (steps - 2)
    _line(
        family.name,
        f"raw pipeline: {raw_long:.2f} s for {steps} steps, {raw_step * 1000:.1f} ms a step",
    )
    _memory(model, family, settings)
    asyncio.run(
        _through_engine(EngineDriver(family, settings, model, workspace / "cache"), model, raw_step)
    )
    del model
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
