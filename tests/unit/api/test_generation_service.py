"""GenerationService: the generation flow from a request to encoded images, with no gRPC.

Real validation, caller policy, GPU quota (in-process buckets on a still
clock) and encoding; the engine is a fake that plays a script of events, and
once the real engine over a fake model runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from pixelgate.server.api.generation_ask import GenerationAsk
from pixelgate.server.api.generation_events import (
    Admitted,
    GenerationEvent,
    ImageBytes,
    ImageDone,
    ImageFiltered,
    InQueue,
)
from pixelgate.server.api.generation_service import GenerationService
from pixelgate.server.api.validation import RequestValidator
from pixelgate.server.core.config import CallerRule, EngineSettings, ModelSettings
from pixelgate.server.core.errors import PermissionDenied, RequestInvalid, ResourceExhausted
from pixelgate.server.core.generation import (
    EngineEvent,
    GeneratedImage,
    GenerationRequest,
    Queued,
    StepDone,
)
from pixelgate.server.core.image_format import ImageFormat
from pixelgate.server.core.model_card import ModelCard
from pixelgate.server.core.principal import Principal
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.engine.engine import GenerationEngine
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.limits.buckets import Limiter, MemoryBackend
from pixelgate.server.limits.caller_policy import CallerPolicy
from pixelgate.server.limits.gpu_quota import CostModel, GpuQuota
from pixelgate.server.models.registry import ModelRegistry, RegisteredModel
from pixelgate.server.models.runtime import PipelineBatch, StepCallback

CARD = ModelCard(
    id="fake",
    description="a fake model for data-plane tests",
    is_test_model=True,
    min_size=64,
    max_width=512,
    max_height=512,
    default_width=64,
    default_height=64,
    default_steps=4,
    max_steps=50,
    default_guidance_scale=7.5,
    max_prompt_tokens=None,
)
CALLER = Principal(issuer="https://issuer.test", subject="alice", scopes=frozenset())
GPU = Limit("gpu", capacity=100.0, per_second=1.0)
COST_64_4_STEPS = 64 * 64 / (512 * 512) * 4
"""A 64x64 request of 4 steps and 1 image, in GPU cost units."""


class FakeModel:
    """The card validation reads; no tokenizer bound."""

    card = CARD

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class ScriptedJob:
    """A job that plays `script`; StepDone events count as steps run."""

    def __init__(self, script: Sequence[EngineEvent | Exception]) -> None:
        self._script = script
        self.steps_run = 0
        self.cancelled = False

    async def events(self) -> AsyncIterator[EngineEvent]:
        for event in self._script:
            if isinstance(event, Exception):
                raise event
            if isinstance(event, StepDone):
                self.steps_run = event.step
            yield event

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ScriptedEngine:
    """Submits jobs that play the script `play(request)` returns; notes what it was asked."""

    play: Callable[[GenerationRequest], Sequence[EngineEvent | Exception]]
    submitted: list[tuple[GenerationRequest, str, float | None, bool]] = field(default_factory=list)
    jobs: list[ScriptedJob] = field(default_factory=list)
    released: list[ScriptedJob] = field(default_factory=list)

    def submit(
        self, request: GenerationRequest, *, caller: str, deadline: float | None, hold: bool
    ) -> ScriptedJob:
        self.submitted.append((request, caller, deadline, hold))
        job = ScriptedJob(self.play(request))
        self.jobs.append(job)
        return job

    def release(self, job: ScriptedJob) -> None:
        self.released.append(job)


@dataclass
class Facts:
    """A plain CallFacts: what the audit line would show."""

    quota: list[tuple[Limit, Decision]] = field(default_factory=list)
    cost_charged: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str | None = None
    image_sha256s: list[str] = field(default_factory=list)


def red_square(size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (200, 30, 30))


def full_run(request: GenerationRequest) -> list[EngineEvent | Exception]:
    """Queued, every step, then one image per seed."""
    return [
        Queued(position=0, eta=1.5),
        *(StepDone(step=s, total=request.steps) for s in range(1, request.steps + 1)),
        *(
            GeneratedImage(index=i, seed=seed, steps=request.steps, image=red_square())
            for i, seed in enumerate(request.seeds)
        ),
    ]


class Plane:
    """A service over real validation, policy and quota, and a scripted engine."""

    def __init__(
        self,
        play: Callable[[GenerationRequest], Sequence[EngineEvent | Exception]] = full_run,
        rules: Sequence[CallerRule] = (),
        chunk_size: int = 64,
    ) -> None:
        self.backend = MemoryBackend(clock=lambda: 0.0)  # a still clock: no refill
        self.engine = ScriptedEngine(play)
        quota = GpuQuota(Limiter(self.backend), GPU, CostModel(), max_concurrent=2)
        validator = RequestValidator(
            {"fake": FakeModel()}, "fake", max_prompt_bytes=100, max_images=4
        )
        self.service = GenerationService(
            self.engine, validator, CallerPolicy(rules), quota, chunk_size=chunk_size
        )
        self.facts = Facts()

    def events(self, stop_after: int | None = None, **fields: Any) -> list[GenerationEvent]:
        """Runs one call; the caller goes away after `stop_after` events, if given."""
        fields.setdefault("prompt", "a red square")
        fields.setdefault("seed", 7)
        request = GenerationAsk(**fields)

        async def run() -> list[GenerationEvent]:
            seen: list[GenerationEvent] = []
            stream = self.service.generate(request, CALLER, self.facts, time_left=lambda: 30.0)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    seen.append(event)
                    if stop_after is not None and len(seen) >= stop_after:
                        break
            return seen

        return asyncio.run(run())

    def gpu_left(self) -> float:
        """Units left in the caller's GPU bucket."""
        return self.backend.take_now(CALLER.key, GPU, 0.0).remaining


