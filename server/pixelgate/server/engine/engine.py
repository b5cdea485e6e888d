"""The generation engine: admission, a fair batching queue, and one worker per device.

Admission refuses at once what cannot succeed: a full queue or a request too
big for the device's memory (RESOURCE_EXHAUSTED), a model that failed to load
(UNAVAILABLE), a deadline that would pass before the job could finish
(DEADLINE_EXCEEDED): its finish time is estimated by playing the queue forward
as the workers will take it (eta.py), from measured call times (step_timing.py),
and held against the deadline with the error margin past estimates showed
(admission.py). Each device has a worker thread that
owns its pipelines; it takes batches of compatible jobs from the fair queue
and runs them as one pipeline call with a generator per image. Progress
crosses back to the event loop through `call_soon_threadsafe`. A job is
cancelled through a flag the step callback checks: a cancelled member of a
batch stops receiving events while the others run on; a batch with no live
member left stops at its next step. Out of device memory fails the request
that caused it (a batch is retried one job at a time), and the worker goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest

import torch
from PIL import Image

from pixelgate.server.core.config import EngineSettings
from pixelgate.server.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from pixelgate.server.core.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.engine.admission import DeadlineAdmission
from pixelgate.server.engine.eta import WorkerView, finish_times
from pixelgate.server.engine.fair_queue import FairQueue
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.engine.step_timing import CallClock, CallTime, Shape, StepTimer
from pixelgate.server.models.previews import preview_jpeg
from pixelgate.server.models.registry import ModelRegistry, ModelState, RegisteredModel
from pixelgate.server.models.runtime import ModelLoader, ModelRuntime, PipelineBatch
from pixelgate.server.models.safety import CheckerFactory, NoChecker, OutputChecker, PromptDenylist

log = logging.getLogger("pixelgate.engine")

WARMUP_PROMPT = "warm-up"
"""The prompt of every warm-up call."""
COLD_STEPS = 2
"""Steps of the first, cold warm-up call (kernels load, caches fill): never measured."""
WARMUP_STEPS = 4
"""Steps of each measured warm-up call (the step callback needs two to time a step)."""
WARMUP_IMAGES = (1, 2)
"""Images of the measured warm-up calls: two points tell how a step grows with the batch."""


class GenerationCancelled(Exception):
    """Raised inside the pipeline's step callback once no member of the batch listens."""


@dataclass
class EngineStats:
    """Counters for monitoring (updated under the engine's lock)."""

    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_cancelled: int = 0
    jobs_failed: int = 0
    steps_run: int = 0
    batches_run: int = 0
    images_filtered: int = 0


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


