"""A worker thread per device: it owns that device's pipelines and runs batches on them.

It loads (and warms up) the models it hosts, with the output checker in the
first model's dtype, takes batches of compatible jobs from the fair queue and
runs each as one pipeline call with a generator per image, reports progress
from the step callback (preview frames: a latent snapshot there, the JPEG on
the worker's preview thread, events kept in step order), checks the images
before they are delivered, and recovers from running out of device memory: a batch is
retried one job at a time (and its size is not gathered again for a while), a
job alone fails with RESOURCE_EXHAUSTED, and the device's cache is released
once the failed call's traceback is gone. A batch the memory guard predicts
not to fit on the device is cut to fewer jobs before it runs.
What it needs of the engine is `WorkerHost`, nothing more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

from PIL import Image

from pixelgate.server.core.config import EngineSettings
from pixelgate.server.core.errors import ResourceExhausted, Unavailable
from pixelgate.server.core.generation import GeneratedImage, StepDone
from pixelgate.server.engine.fair_queue import FairQueue
from pixelgate.server.engine.jobs import Job
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.engine.step_timing import CallClock, CallTime, Shape, StepTimer
from pixelgate.server.models.device import DeviceMemory, is_out_of_memory, module_bytes
from pixelgate.server.models.latent_formats import LatentFormat, latent_format_for
from pixelgate.server.models.previews import LatentSnapshot, preview_jpeg, snapshot_latent
from pixelgate.server.models.registry import ModelRegistry, ModelState, RegisteredModel
from pixelgate.server.models.runtime import Latents, ModelLoader, ModelRuntime, PipelineBatch
from pixelgate.server.models.safety import CheckerFactory, OutputChecker
from pixelgate.server.tracing.job_spans import denoising

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


class EngineObserver(Protocol):
    """Hears what the engine does, for monitoring (called from worker threads)."""

    def queue_waited(self, model_id: str, seconds: float) -> None:
        """A worker took a job that had waited `seconds` since it was admitted."""
        ...

    def batch_started(self, model_id: str, images: int) -> None:
        """A worker started a pipeline call of `images` images."""
        ...

    def steps_timed(self, model_id: str, seconds_per_step: float) -> None:
        """A pipeline call ended; its denoising took `seconds_per_step` a step."""
        ...


class WorkerHost(Protocol):
    """What a worker needs of the engine: the shared pieces, and where to report."""

    @property
    def observer(self) -> EngineObserver | None:
        """Hears of batches and their step times (metrics), if anything listens."""
        ...

    @property
    def registry(self) -> ModelRegistry:
        """The configured models and their load state."""
        ...

    @property
    def settings(self) -> EngineSettings:
        """Batch limits, warm-up."""
        ...

    @property
    def loader(self) -> ModelLoader:
        """Loads a model onto a device."""
        ...

    @property
    def checker_factory(self) -> CheckerFactory:
        """Loads the output checker onto a device."""
        ...

    @property
    def memory(self) -> MemoryGuard:
        """Learns each model's needs and measured peaks."""
        ...

    @property
    def timer(self) -> StepTimer:
        """Learns what calls cost."""
        ...

    @property
    def queue(self) -> FairQueue[Job]:
        """Where batches come from, and retried jobs go back to."""
        ...

    def dispatched(self, batch: list[Job], worker: Worker) -> None:
        """`worker` took `batch`."""
        ...

    def batch_done(self, worker: Worker) -> None:
        """`worker` finished its batch."""
        ...

    def finish(
        self, job: Job, *, error: BaseException | None = None, cancelled: bool = False
    ) -> None:
        """Ends a job (idempotent)."""
        ...

    def fail_waiting(self, model_id: str) -> None:
        """Ends every waiting job for a model no worker can hold any more."""
        ...

    def count(self, **increments: int) -> None:
        """Adds to the engine's stats."""
        ...


