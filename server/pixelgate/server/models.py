"""Models: loading a diffusers pipeline and running it for one request.

`from_pretrained` takes a local directory or a hub id; with no source
configured the embedded tiny test model is built (once) and loaded through the
same path. A loaded model's pipeline is touched only by the engine's worker
thread; validation counts prompt tokens with its own tokenizer copy, because
tokenizers are not thread-safe.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pixelgate.server.config import ModelSettings
from pixelgate.server.generation import GenerationRequest
from pixelgate.server.tiny_model import ensure_tiny_model

log = logging.getLogger("pixelgate.models")

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (step, total); raising stops the pipeline."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelCard:
    """A model's id, description and the request bounds it accepts."""

    id: str
    description: str
    is_test_model: bool
    min_size: int
    max_width: int
    max_height: int
    default_width: int
    default_height: int
    default_steps: int
    max_steps: int
    default_guidance_scale: float
    max_prompt_tokens: int | None
    """Tokens the text encoder reads, special tokens excluded; None = no tokenizer bound."""


def resolve_device(name: str) -> torch.device:
    """ "auto" is the first CUDA device when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" is float16 on CUDA (half the memory, tensor cores) and float32 on the CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class LoadedModel:
    """A pipeline on its device plus what validation needs to know about it."""

    def __init__(self, card: ModelCard, pipeline: Any, device: torch.device) -> None:
        self.card = card
        self._pipeline = pipeline
        self._device = device
        tokenizer = getattr(pipeline, "tokenizer", None)
        self._tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the text encoder, special tokens excluded."""
        if self._tokenizer is None:
            return 0
        encoded = self._tokenizer(text, add_special_tokens=False, truncation=False)
        return len(encoded["input_ids"])

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        """Runs the pipeline for `request`; call from the engine's worker thread only."""

        def step_end(
            pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            on_step(step_index + 1, int(pipeline.num_timesteps))
            return kwargs

        # One CPU generator per image: reproducible across devices, and image i
        # depends only on its own seed.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
        with torch.inference_mode():
            result = self._pipeline(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                num_images_per_prompt=len(request.seeds),
                generator=generators,
                callback_on_step_end=step_end,
                output_type="pil",
            )
        return list(result.images)


def _max_prompt_tokens(pipeline: Any) -> int | None:
    tokenizer = getattr(pipeline, "tokenizer", None)
    length = getattr(tokenizer, "model_max_length", None)
    if not isinstance(length, int) or length > 100_000:  # "unlimited" sentinels
        return None
    return length - 2  # begin and end of text take two


def load_model(settings: ModelSettings, cache_dir: Path) -> LoadedModel:
    """Loads the configured model (building the tiny test model when none is set)."""
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading progress bars mean nothing in a server's log.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    source = settings.source or str(ensure_tiny_model(cache_dir))
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    log.info("loading model %s from %s on %s (%s)", settings.id, source, device, dtype)
    pipeline = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    card = ModelCard(
        id=settings.id,
        description=settings.description,
        is_test_model=settings.is_test_model,
        min_size=settings.min_size,
        max_width=settings.max_width,
        max_height=settings.max_height,
        default_width=settings.default_width,
        default_height=settings.default_height,
        default_steps=settings.default_steps,
        max_steps=settings.max_steps,
        default_guidance_scale=settings.default_guidance_scale,
        max_prompt_tokens=_max_prompt_tokens(pipeline),
    )
    return LoadedModel(card, pipeline, device)


__all__ = [
    "LoadedModel",
    "ModelCard",
    "StepCallback",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