class Job:
    """A submitted generation: its events as they happen, and a way to stop it."""

    def __init__(
        self,
        request: GenerationRequest,
        caller: str,
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[Job], None],
    ) -> None:
        self.request = request
        self.caller = caller
        self.model_id = request.model_id
        self.images = len(request.seeds)
        self.batch_key = request.batch_key
        self.solo = False
        self.held = False
        self.steps_run = 0
        """Denoising steps run for this job (its share of a batch included)."""
        self.submitted_at = 0.0
        """time.monotonic() at admission."""
        self.eta_at_submit: float | None = None
        """Seconds to its end estimated at admission; None without an estimate."""
        self.last_position: int | None = None
        self._loop = loop
        self._on_cancel = on_cancel
        self._events: asyncio.Queue[EngineEvent | _End] = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stops the job at its next step, or drops it from the queue. Idempotent."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._on_cancel(self)

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[EngineEvent]:
        """Queued, then StepDone per step, then a GeneratedImage per image; raises on failure."""
        while True:
            event = await self._events.get()
            if isinstance(event, _End):
                if event.error is not None:
                    raise event.error
                return
            yield event

    def emit_now(self, event: EngineEvent | _End) -> None:
        """Hands an event over at once; on the event loop thread only (keeps it first)."""
        self._events.put_nowait(event)

    def emit(self, event: EngineEvent | _End) -> None:
        """Hands an event to the job's consumer; safe from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is gone: nobody listens any more
            self._cancelled.set()


class Worker(threading.Thread):
    """Owns one device's pipelines and runs batches on them, one at a time."""

    def __init__(self, engine: GenerationEngine, device: str, index: int) -> None:
        super().__init__(name=f"pixelgate-worker-{index}-{device}", daemon=True)
        self.device = device
        self.key = f"{device}#{index}"
        self._engine = engine
        self._runtimes: dict[str, ModelRuntime] = {}
        self._checker: OutputChecker | Exception | None = None
        self._hosted = {model.id for model in engine.registry.hosted_on(device)}
        self._failed: set[str] = set()

    def hosts(self, model_id: str) -> bool:
        """True for the models this worker holds, or will load, and has not failed to."""
        return model_id in self._hosted and model_id not in self._failed

    def run(self) -> None:
        engine = self._engine
        for model in sorted(
            engine.registry.hosted_on(self.device),
            key=lambda m: m.id != engine.registry.default_model,  # the default loads first
        ):
            if model.settings.preload:
                with contextlib.suppress(Unavailable):
                    self._runtime(model)
        settings = engine.settings
        while True:
            batch = engine.queue.take_batch(
                self.hosts,
                settings.max_batch_images,
                max_delay=settings.max_batch_delay_ms / 1000.0,
            )
            if batch is None:
                return
            engine.dispatched(batch, self)
            try:
                self._run(batch)
            except Exception as error:  # never let one batch end the worker
                log.exception("batch failed on %s", self.device)
                for job in batch:
                    engine.finish(job, error=error)
            finally:
                engine.batch_done(self)

    def _runtime(self, model: RegisteredModel) -> ModelRuntime:
        runtime = self._runtimes.get(model.id)
        if runtime is not None:
            return runtime
        engine = self._engine
        engine.registry.set_state(model.id, self.key, ModelState.LOADING)
        try:
            runtime = engine.loader(model.settings, self.device)
            engine.memory.describe_model(
                model.id,
                runtime.weights_bytes,
                model.settings.activation_mb_per_megapixel * 1024 * 1024,
            )
            if engine.settings.warmup:
                self._warm_up(model, runtime)
        except Exception as error:
            log.exception("model %s failed to load on %s", model.id, self.device)
            self._failed.add(model.id)  # other workers may still hold it
            overall = engine.registry.set_state(model.id, self.key, ModelState.FAILED, error=error)
            if overall is ModelState.FAILED:
                engine.fail_waiting(model.id)
            raise Unavailable(f"model {model.id} failed to load") from None
        self._runtimes[model.id] = runtime
        engine.registry.set_state(
            model.id,
            self.key,
            ModelState.READY,
            pipeline_name=getattr(runtime, "pipeline_name", ""),
            dtype=getattr(runtime, "dtype", ""),
        )
        log.info("model %s ready on %s", model.id, self.device)
        return runtime

    def _warm_up(self, model: RegisteredModel, runtime: ModelRuntime) -> None:
        # The first call pays for loading kernels and filling caches: run it, do not
        # believe it. The measured ones time what every later call pays.
        self._warm_call(model, runtime, images=1, steps=COLD_STEPS)
        card = model.card
        for images in WARMUP_IMAGES:
            shape = Shape(model.id, card.default_width, card.default_height, images)
            try:
                self._engine.memory.check(*_shape_args(shape))
                measured = self._warm_call(model, runtime, images=images, steps=WARMUP_STEPS)
            except (ResourceExhausted, torch.OutOfMemoryError, MemoryError):
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                log.info("model %s: no warm-up of %d images on %s", model.id, images, self.device)
                return
            if measured is not None:
                self._engine.timer.observe(shape, measured)

    def _warm_call(
        self, model: RegisteredModel, runtime: ModelRuntime, *, images: int, steps: int
    ) -> CallTime | None:
        card = model.card
        batch = PipelineBatch(
            prompts=(WARMUP_PROMPT,) * images,
            negative_prompts=("",) * images,
            seeds=tuple(range(images)),
            width=card.default_width,
            height=card.default_height,
            steps=steps,
            guidance_scale=card.default_guidance_scale,
        )
        clock = CallClock()
        produced = runtime.run(batch, lambda step, total, latents: clock.step())
        # The safety check is part of every real call's fixed cost (and loads now, not
        # in the first caller's time). A checker that fails is reported when used.
        with contextlib.suppress(Exception):
            self._output_checker().flagged(produced)
        return clock.measure(steps)

    def _output_checker(self) -> OutputChecker:
        if self._checker is None:
            try:
                self._checker = self._engine.checker_factory(self.device)
            except Exception as error:  # remembered: no reload attempt per image
                log.exception("the output checker failed to load on %s", self.device)
                self._checker = error
        if isinstance(self._checker, Exception):
            raise Unavailable("the image safety check is unavailable") from None
        return self._checker

    def _run(self, jobs: Sequence[Job]) -> None:
        engine = self._engine
        members = []
        for job in jobs:
            if job.cancelled:
                engine.finish(job, cancelled=True)
            else:
                members.append(job)
        if not members:
            return
        request = members[0].request
        try:
            runtime = self._runtime(engine.registry[request.model_id])
        except Unavailable as error:
            if engine.registry[request.model_id].state is ModelState.FAILED:
                for job in members:
                    engine.finish(job, error=error)
            else:  # another worker holds (or may load) it: the jobs wait for that one
                for job in reversed(members):
                    engine.queue.put(job, front=True)
            return
        engine.count(jobs_started=len(members), batches_run=1)
        offsets, position = {}, 0
        for job in members:
            offsets[job] = position
            position += job.images
        batch = PipelineBatch(
            prompts=tuple(job.request.prompt for job in members for _ in job.request.seeds),
            negative_prompts=tuple(
                job.request.negative_prompt for job in members for _ in job.request.seeds
            ),
            seeds=tuple(seed for job in members for seed in job.request.seeds),
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            want_latents=runtime.latent_channels == 4
            and any(job.request.preview_every for job in members),
        )
        clock = CallClock()
        started = clock.started

        def on_step(step: int, total: int, latents: torch.Tensor | None) -> None:
            clock.step()
            engine.count(steps_run=1)
            alive = [job for job in members if not job.cancelled]
            if not alive:
                raise GenerationCancelled
            remaining = (time.perf_counter() - started) / step * (total - step)
            for job in alive:
                job.steps_run = step
                every = job.request.preview_every
                preview = None
                if latents is not None and every and step % every == 0:
                    preview = preview_jpeg(latents[offsets[job]])
                job.emit(StepDone(step=step, total=total, eta=remaining, preview_jpeg=preview))

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            images = runtime.run(batch, on_step)
        except GenerationCancelled:
            for job in members:
                engine.finish(job, cancelled=True)
            return
        except (torch.OutOfMemoryError, MemoryError):
            self._out_of_memory(members)
            return
        except Exception as error:
            log.exception("batch of %d jobs failed on %s", len(members), self.device)
            for job in members:
                engine.finish(job, error=error)
            return
        shape = Shape(request.model_id, request.width, request.height, len(batch.seeds))
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            engine.memory.observe_peak(*_shape_args(shape), peak_bytes=peak)
        for job in members:
            self._deliver(job, images[offsets[job] : offsets[job] + job.images])
        # Measured once every member has its images: decoding, the safety check and
        # delivery are the call's fixed cost as callers see it.
        measured = clock.measure(request.steps)
        if measured is not None:
            engine.timer.observe(shape, measured)
            log.debug(
                "batch of %d images, %d steps: %.3f s fixed + %.4f s a step",
                len(batch.seeds),
                request.steps,
                measured.overhead,
                measured.per_step,
            )

    def _deliver(self, job: Job, images: Sequence[Image.Image]) -> None:
        engine = self._engine
        if job.cancelled:
            engine.finish(job, cancelled=True)
            return
        try:
            flags = self._output_checker().flagged(images)
        except Unavailable as error:
            engine.finish(job, error=error)  # never an unchecked image
            return
        except Exception:
            log.exception("the output checker failed on %s", self.device)
            engine.finish(job, error=Unavailable("the image safety check failed"))
            return
        for index, (seed, image, flagged) in enumerate(
            zip(job.request.seeds, images, flags, strict=True)
        ):
            if flagged:
                engine.count(images_filtered=1)
            job.emit(
                GeneratedImage(
                    index=index,
                    seed=seed,
                    steps=job.steps_run,
                    image=None if flagged else image,
                )
            )
        engine.finish(job)

    def _out_of_memory(self, members: Sequence[Job]) -> None:
        engine = self._engine
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if len(members) > 1:
            log.warning(
                "out of memory in a batch of %d on %s: retrying one by one",
                len(members),
                self.device,
            )
            for job in reversed(members):
                job.solo = True
                engine.queue.put(job, front=True)
            return
        log.warning("out of memory on %s for one request", self.device)
        engine.finish(
            members[0],
            error=ResourceExhausted(
                "the device ran out of memory for this request; ask for a smaller image"
                " or fewer images"
            ),
        )


