"""Preview frames: each model family's own colours, and a snapshot the pipeline cannot change."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import tiny_model_entry

from pixelgate.server.models.latent_formats import (
    SD1_FORMAT,
    SDXL_FORMAT,
    LatentFormat,
    latent_format_for,
)
from pixelgate.server.models.previews import preview_jpeg, snapshot_latent
from pixelgate.server.models.tiny_sdxl import ensure_tiny_sdxl


@pytest.mark.parametrize(
    ("pipeline_name", "channels", "expected"),
    [
        ("StableDiffusionPipeline", 4, SD1_FORMAT),
        ("StableDiffusionXLPipeline", 4, SDXL_FORMAT),
        ("StableDiffusionXLImg2ImgPipeline", 4, SDXL_FORMAT),
        ("StableDiffusion3Pipeline", 16, None),
        ("SomePipeline", None, None),
    ],
)
def test_the_preview_matrix_follows_the_pipeline_class(
    pipeline_name: str, channels: int | None, expected: LatentFormat | None
) -> None:
    """SDXL latents get SDXL's matrix (not SD1.x's); latent spaces with no known map get none."""
    assert latent_format_for(pipeline_name, channels) is expected


def test_the_tiny_sdxl_model_previews_through_the_sdxl_matrix(model_cache: Path) -> None:
    """A loaded SDXL pipeline's name and channels select SDXL's matrix."""
    from pixelgate.server.core.config import ModelSettings
    from pixelgate.server.models.runtime import load_model

    source = ensure_tiny_sdxl(model_cache)
    model = load_model(
        ModelSettings(**tiny_model_entry(source, pipeline="StableDiffusionXLPipeline")),
        "cpu",
        model_cache,
    )
    assert latent_format_for(model.pipeline_name, model.latent_channels) is SDXL_FORMAT


def _mean_colour(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_the_same_latents_preview_in_each_familys_colours() -> None:
    """Channel 0 alone: SD1.x shows it through SD1.x's row, SDXL through its row and bias."""
    latent = torch.zeros(4, 8, 8)
    latent[0] = 1.0
    for latent_format in (SD1_FORMAT, SDXL_FORMAT):
        jpeg = preview_jpeg(snapshot_latent(latent), latent_format)
        assert jpeg is not None
        row = np.array(latent_format.rgb_factors[0]) + np.array(latent_format.rgb_bias)
        expected = (row + 1.0) * 127.5
        assert np.allclose(_mean_colour(jpeg), expected, atol=4)


def test_a_snapshot_keeps_the_latents_of_its_step() -> None:
    """The pipeline may reuse its latents' memory after the step: the snapshot is a copy."""
    latent = torch.zeros(4, 8, 8)
    snapshot = snapshot_latent(latent)
    latent.fill_(5.0)
    assert torch.all(snapshot.latent == 0)


def test_latents_of_other_shapes_give_no_preview() -> None:
    """A 16-channel latent through a 4-channel matrix: no frame, not an exception."""
    assert preview_jpeg(snapshot_latent(torch.zeros(16, 8, 8)), SD1_FORMAT) is None