class Worker(threading.Thread):
    """Owns one device's pipelines and runs batches on them, one at a time."""

    def __init__(
        self,
        host: WorkerHost,
        device: str,
        index: int,
        *,
        device_memory: DeviceMemory | None = None,
    ) -> None:
        super().__init__(name=f"pixelgate-worker-{index}-{device}", daemon=True)
        self.device = device
        self.key = f"{device}#{index}"
        self._host = host
        self._device_memory = device_memory or DeviceMemory()
        self._runtimes: dict[str, ModelRuntime] = {}
        self._checker: OutputChecker | Exception | None = None
        self._hosted = {model.id for model in host.registry.hosted_on(device)}
        self._failed: set[str] = set()
        # One thread: preview frames are encoded off the denoising thread, in order.
        self._previews = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-previews")
        self.loading: str | None = None
        """The model this worker is loading now, if any (shutdown may abandon it)."""

    def hosts(self, model_id: str) -> bool:
        """True for the models this worker holds, or will load, and has not failed to."""
        return model_id in self._hosted and model_id not in self._failed

    def run(self) -> None:
        """Preloads its models, then runs batches until the queue closes."""
        try:
            self._serve()
        finally:
            self._previews.shutdown(wait=True)

    def _serve(self) -> None:
        host = self._host
        for model in sorted(
            host.registry.hosted_on(self.device),
            key=lambda m: m.id != host.registry.default_model,  # the default loads first
        ):
            if model.settings.preload:
                with contextlib.suppress(Unavailable):
                    self._runtime(model)
        settings = host.settings
        while True:
            batch = host.queue.take_batch(
                self.hosts,
                settings.max_batch_images,
                max_delay=settings.max_batch_delay_ms / 1000.0,
            )
            if batch is None:
                return
            batch = self._fitting(batch)
            host.dispatched(batch, self)
            try:
                self._run(batch)
            except Exception as error:  # never let one batch end the worker
                log.exception("batch failed on %s", self.device)
                for job in batch:
                    host.finish(job, error=error)
            finally:
                host.batch_done(self)

    def _fitting(self, batch: list[Job]) -> list[Job]:
        """The longest head of `batch` predicted to fit on this device (its first job at least:
        admission found that one fits alone); the rest go back to the front of the queue."""
        first = batch[0].request
        try:
            free = self._device_memory.free_bytes(self.device)
        except Exception:  # a device that cannot say: the budget alone decides
            log.exception("free memory unknown on %s", self.device)
            free = None
        kept, images = batch[:1], batch[0].images
        for job in batch[1:]:
            if not self._host.memory.fits_on(
                self.device,
                first.model_id,
                first.width,
                first.height,
                images + job.images,
                free_bytes=free,
            ):
                break
            kept.append(job)
            images += job.images
        rest = batch[len(kept) :]
        if rest:
            log.info(
                "a batch of %d images would not fit on %s: running %d",
                images + sum(job.images for job in rest),
                self.device,
                images,
            )
            for job in reversed(rest):
                self._host.queue.put(job, front=True)
        return kept

    def _runtime(self, model: RegisteredModel) -> ModelRuntime:
        runtime = self._runtimes.get(model.id)
        if runtime is not None:
            return runtime
        host = self._host
        host.registry.set_state(model.id, self.key, ModelState.LOADING)
        self.loading = model.id
        try:
            runtime = host.loader(model.settings, self.device)
            # With the model, in its dtype: never on the first caller's time, never
            # float32 beside a float16 model.
            self._load_output_checker(getattr(runtime, "dtype", "") or "float32")
            host.memory.describe_model(
                model.id,
                runtime.weights_bytes,
                model.settings.activation_mb_per_megapixel * 1024 * 1024,
            )
            host.memory.loaded(self.device, model.id)
            if host.settings.warmup:
                self._warm_up(model, runtime)
        except Exception as error:
            log.exception("model %s failed to load on %s", model.id, self.device)
            host.memory.unloaded(self.device, model.id)
            self._failed.add(model.id)  # other workers may still hold it
            overall = host.registry.set_state(model.id, self.key, ModelState.FAILED, error=error)
            if overall is ModelState.FAILED:
                host.fail_waiting(model.id)
            raise Unavailable(f"model {model.id} failed to load") from None
        finally:
            self.loading = None
        self._runtimes[model.id] = runtime
        host.registry.set_state(
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
                self._host.memory.check(*_shape_args(shape))
                measured = self._warm_call(model, runtime, images=images, steps=WARMUP_STEPS)
            except Exception as error:
                if not isinstance(error, ResourceExhausted) and not is_out_of_memory(error):
                    raise
            else:
                if measured is not None:
                    self._host.timer.observe(shape, measured)
                continue
            # Out of the handler: its traceback no longer holds the failed call's tensors.
            self._device_memory.release(self.device)
            log.info("model %s: no warm-up of %d images on %s", model.id, images, self.device)
            return

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
        # The safety check is part of every real call's fixed cost. A checker that
        # fails is reported when used.
        with contextlib.suppress(Exception):
            self._output_checker().flagged(produced)
        return clock.measure(steps)

    def _load_output_checker(self, dtype: str) -> None:
        """Loads the checker once per worker (in the first model's dtype); a failure is
        remembered and reported to the callers whose images it would check."""
        if self._checker is not None:
            return
        try:
            self._checker = self._host.checker_factory(self.device, dtype)
            self._host.memory.checker_loaded(self.device, module_bytes(self._checker))
        except Exception as error:  # remembered: no reload attempt per image
            log.exception("the output checker failed to load on %s", self.device)
            self._checker = error

    def _output_checker(self) -> OutputChecker:
        self._load_output_checker("float32")  # loaded with the model: a no-op by now
        if self._checker is None or isinstance(self._checker, Exception):
            raise Unavailable("the image safety check is unavailable") from None
        return self._checker

    def _run(self, jobs: Sequence[Job]) -> None:
        host = self._host
        members = []
        for job in jobs:
            if job.cancelled:
                host.finish(job, cancelled=True)
            else:
                members.append(job)
        if not members:
            return
        request = members[0].request
        try:
            runtime = self._runtime(host.registry[request.model_id])
        except Unavailable as error:
            if host.registry[request.model_id].state is ModelState.FAILED:
                for job in members:
                    host.finish(job, error=error)
            else:  # another worker holds (or may load) it: the jobs wait for that one
                for job in reversed(members):
                    host.queue.put(job, front=True)
            return
        # A job retried after running out of memory started already: it counts once.
        fresh = [job for job in members if not job.started]
        for job in fresh:
            job.started = True
        host.count(jobs_started=len(fresh), batches_run=1)
        observer = host.observer
        if observer is not None:
            observer.batch_started(request.model_id, sum(job.images for job in members))
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
        )
        latent_format = latent_format_for(
            getattr(runtime, "pipeline_name", ""), runtime.latent_channels
        )
        previewed = {job for job in members if job.request.preview_every and latent_format}
        if previewed:
            batch = dataclasses.replace(batch, want_latents=True)
        # Progress of a job with previews goes through the preview thread, so that
        # its events stay in step order; the call's end waits for them.
        sent: list[Future[None]] = []
        clock = CallClock()
        started = clock.started

        def on_step(step: int, total: int, latents: Latents | None) -> None:
            clock.step()
            host.count(steps_run=1)
            alive = [job for job in members if not job.cancelled]
            if not alive:
                raise GenerationCancelled
            remaining = (time.perf_counter() - started) / step * (total - step)
            for job in alive:
                job.steps_run = step
                # A retry re-runs steps its caller has seen: they pass in silence, so that
                # progress never goes back; it is reported again from the next new step.
                if step <= job.steps_reported:
                    continue
                job.steps_reported = step
                progress = StepDone(step=step, total=total, eta=remaining)
                if job not in previewed or latent_format is None:
                    job.emit(progress)
                    continue
                snapshot = None
                if latents is not None and step % job.request.preview_every == 0:
                    # A copy queued on the device, no wait: the GPU runs on.
                    snapshot = snapshot_latent(latents[offsets[job]])
                sent.append(
                    self._previews.submit(
                        _emit_progress, job.emit, progress, snapshot, latent_format
                    )
                )

        shape = Shape(request.model_id, request.width, request.height, len(batch.seeds))
        self._device_memory.reset_peak(self.device)
        out_of_memory = False
        try:
            try:
                with denoising(
                    members,
                    model=request.model_id,
                    steps=request.steps,
                    batch_images=len(batch.seeds),
                ):
                    images = runtime.run(batch, on_step)
            finally:
                wait(sent)  # every progress event out before the call's outcome
        except GenerationCancelled:
            for job in members:
                host.finish(job, cancelled=True)
            return
        except Exception as error:
            if not is_out_of_memory(error):
                log.exception("batch of %d jobs failed on %s", len(members), self.device)
                for job in members:
                    host.finish(job, error=error)
                return
            out_of_memory = True
        if out_of_memory:
            # Out of the handler: its traceback no longer holds the failed call's tensors.
            self._out_of_memory(members, shape)
            return
        peak = self._device_memory.peak_bytes(self.device)
        if peak is not None:
            host.memory.observe_peak(*_shape_args(shape), peak_bytes=peak, device=self.device)
        for job in members:
            self._deliver(job, images[offsets[job] : offsets[job] + job.images])
        # Measured once every member has its images: decoding, the safety check and
        # delivery are the call's fixed cost as callers see it.
        measured = clock.measure(request.steps)
        if measured is not None:
            host.timer.observe(shape, measured)
            if observer is not None:
                observer.steps_timed(request.model_id, measured.per_step)
            log.debug(
                "batch of %d images, %d steps: %.3f s fixed + %.4f s a step",
                len(batch.seeds),
                request.steps,
                measured.overhead,
                measured.per_step,
            )

    def _deliver(self, job: Job, images: Sequence[Image.Image]) -> None:
        host = self._host
        if job.cancelled:
            host.finish(job, cancelled=True)
            return
        try:
            flags = self._output_checker().flagged(images)
        except Unavailable as error:
            host.finish(job, error=error)  # never an unchecked image
            return
        except Exception:
            log.exception("the output checker failed on %s", self.device)
            host.finish(job, error=Unavailable("the image safety check failed"))
            return
        for index, (seed, image, flagged) in enumerate(
            zip(job.request.seeds, images, flags, strict=True)
        ):
            if flagged:
                host.count(images_filtered=1)
            job.emit(
                GeneratedImage(
                    index=index,
                    seed=seed,
                    steps=job.steps_run,
                    image=None if flagged else image,
                )
            )
        host.finish(job)

    def _out_of_memory(self, members: Sequence[Job], shape: Shape) -> None:
        host = self._host
        self._device_memory.release(self.device)
        host.memory.observe_out_of_memory(self.device, *_shape_args(shape))
        if len(members) > 1:
            log.warning(
                "out of memory in a batch of %d on %s: retrying one by one",
                len(members),
                self.device,
            )
            for job in reversed(members):
                job.solo = True
                host.queue.put(job, front=True)
            return
        log.warning("out of memory on %s for one request", self.device)
        host.finish(
            members[0],
            error=ResourceExhausted(
                "the device ran out of memory for this request; ask for a smaller image"
                " or fewer images"
            ),
        )


def _emit_progress(
    emit: Callable[[StepDone], None],
    progress: StepDone,
    snapshot: LatentSnapshot | None,
    latent_format: LatentFormat,
) -> None:
    """On the preview thread: encodes the frame (if one is due) and sends the progress."""
    if snapshot is not None:
        try:
            frame = preview_jpeg(snapshot, latent_format)
        except Exception:  # a preview is a nicety: the progress goes out without it
            log.exception("a preview frame failed")
        else:
            progress = dataclasses.replace(progress, preview_jpeg=frame)
    emit(progress)


def _shape_args(shape: Shape) -> tuple[str, int, int, int]:
    return shape.model_id, shape.width, shape.height, shape.images


__all__ = ["WARMUP_PROMPT", "EngineObserver", "GenerationCancelled", "Worker", "WorkerHost"]
