"""Tiny saved pipelines for model-correctness tests: Stable Diffusion as its repository ships it.

Stable Diffusion 1.x repositories carry their own safety checker; the tiny test
model does not, so these add one (random CLIP weights, thresholds chosen so it
flags every image) and save the pipeline again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixelgate.server.core.config import TINY_MODEL_DEFAULTS
from pixelgate.server.models.tiny_model import ensure_tiny_model


def tiny_model_entry(source: Path, **settings: Any) -> dict[str, Any]:
    """A [[models]] entry for a tiny test pipeline saved in `source`: loaded through the
    real path (a source), with the tiny model's sizes rather than a real model's."""
    return {**TINY_MODEL_DEFAULTS, "source": str(source), **settings}


def flag_everything_checker() -> tuple[Any, Any]:
    """A tiny random StableDiffusionSafetyChecker that flags every image, and its extractor."""
    return tiny_safety_checker(threshold=-10.0)


def tiny_safety_checker(threshold: float) -> tuple[Any, Any]:
    """A tiny random StableDiffusionSafetyChecker whose concept thresholds are all
    `threshold`, and its feature extractor.

    An image is flagged when cosine(image, concept) - threshold > 0 for any concept;
    cosines lie in [-1, 1], so -10 flags every image and +10 none.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "vocab_size": 100,
            "bos_token_id": 98,
            "eos_token_id": 99,
            "pad_token_id": 99,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return checker, extractor


def save_sd_with_checker(cache_dir: Path, target: Path) -> Path:
    """The tiny SD model saved to `target` with a flag-everything safety checker."""
    from diffusers import StableDiffusionPipeline

    tiny = StableDiffusionPipeline.from_pretrained(
        str(ensure_tiny_model(cache_dir)), safety_checker=None, requires_safety_checker=False
    )
    checker, extractor = flag_everything_checker()
    with_checker = StableDiffusionPipeline(
        **{**tiny.components, "safety_checker": checker, "feature_extractor": extractor},
        requires_safety_checker=True,
    )
    with_checker.save_pretrained(str(target))
    return target
