"""SDXL-only behaviour on a tiny SDXL-shaped pipeline: the VAE upcast, empty negatives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.runtime import DiffusersModel, PipelineBatch, load_model
from pixelgate.server.models.tiny_sdxl import ensure_tiny_sdxl


def _sdxl(model_cache: Path, dtype: str) -> DiffusersModel:
    settings = ModelSettings(
        id="tiny-sdxl",
        source=str(ensure_tiny_sdxl(model_cache)),
        dtype=dtype,
    )
    return load_model(settings, "cpu", model_cache)


def _batch(negatives: tuple[str, ...] = ("",), seeds: tuple[int, ...] = (7,)) -> PipelineBatch:
    return PipelineBatch(
        prompts=("a red fox",) * len(seeds),
        negative_prompts=negatives,
        seeds=seeds,
        width=64,
        height=64,
        steps=3,
        guidance_scale=7.5,
    )


def _pixels(model: DiffusersModel, batch: PipelineBatch) -> list[np.ndarray]:
    images = model.run(batch, lambda step, total, latents: None)
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_the_tiny_sdxl_model_loads_as_sdxl_through_from_pretrained(model_cache):
    """The test stands on the real SDXL pipeline class and its upcasting VAE."""
    model = _sdxl(model_cache, "float16")
    assert model.pipeline_name == "StableDiffusionXLPipeline"
    assert model._pipeline.vae.config.force_upcast
    assert model._pipeline.vae.dtype == torch.float16


def test_a_failed_decode_leaves_the_vae_in_its_dtype_and_the_next_request_works(
    model_cache, monkeypatch
):
    """An exception during the float32 upcast decode (an OOM there) must not break the worker."""
    model = _sdxl(model_cache, "float16")
    vae = model._pipeline.vae
    [expected] = _pixels(model, _batch())
    real_decode = vae.decode
    seen_dtypes: list[torch.dtype] = []

    def decode_fails_once(*args: Any, **kwargs: Any) -> Any:
        seen_dtypes.append(vae.dtype)
        monkeypatch.setattr(vae, "decode", real_decode)
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(vae, "decode", decode_fails_once)
    with pytest.raises(RuntimeError, match="injected"):
        model.run(_batch(), lambda step, total, latents: None)
    assert seen_dtypes == [torch.float32]  # it failed inside the upcast
    assert vae.dtype == torch.float16
    [after] = _pixels(model, _batch())
    assert np.abs(after - expected).max() <= 1


def test_sdxl_conditions_an_empty_negative_differently_alone_and_batched(model_cache):
    """Why the batch key separates empty negatives: diffusers zeroes them only when all are empty.

    Same seed and prompt, batched with an image that has a negative prompt, give
    another picture; so such jobs must not share a pipeline call.
    """
    model = _sdxl(model_cache, "float32")
    [alone] = _pixels(model, _batch())
    [batched, _] = _pixels(model, _batch(negatives=("", "blurry"), seeds=(7, 8)))
    [batched_with_empty, _] = _pixels(model, _batch(negatives=("", ""), seeds=(7, 8)))
    assert np.abs(batched_with_empty - alone).max() <= 2
    assert np.abs(batched - alone).max() > 2
