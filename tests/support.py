"""Test support: real servers on free loopback ports, real PKI, real tokens."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from processes import merge, server_settings

from pixelgate.dev.pki import DevPkiFiles
from pixelgate.server.app import RunningServer, start_server
from pixelgate.server.core.config import Settings, load_settings
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.server.engine.worker import WARMUP_PROMPT
from pixelgate.server.models.runtime import ModelLoader, ModelRuntime

T = TypeVar("T")


def settings_for(pki: DevPkiFiles, cache_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback, port 0, the test PKI, generous rate limits.

    Overrides merge into sections: `rate_limit={"burst": 2}` keeps the other limits.
    """
    generous: dict[str, Any] = {
        "rate_limit": {
            "requests_per_minute": 60000,
            "burst": 10000,
            "gpu_cost_per_minute": 1e9,
            "gpu_cost_burst": 1e9,
            "max_concurrent_generations": 100,
            "peer_requests_per_minute": 60000,
            "peer_burst": 10000,
        },
        "cache_dir": cache_dir,
    }
    return load_settings(None, **server_settings(pki, **merge(generous, overrides)))


def generation_request(
    width: int = 512, height: int = 512, steps: int = 1, images: int = 1, model: str = "sd"
) -> GenerationRequest:
    """A valid request, with what limits look at chosen: size, steps, images (seeds), model."""
    return GenerationRequest(
        model_id=model,
        prompt="a lighthouse",
        negative_prompt="",
        width=width,
        height=height,
        steps=steps,
        guidance_scale=7.5,
        seeds=tuple(range(images)),
        output_format=ImageFormat.PNG,
    )


class EventLoopThread:
    """An asyncio loop in a daemon thread, for running the aio server beside sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs `coroutine` on the loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Stops the loop and joins the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class ServerUnderTest:
    """A running server and how to reach it."""

    running: RunningServer
    settings: Settings
    loop: EventLoopThread

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.running.port}"

    def stop(self, grace: float | None = 0) -> None:
        """Stops the server (health NOT_SERVING, calls refused, in-flight get `grace`)."""
        self.loop.run(self.running.stop(grace))

    def audit_entries(self, expected: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The audit lines written so far, waiting up to `timeout` for `expected` of them.

        A call's line is written just after the call ends, in the next batch.
        """
        path = Path(self.settings.audit.destination)

        def entries() -> list[dict[str, Any]]:
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            whole = text[: text.rfind("\n") + 1]  # a batch may be half written
            return [json.loads(line) for line in whole.splitlines() if line]

        wait_for(lambda: len(entries()) >= expected, timeout, f"{expected} audit lines")
        return entries()


def copying_loader(model: ModelRuntime) -> ModelLoader:
    """A loader that hands each server its own copy of an already-loaded model."""
    import copy

    return lambda settings, device: copy.deepcopy(model)


def start(
    settings: Settings, loader: ModelLoader, loop: EventLoopThread, **options: Any
) -> ServerUnderTest:
    """Starts a server for `settings` on `loop`, its models from `loader`; `options` go to
    start_server (e.g. `span_processors`)."""
    running = loop.run(start_server(settings, loader=loader, **options))
    return ServerUnderTest(running=running, settings=settings, loop=loop)


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Polls `condition` until it returns something truthy, which it returns; fails at timeout."""
    import time

    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time: {what}")
        time.sleep(0.01)
    return result


def is_warm_up(batch: Any) -> bool:
    """True for the engine's warm-up calls (a cold one, then measured ones of 1 and 2 images)."""
    return set(batch.prompts) == {WARMUP_PROMPT}


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The solid colour of FakeRuntime's image for `seed` (tells each image's seed apart)."""
    return (seed % 251, (seed // 251) % 251, 77)


class FakeRuntime:
    """The one fake model runtime of the tests: solid images per seed, or a wrapped real model's.

    Warm-up calls are not recorded, gated or failed.
    Every other call records its seeds in `calls`, waits while `gate` is clear,
    and notes `tag` in `runs`; before its step `fail_at_step` + 1 it calls
    `fail(batch)`, which may raise (as a failing device does), and after each
    step `after_step(step)`. Every step (warm-up too) sleeps `step_seconds`.
    The very first call (warm-up or not) sleeps `cold_seconds` first, as a
    real model's cold start does.
    """

    def __init__(
        self,
        inner: Any = None,
        *,
        step_seconds: float = 0.0,
        cold_seconds: float = 0.0,
        fail: Callable[[Any], None] | None = None,
        fail_at_step: int = 0,
        after_step: Callable[[int], None] | None = None,
        tag: str = "",
        runs: list[str] | None = None,
    ) -> None:
        self._inner = inner
        self.device = getattr(inner, "device", "cpu")
        self.weights_bytes = getattr(inner, "weights_bytes", 1024)
        self.latent_channels = getattr(inner, "latent_channels", None)
        self.pipeline_name = getattr(inner, "pipeline_name", "")
        self.dtype = getattr(inner, "dtype", "")
        self.step_seconds = step_seconds
        self.cold_seconds = cold_seconds
        self.fail = fail
        self.fail_at_step = fail_at_step
        self.after_step = after_step
        self.tag = tag
        self.runs = runs if runs is not None else []
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, ...]] = []

    def run(self, batch: Any, on_step: Callable[[int, int, Any], None]) -> Any:
        """Paints (or has the wrapped model make) one image per seed, with the knobs applied."""
        if self.cold_seconds:
            cold, self.cold_seconds = self.cold_seconds, 0.0
            time.sleep(cold)
        warm_up = is_warm_up(batch)
        if not warm_up:
            self.calls.append(batch.seeds)
            self.runs.append(self.tag)
            self.gate.wait(30)

        def step(index: int, total: int, latents: Any) -> None:
            if not warm_up and self.fail is not None and index == self.fail_at_step + 1:
                self.fail(batch)
            time.sleep(self.step_seconds)  # warm-up too: it measures what a step costs
            on_step(index, total, latents)
            if not warm_up and self.after_step is not None:
                self.after_step(index)

        return self._images(batch, step)

    def _images(self, batch: Any, on_step: Callable[[int, int, Any], None]) -> Any:
        if self._inner is not None:
            return self._inner.run(batch, on_step)
        from PIL import Image

        for index in range(1, batch.steps + 1):
            on_step(index, batch.steps, None)
        return [
            Image.new("RGB", (batch.width, batch.height), seed_colour(seed)) for seed in batch.seeds
        ]