def _shape_args(shape: Shape) -> tuple[str, int, int, int]:
    return shape.model_id, shape.width, shape.height, shape.images


def _batch_shape(jobs: Sequence[Job]) -> Shape:
    first = jobs[0].request
    return Shape(first.model_id, first.width, first.height, sum(job.images for job in jobs))


@dataclass(frozen=True)
class _RunningBatch:
    jobs: list[Job]
    started: float
    """time.monotonic() when a worker took it."""


class GenerationEngine:
    """Admits generation jobs and runs them on one worker per device."""

    def __init__(
        self,
        registry: ModelRegistry,
        devices: Sequence[str],
        *,
        settings: EngineSettings,
        loader: ModelLoader,
        memory: MemoryGuard,
        denylist: PromptDenylist | None = None,
        checker_factory: CheckerFactory | None = None,
        timer: StepTimer | None = None,
        admission: DeadlineAdmission | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.loader = loader
        self.memory = memory
        self.denylist = denylist or PromptDenylist(())
        self.checker_factory: CheckerFactory = checker_factory or (lambda device: NoChecker())
        self.timer = timer or StepTimer()
        self.admission = admission or DeadlineAdmission()
        self.queue: FairQueue[Job] = FairQueue()
        self.stats = EngineStats()
        self._devices = list(devices)
        self._workers: list[Worker] = []
        self._active: set[Job] = set()
        self._running: dict[Worker, _RunningBatch] = {}
        self._lock = threading.RLock()

    async def start(self) -> None:
        """Starts one worker per device; preloaded models begin loading."""
        self.registry.bind_loop(asyncio.get_running_loop())
        for model in self.registry.values():  # until loaded: the weights on disk
            self.memory.describe_model(
                model.id,
                model.weights_estimate,
                model.settings.activation_mb_per_megapixel * 1024 * 1024,
            )
        self._workers = [Worker(self, device, i) for i, device in enumerate(self._devices)]
        for worker in self._workers:
            worker.start()

    def submit(
        self,
        request: GenerationRequest,
        *,
        caller: str,
        deadline: float | None = None,
        hold: bool = False,
    ) -> Job:
        """Admits and queues `request`, or raises the status that says why not. Call on the loop.

        A held job keeps its place but starts only after `release(job)`: the
        caller can be answered first, without a busy worker in its way.
        """
        self.registry.check_servable(request.model_id)
        self.memory.check(request.model_id, request.width, request.height, len(request.seeds))
        loop = asyncio.get_running_loop()
        job = Job(request, caller, loop, self._cancelled)
        job.held = hold
        if self.denylist.blocks(request.prompt):
            self._filter_whole_job(job)
            return job
        with self._lock:
            if len(self._active) >= self.settings.max_queued_jobs:
                raise ResourceExhausted("server busy: the generation queue is full; retry later")
            self._active.add(job)
        job.submitted_at = time.monotonic()
        self.queue.put(job)
        _, standings = self._plan()
        # Not found: a worker is taking it this instant (only an unheld job can go so fast).
        position, eta = standings.get(job) or (0, self._batch_seconds([job]))
        if deadline is not None and eta is not None and self.admission.refuses(eta, deadline):
            if self.queue.discard(job):
                with self._lock:
                    self._active.discard(job)
                raise DeadlineExceeded(
                    f"the deadline would pass before this job could finish"
                    f" (about {eta:.1f} s needed, {max(deadline, 0):.1f} s left)"
                )
        job.eta_at_submit = eta
        # First in line: workers' events reach the loop only through callbacks
        # that run after this call returns.
        job.last_position = position
        job.emit_now(Queued(position=position, eta=eta))
        return job

    def release(self, job: Job) -> None:
        """Lets a job submitted with `hold=True` start."""
        if job.held:
            self.queue.release(job)

    def _filter_whole_job(self, job: Job) -> None:
        # A denied prompt costs no GPU: every image is reported filtered at once.
        self.count(images_filtered=job.images)
        for index, seed in enumerate(job.request.seeds):
            job.emit(GeneratedImage(index=index, seed=seed, steps=0, image=None))
        job.emit(_End())

    def fail_waiting(self, model_id: str) -> None:
        """Ends every waiting job for a model no worker can hold any more."""
        error = Unavailable(f"model {model_id} failed to load")
        for job in self.queue.remove_where(lambda job: job.model_id == model_id):
            self.finish(job, error=error)

    def count(self, **increments: int) -> None:
        """Adds to the stats (workers and the loop both count)."""
        with self._lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def finish(
        self, job: Job, *, error: BaseException | None = None, cancelled: bool = False
    ) -> None:
        """Ends a job: frees its slot, counts it, tells its consumer."""
        with self._lock:
            if job not in self._active:
                return
            self._active.discard(job)
        if cancelled:
            self.count(jobs_cancelled=1)
            log.info("job cancelled after %d of %d steps", job.steps_run, job.request.steps)
        elif error is not None:
            self.count(jobs_failed=1)
        else:
            self.count(jobs_completed=1)
            if job.eta_at_submit is not None:
                self.admission.record(job.eta_at_submit, time.monotonic() - job.submitted_at)
        job.emit(_End(error if not isinstance(error, GenerationCancelled) else None))

    def dispatched(self, batch: list[Job], worker: Worker) -> None:
        """A worker took `batch`: note when, tell the waiting jobs where they stand."""
        with self._lock:
            self._running[worker] = _RunningBatch(batch, time.monotonic())
        self.announce_positions()

    def batch_done(self, worker: Worker) -> None:
        """A worker finished its batch."""
        with self._lock:
            self._running.pop(worker, None)

    def announce_positions(self) -> None:
        """Sends Queued (position, ETA) to each waiting job whose position changed."""
        waiting, standings = self._plan()
        for job in waiting:
            position, eta = standings[job]
            if position != job.last_position:
                job.last_position = position
                job.emit(Queued(position=position, eta=eta))

    def _plan(self) -> tuple[list[Job], dict[Job, tuple[int, float | None]]]:
        """The waiting jobs in service order, and for every waiting or running job where it
        stands: the jobs that run before it, and the seconds until it ends (None: unknown).

        One plan of the whole queue answers for every job (announcing to each waiting
        job costs one plan, not one per job).
        """
        now = time.monotonic()
        lines = self.queue.lines()
        with self._lock:
            running = dict(self._running)
        views, finishes = [], {}
        for worker in self._workers:
            batch = running.get(worker)
            free_in = 0.0 if batch is None else self._remaining(batch, now)
            views.append(WorkerView(worker.hosts, free_in))
            for job in batch.jobs if batch is not None else ():
                finishes[job] = free_in
        finishes.update(
            finish_times(
                lines,
                views,
                max_images=self.settings.max_batch_images,
                duration=self._batch_seconds,
            )
        )
        # Positions count as before batching: round-robin order, one job at a time.
        order = [
            job
            for layer in zip_longest(*(line for _, line in lines))
            for job in layer
            if job is not None
        ]
        running_jobs = sum(len(batch.jobs) for batch in running.values())
        standings: dict[Job, tuple[int, float | None]] = {
            job: (0, finishes[job]) for batch in running.values() for job in batch.jobs
        }
        for index, job in enumerate(order):
            standings[job] = (running_jobs + index, finishes.get(job))
        return order, standings

    def _remaining(self, batch: _RunningBatch, now: float) -> float | None:
        """Seconds until a running batch is expected to end; None without an estimate."""
        shape = _batch_shape(batch.jobs)
        estimate = self.timer.estimate(shape)
        if estimate is None:
            return None
        steps = batch.jobs[0].request.steps
        done = max(job.steps_run for job in batch.jobs)
        # Past its expected end it still has its steps left to run (at least).
        return max(
            batch.started + estimate.seconds(steps) - now, (steps - done) * estimate.per_step
        )

    def _batch_seconds(self, jobs: Sequence[Job]) -> float | None:
        return self.timer.duration(_batch_shape(jobs), jobs[0].request.steps)

    def _cancelled(self, job: Job) -> None:
        # A waiting job leaves the queue at once; a running one stops at its next step.
        if self.queue.discard(job):
            self.finish(job, cancelled=True)
            self.announce_positions()

    async def aclose(self) -> None:
        """Cancels every job and waits for the workers to stop (within one step)."""
        self.queue.close()
        for job in self.queue.drain():
            self.finish(job, cancelled=True)
        with self._lock:
            active = list(self._active)
        for job in active:
            job.cancel()
        for worker in self._workers:
            await asyncio.to_thread(worker.join)


__all__ = ["EngineStats", "GenerationCancelled", "GenerationEngine", "Job", "Worker"]
