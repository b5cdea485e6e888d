"""Progress counts the caller's steps, whatever number of timesteps the scheduler runs."""

from __future__ import annotations

import pytest

from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.requested_steps import RequestedSteps
from pixelgate.server.models.runtime import PipelineBatch, load_model


@pytest.mark.parametrize("timesteps", [20, 29, 39, 12])
def test_each_requested_step_is_reported_once_in_order_ending_at_the_request(timesteps):
    """PNDM's 29 and Heun's 39 timesteps for 20 steps (or fewer than asked) report 1..20."""
    progress = RequestedSteps(20)
    reported = [progress.after(index, timesteps) for index in range(timesteps)]
    steps = [step for step in reported if step is not None]
    assert steps[-1] == 20
    assert reported[-1] == 20  # the last timestep, and only it, completes the request
    assert steps == sorted(set(steps))
    if timesteps >= 20:
        assert steps == list(range(1, 21))


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "HeunDiscreteScheduler"])
def test_a_model_reports_the_steps_the_caller_asked_for(model_cache, scheduler):
    """The tiny model with PNDM (SD1.5's default) or Heun: a 20-step run reports 1..20 of 20."""
    model = load_model(ModelSettings(scheduler=scheduler), "cpu", model_cache)
    seen: list[tuple[int, int]] = []
    batch = PipelineBatch(
        prompts=("a fox",),
        negative_prompts=("",),
        seeds=(1,),
        width=64,
        height=64,
        steps=20,
        guidance_scale=7.5,
    )
    model.run(batch, lambda step, total, latents: seen.append((step, total)))
    assert seen == [(step, 20) for step in range(1, 21)]


def test_pndm_as_stable_diffusion_ships_it_runs_fewer_than_four_steps(model_cache):
    """Switched to PNDM, a model skips the Runge-Kutta warm-up (as SD1.5's config does),
    so 2-step requests (and the engine's warm-up) run instead of failing."""
    model = load_model(ModelSettings(scheduler="PNDMScheduler"), "cpu", model_cache)
    seen: list[int] = []
    batch = PipelineBatch(
        prompts=("a fox",),
        negative_prompts=("",),
        seeds=(1,),
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.5,
    )
    assert len(model.run(batch, lambda step, total, latents: seen.append(step))) == 1
    assert seen == [1, 2]