def test_events_arrive_in_order() -> None:
    """Admitted, then queued, every step, each image's chunks, then its completion."""
    plane = Plane()
    events = plane.events(num_images=2)
    kinds = [type(event).__name__ for event in events]
    runs = [kind for i, kind in enumerate(kinds) if i == 0 or kinds[i - 1] != kind]
    assert runs == [
        "Admitted",
        "InQueue",
        "StepDone",
        "ImageBytes",
        "ImageDone",
        "ImageBytes",
        "ImageDone",
    ]
    queued = events[1]
    assert queued == InQueue(position=0, total_steps=4, eta=1.5)
    assert [event.step for event in events if isinstance(event, StepDone)] == [1, 2, 3, 4]


def test_chunks_reassemble_to_the_bytes_the_digest_names() -> None:
    """Each image's chunks, joined by offset, are a PNG whose SHA-256 its ImageDone carries."""
    plane = Plane(chunk_size=50)
    events = plane.events(num_images=2)
    done = [event for event in events if isinstance(event, ImageDone)]
    assert [d.image_index for d in done] == [0, 1]
    for image in done:
        pieces = [
            e for e in events if isinstance(e, ImageBytes) and e.image_index == image.image_index
        ]
        assert [p.offset for p in pieces] == list(range(0, image.size_bytes, 50))
        data = b"".join(p.data for p in pieces)
        assert len(data) == image.size_bytes
        assert hashlib.sha256(data).hexdigest() == image.sha256
        assert data.startswith(b"\x89PNG")
        assert (image.mime_type, image.width, image.height) == ("image/png", 64, 64)
        assert (image.model, image.steps) == ("fake", 4)
    assert [d.seed for d in done] == [7, 8]
    assert plane.facts.image_sha256s == [d.sha256 for d in done]


def test_filtered_image_yields_no_bytes() -> None:
    """An image the safety policy blocked is reported filtered, with no bytes and no digest."""

    def filtered(request: GenerationRequest) -> list[EngineEvent | Exception]:
        return [
            Queued(position=0),
            StepDone(step=1, total=1),
            GeneratedImage(index=0, seed=request.seeds[0], steps=1, image=None),
        ]

    plane = Plane(play=filtered)
    events = plane.events(steps=1)
    assert not [event for event in events if isinstance(event, ImageBytes | ImageDone)]
    assert events[-1] == ImageFiltered(image_index=0, seed=7, model="fake", steps=1)
    assert plane.facts.image_sha256s == []


def test_invalid_request_raises_before_any_charge() -> None:
    """A request breaking a bound is refused with every violation; nothing is charged or run."""
    plane = Plane()
    with pytest.raises(RequestInvalid) as caught:
        plane.events(width=3, steps=999)
    assert [v.field for v in caught.value.violations] == ["width", "steps"]
    assert plane.gpu_left() == GPU.capacity
    assert plane.engine.submitted == []
    assert plane.facts.quota == []


def test_policy_refusal_charges_nothing() -> None:
    """A request beyond the caller's rule is refused naming the rule; no quota, no job."""
    plane = Plane(rules=[CallerRule(name="trial", max_steps=2)])
    with pytest.raises(PermissionDenied) as caught:
        plane.events(steps=4)
    assert caught.value.message == "request exceeds policy 'trial': steps at most 2 (asked 4)"
    assert plane.gpu_left() == GPU.capacity
    assert plane.engine.submitted == []
    assert plane.facts.cost_charged == 0.0
    # The audit line of a refused call still says what was asked (never the prompt).
    assert plane.facts.parameters["steps"] == 4


def test_over_quota_refused_before_submission() -> None:
    """A request costing more than the caller's whole GPU bucket never reaches the engine."""
    plane = Plane()
    with pytest.raises(ResourceExhausted):
        plane.events(width=512, height=512, steps=50, num_images=4)  # 200 units > 100
    assert plane.engine.submitted == []


def test_complete_run_charges_full_cost() -> None:
    """A generation that ran every step costs its whole price, and the bucket shows it."""
    plane = Plane()
    plane.events()
    assert plane.facts.cost_charged == pytest.approx(COST_64_4_STEPS)
    assert plane.gpu_left() == pytest.approx(GPU.capacity - COST_64_4_STEPS)
    limit, decision = plane.facts.quota[0]
    assert limit == GPU and decision.allowed


