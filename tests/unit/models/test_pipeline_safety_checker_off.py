"""One safety policy, the server's: a pipeline's own safety checker never runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_pipelines import save_sd_with_checker, tiny_model_entry

from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.runtime import PipelineBatch, load_model
from pixelgate.server.models.safety import DiffusersSafetyChecker


@pytest.fixture(scope="module")
def sd_with_checker(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model saved again WITH a safety checker (as SD1.5's repository ships)."""
    return save_sd_with_checker(model_cache, tmp_path_factory.mktemp("sd-with-checker"))


def _batch() -> PipelineBatch:
    return PipelineBatch(
        prompts=("a fox",),
        negative_prompts=("",),
        seeds=(3,),
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.5,
    )


def test_a_pipeline_shipped_with_a_safety_checker_loads_without_it(sd_with_checker):
    """Its checker would blacken flagged images, which would then be sent as COMPLETE."""
    model = load_model(
        ModelSettings(**tiny_model_entry(sd_with_checker)), "cpu", Path("/nonexistent")
    )
    assert model._pipeline.safety_checker is None
    [image] = model.run(_batch(), lambda step, total, latents: None)
    assert np.asarray(image).max() > 0  # not the black square a flagged image becomes


def test_the_pipelines_checker_as_the_servers_output_checker_flags_the_image(sd_with_checker):
    """Asked for by name (safety.output_checker), the pipeline's checker gives the verdict."""
    model = load_model(
        ModelSettings(**tiny_model_entry(sd_with_checker)), "cpu", Path("/nonexistent")
    )
    images = model.run(_batch(), lambda step, total, latents: None)
    checker = DiffusersSafetyChecker(str(sd_with_checker), "cpu")
    assert checker.flagged(images) == [True]
