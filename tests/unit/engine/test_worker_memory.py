"""A worker and device memory: batches cut to what fits, and out-of-memory recovery that frees
the failed call's tensors and learns from it.

A real worker, queue, guard and registry on a pretend GPU ("cuda:0"): torch.cuda's memory calls
are a fake (tests/fake_cuda.py), the model is the tests' FakeRuntime.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_cuda import FakeCuda
from support import FakeRuntime, wait_for

from pixelgate.server.core.config import EngineSettings, ModelSettings
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.server.core.model_card import ModelCard
from pixelgate.server.engine.fair_queue import FairQueue
from pixelgate.server.engine.jobs import Job
from pixelgate.server.engine.memory_guard import MIB, MemoryGuard
from pixelgate.server.engine.step_timing import StepTimer
from pixelgate.server.engine.worker import Worker
from pixelgate.server.models.device import DeviceMemory
from pixelgate.server.models.registry import ModelRegistry, RegisteredModel
from pixelgate.server.models.safety import NoChecker

DEVICE = "cuda:0"
PER_IMAGE = 6000 * MIB * 64 * 64 / 1e6
"""The configured activation figure (6000 MiB a megapixel) for one 64x64 image."""


class FakeHost:
    """The engine as a worker sees it: real pieces, and a record of how each job ended."""

    def __init__(self, runtime: FakeRuntime, memory: MemoryGuard) -> None:
        settings = ModelSettings(id="fake")
        model = RegisteredModel(settings, ModelCard.of(settings, None), (DEVICE,), None)
        self.registry = ModelRegistry([model], "fake")
        self.settings = EngineSettings(warmup=False, max_batch_images=8)
        self.loader: Callable[[ModelSettings, str], Any] = lambda settings, device: runtime
        self.checker_factory = lambda device, dtype: NoChecker()
        self.memory = memory
        self.timer = StepTimer()
        self.queue: FairQueue[Job] = FairQueue()
        self.observer = None  # no metrics
        self.ended: dict[int, BaseException | None] = {}

    def dispatched(self, batch: list[Job], worker: Worker) -> None:
        pass

    def batch_done(self, worker: Worker) -> None:
        pass

    def finish(
        self, job: Job, *, error: BaseException | None = None, cancelled: bool = False
    ) -> None:
        self.ended.setdefault(job.request.seeds[0], error)

    def fail_waiting(self, model_id: str) -> None:
        pass

    def count(self, **increments: int) -> None:
        pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop the jobs hand their events to (nobody reads them here)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _submit(
    host: FakeHost, loop: asyncio.AbstractEventLoop, seeds: range, *, width: int = 64
) -> None:
    for seed in seeds:
        request = GenerationRequest(
            "fake", "a fox", "", width, 64, 2, 7.5, (seed,), ImageFormat.PNG
        )
        host.queue.put(Job(request, f"caller-{seed}", loop, lambda job: None))


def _run(host: FakeHost, cuda: FakeCuda, until: Callable[[], bool]) -> None:
    worker = Worker(host, DEVICE, 0, device_memory=DeviceMemory(cuda))
    worker.start()
    try:
        wait_for(until, what="the jobs ended")
    finally:
        host.queue.close()
        worker.join(10)


def test_a_gathered_batch_is_cut_to_what_the_device_really_has_free(loop: Any) -> None:
    """Four waiting jobs, room for two on the GPU (by its free memory): two calls of two, every
    job served; the model's own weights are already resident and not counted twice."""
    fake = FakeRuntime()
    host = FakeHost(fake, MemoryGuard(None))
    cuda = FakeCuda({DEVICE: int(2.5 * PER_IMAGE)})
    _submit(host, loop, range(1, 5))

    _run(host, cuda, lambda: len(host.ended) == 4)

    assert [len(call) for call in fake.calls] == [2, 2]
    assert sorted(seed for call in fake.calls for seed in call) == [1, 2, 3, 4]
    assert host.ended == {1: None, 2: None, 3: None, 4: None}


def test_out_of_memory_is_recovered_after_the_handler_and_the_next_batch_is_smaller(
    loop: Any,
) -> None:
    """A batch of 4 runs out of memory (the message-only error of torch < 2.5): the cache is
    emptied once the failed call's traceback is gone (its tensors freed), on that device; the
    jobs are served one by one; the next 4 jobs of that size run in a smaller batch."""
    left_behind: list[weakref.ref[Any]] = []

    class Activations:
        """Stands for the tensors the failing call held."""

    def fail(batch: Any) -> None:
        if len(batch.seeds) >= 4:
            activations = Activations()
            left_behind.append(weakref.ref(activations))
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    freed_at_release: list[bool] = []
    cuda = FakeCuda(
        {DEVICE: 80 * 1024 * MIB},
        on_empty_cache=lambda: freed_at_release.append(left_behind[-1]() is None),
    )
    fake = FakeRuntime(fail=fail)
    host = FakeHost(fake, MemoryGuard(None))
    _submit(host, loop, range(1, 5))
    worker = Worker(host, DEVICE, 0, device_memory=DeviceMemory(cuda))
    worker.start()
    try:
        wait_for(lambda: len(host.ended) == 4, what="the first four ended")
        fake.gate.clear()  # a job of another size holds the worker while the next four queue
        _submit(host, loop, range(100, 101), width=128)
        wait_for(lambda: len(fake.calls) == 6, what="the other job started")
        _submit(host, loop, range(5, 9))
        fake.gate.set()
        wait_for(lambda: len(host.ended) == 9, what="the next four ended")
    finally:
        host.queue.close()
        worker.join(10)

    assert cuda.emptied == [DEVICE]
    assert cuda.exception_at_release == [None]
    assert freed_at_release == [True]
    assert [len(call) for call in fake.calls[:5]] == [4, 1, 1, 1, 1]
    assert [len(call) for call in fake.calls[6:]] == [3, 1]
    assert sorted(seed for call in fake.calls[6:] for seed in call) == [5, 6, 7, 8]
    assert all(error is None for error in host.ended.values())