def test_caller_leaving_refunds_steps_not_run() -> None:
    """A caller gone after step 1 of 4 pays a quarter; the job is cancelled."""
    plane = Plane()
    events = plane.events(stop_after=3)  # Admitted, InQueue, StepDone(1)
    assert isinstance(events[-1], StepDone) and events[-1].step == 1
    assert plane.engine.jobs[0].cancelled
    assert plane.facts.cost_charged == pytest.approx(COST_64_4_STEPS / 4)
    assert plane.gpu_left() == pytest.approx(GPU.capacity - COST_64_4_STEPS / 4)


def test_engine_failure_refunds_and_propagates() -> None:
    """A job that fails mid-run raises to the caller and charges only the steps it ran."""

    def fails(request: GenerationRequest) -> list[EngineEvent | Exception]:
        return [
            Queued(position=0),
            StepDone(step=1, total=4),
            StepDone(step=2, total=4),
            ResourceExhausted("out of device memory"),
        ]

    plane = Plane(play=fails)
    with pytest.raises(ResourceExhausted, match="out of device memory"):
        plane.events()
    assert plane.facts.cost_charged == pytest.approx(COST_64_4_STEPS / 2)
    assert plane.gpu_left() == pytest.approx(GPU.capacity - COST_64_4_STEPS / 2)


def test_job_is_held_until_the_caller_has_its_first_answer() -> None:
    """Submitted held with the caller's deadline; released only after the queue position is out."""
    plane = Plane()

    async def run() -> None:
        stream = plane.service.generate(
            GenerationAsk(prompt="a red square"),
            CALLER,
            plane.facts,
            time_left=lambda: 12.5,
        )
        async with contextlib.aclosing(stream) as events:
            admitted = await anext(events)
            assert isinstance(admitted, Admitted)
            (_, caller, deadline, hold) = plane.engine.submitted[0]
            assert (caller, deadline, hold) == (CALLER.key, 12.5, True)
            job = plane.engine.jobs[0]
            assert isinstance(await anext(events), InQueue)
            assert plane.engine.released == []  # not before the caller has taken its answer
            await anext(events)
            assert plane.engine.released[0] is job
            admitted.cancel()  # what the servicer's done-callback calls
            assert job.cancelled

    asyncio.run(run())


def test_audit_facts_recorded() -> None:
    """Parameters (no prompt), the prompt's SHA-256, the digests and the cost are recorded."""
    plane = Plane()
    plane.events(prompt="a red square", output_format=ImageFormat.JPEG, guidance_scale=7.25)
    assert plane.facts.parameters == {
        "model": "fake",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 7.25,
        "num_images": 1,
        "seed": 7,
        "output_format": "JPEG",
    }
    assert plane.facts.prompt_sha256 == hashlib.sha256(b"a red square").hexdigest()
    assert "a red square" not in repr(plane.facts.parameters)
    assert len(plane.facts.image_sha256s) == 1
    assert plane.facts.cost_charged == pytest.approx(COST_64_4_STEPS)


class SquaresRuntime:
    """A model runtime that paints each image one colour per seed, calling back every step."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.weights_bytes = 0
        self.latent_channels: int | None = None
        self.pipeline_name = "SquaresPipeline"
        self.dtype = "float32"

    def run(self, batch: PipelineBatch, on_step: StepCallback) -> list[Image.Image]:
        for step in range(1, batch.steps + 1):
            on_step(step, batch.steps, None)
        return [
            Image.new("RGB", (batch.width, batch.height), (seed % 256, 0, 0))
            for seed in batch.seeds
        ]


def test_real_engine_runs_the_flow() -> None:
    """Through the real engine's queue and worker: every step, then both images, full cost."""
    model = RegisteredModel(ModelSettings(id="fake"), CARD, ("cpu",), None)
    engine = GenerationEngine(
        ModelRegistry([model], "fake"),
        ["cpu"],
        settings=EngineSettings(),
        loader=lambda settings, device: SquaresRuntime(),
        memory=MemoryGuard(None),
    )
    backend = MemoryBackend(clock=lambda: 0.0)
    service = GenerationService(
        engine,
        RequestValidator({"fake": FakeModel()}, "fake", max_prompt_bytes=100, max_images=4),
        CallerPolicy([]),
        GpuQuota(Limiter(backend), GPU, CostModel(), max_concurrent=2),
        chunk_size=1 << 20,
    )
    facts = Facts()

    async def run() -> list[GenerationEvent]:
        await engine.start()
        try:
            stream = service.generate(
                GenerationAsk(prompt="two squares", num_images=2, seed=1),
                CALLER,
                facts,
                time_left=lambda: None,
            )
            async with contextlib.aclosing(stream) as events:
                return [event async for event in events]
        finally:
            await engine.aclose()

    events = asyncio.run(run())
    assert isinstance(events[0], Admitted) and isinstance(events[1], InQueue)
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    done = [e for e in events if isinstance(e, ImageDone)]
    assert [(d.image_index, d.seed) for d in done] == [(0, 1), (1, 2)]
    assert facts.image_sha256s == [d.sha256 for d in done]
    assert facts.cost_charged == pytest.approx(2 * COST_64_4_STEPS)
