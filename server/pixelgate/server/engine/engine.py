"""The generation engine: admits jobs, queues them fairly, and runs them on a worker per device.

Admission refuses at once what cannot succeed: a full queue or a request too
big for the device's memory (RESOURCE_EXHAUSTED), a model that failed to load
(UNAVAILABLE), a deadline that would pass before the job could finish
(DEADLINE_EXCEEDED): its finish time is estimated by playing the queue forward
as the workers will take it (eta.py), from measured call times (step_timing.py),
and held against the deadline with the error margin past estimates showed
(admission.py). Workers (worker.py) take batches from the fair queue and
report back here; a job (jobs.py) carries its events to its caller. A waiting
job that is cancelled leaves the queue at once; a running one stops at its
next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest

from pixelgate.server.core.config import EngineSettings
from pixelgate.server.core.errors import (
    DRAINING_MESSAGE,
    DeadlineExceeded,
    ReplicaBusy,
    Unavailable,
)
from pixelgate.server.core.generation import GeneratedImage, GenerationRequest, Queued
from pixelgate.server.engine.admission import DeadlineAdmission
from pixelgate.server.engine.eta import WorkerView, finish_times
from pixelgate.server.engine.fair_queue import FairQueue
from pixelgate.server.engine.jobs import EndOfEvents, EngineStats, Job
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.engine.prompt_denylist import PromptDenylist
from pixelgate.server.engine.step_timing import Shape, StepTimer
from pixelgate.server.engine.worker import EngineObserver, GenerationCancelled, Worker
from pixelgate.server.models.registry import ModelRegistry
from pixelgate.server.models.runtime import ModelLoader
from pixelgate.server.models.safety import CheckerFactory, NoChecker
from pixelgate.server.tracing.job_spans import job_spans

log = logging.getLogger("pixelgate.engine")


WORKER_STOP_SECONDS = 30.0
"""How long closing the engine waits for its workers unless told (a shutdown's grace)."""

"""What a job refused or ended unstarted by a draining engine is told (with ReplicaBusy)."""


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
        observer: EngineObserver | None = None,
    ) -> None:
        self.registry = registry
        self.observer = observer
        """Hears of queue waits, batches and step times (metrics); None: nothing listens."""
        self.settings = settings
        self.loader = loader
        self.memory = memory
        self.denylist = denylist or PromptDenylist(())
        self.checker_factory: CheckerFactory = checker_factory or (
            lambda device, dtype: NoChecker()
        )
        self.timer = timer or StepTimer()
        self.admission = admission or DeadlineAdmission()
        self.queue: FairQueue[Job] = FairQueue()
        self.stats = EngineStats()
        self._devices = list(devices)
        self._workers: list[Worker] = []
        self._active: set[Job] = set()
        self._running: dict[Worker, _RunningBatch] = {}
        self._lock = threading.RLock()
        self._draining = False

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
        if self._draining:
            raise ReplicaBusy(DRAINING_MESSAGE)
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
                raise ReplicaBusy("server busy: the generation queue is full; retry later")
            self._active.add(job)
        job.submitted_at = time.monotonic()
        job.trace = job_spans()  # here, in its call's context: its worker runs outside it
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
        job.emit(EndOfEvents())

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
        if job.trace is not None:  # ended waiting (cancelled, drained), or no-op: it ran
            job.trace.left_queue()
        if cancelled:
            self.count(jobs_cancelled=1)
            log.info("job cancelled after %d of %d steps", job.steps_run, job.request.steps)
        elif error is not None:
            self.count(jobs_failed=1)
        else:
            self.count(jobs_completed=1)
            if job.eta_at_submit is not None:
                self.admission.record(job.eta_at_submit, time.monotonic() - job.submitted_at)
        job.emit(EndOfEvents(error if not isinstance(error, GenerationCancelled) else None))

    def dispatched(self, batch: list[Job], worker: Worker) -> None:
        """A worker took `batch`: note when, tell the waiting jobs where they stand."""
        now = time.monotonic()
        with self._lock:
            self._running[worker] = _RunningBatch(batch, now)
        if self.observer is not None:
            for job in batch:
                if not job.started:  # a job retried after running out of memory waited once
                    self.observer.queue_waited(job.model_id, now - job.submitted_at)
        for job in batch:
            if job.trace is not None:
                job.trace.left_queue()
        self.announce_positions()

    def queue_depths(self) -> dict[str, int]:
        """Waiting jobs by model (metrics read it as they are scraped)."""
        depths: dict[str, int] = {}
        for _, line in self.queue.lines():
            for job in line:
                depths[job.model_id] = depths.get(job.model_id, 0) + 1
        return depths

    @property
    def active_jobs(self) -> int:
        """Jobs waiting or running: `max_queued_jobs` bounds them."""
        with self._lock:
            return len(self._active)

    def batch_done(self, worker: Worker) -> None:
        """A worker finished its batch."""
        with self._lock:
            self._running.pop(worker, None)

    def announce_positions(self) -> None:
        """Sends Queued (position, ETA) to each waiting job whose position changed."""
        waiting, standings = self._plan()
        for job in waiting:
            if job.started:  # retried after running out of memory: its caller saw it run
                continue
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

    def drain(self) -> None:
        """Takes no new jobs and ends every waiting one with ReplicaBusy; on the loop.

        The first step of a shutdown: running jobs go on to their end, while the
        callers of jobs that have not started are told at once (UNAVAILABLE with
        pushback) to try another replica, rather than waiting out the grace
        period. Submitting raises ReplicaBusy from now on. A running job retried
        after running out of memory still goes back to the queue and runs.
        """
        with self._lock:
            self._draining = True
        drained = self.queue.remove_where(lambda job: not job.started)
        for job in drained:
            self.finish(job, error=ReplicaBusy(DRAINING_MESSAGE))
        if drained:
            log.info("draining: %d waiting jobs sent to other replicas", len(drained))

    async def aclose(self, grace: float | None = WORKER_STOP_SECONDS) -> None:
        """Cancels every job and waits for the workers to stop (within one step), at most
        `grace` seconds in all (None: for good).

        A worker still loading a model when the time is up is abandoned: loads cannot
        be interrupted, and a daemon thread does not keep the process alive.
        """
        self.queue.close()
        for job in self.queue.drain():
            self.finish(job, cancelled=True)
        with self._lock:
            active = list(self._active)
        for job in active:
            job.cancel()
        until = None if grace is None else time.monotonic() + grace
        for worker in self._workers:
            left = None if until is None else max(until - time.monotonic(), 0.0)
            await asyncio.to_thread(worker.join, left)
            if worker.is_alive():
                log.warning(
                    "stopping without waiting for %s: %s",
                    worker.name,
                    f"it is loading model {worker.loading}"
                    if worker.loading
                    else "its batch did not stop in time",
                )


__all__ = ["DRAINING_MESSAGE", "WORKER_STOP_SECONDS", "GenerationEngine"]
