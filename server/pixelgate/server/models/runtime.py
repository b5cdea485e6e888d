"""Models: loading a diffusers pipeline onto a device and running batches on it.

`from_pretrained` takes a local directory or a hub id; with no source
configured the embedded tiny test model is built (once) and loaded through the
same path. A loaded model belongs to one worker thread, which alone calls it:
diffusers schedulers and tokenizers are not thread-safe. Validation counts
prompt tokens with a tokenizer of its own, loaded separately.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import torch
from PIL import Image

from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.component_dtypes import component_dtypes_kept
from pixelgate.server.models.requested_steps import RequestedSteps
from pixelgate.server.models.tiny_model import ensure_tiny_model

log = logging.getLogger("pixelgate.models")

Latents: TypeAlias = Any
"""The latents at a step (a tensor, an entry per image); only the models package reads them."""

StepCallback = Callable[[int, int, Latents | None], None]
"""Called after each denoising step with (step, total, latents or None); raising stops the run."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PipelineBatch:
    """One pipeline call: an entry per image, and the parameters they share."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance_scale: float
    want_latents: bool = False
    """Hand the latents to the step callback (for previews)."""


class ModelRuntime(Protocol):
    """A model loaded on one device, called by its worker thread only."""

    device: str
    weights_bytes: int
    latent_channels: int | None

    def run(self, batch: PipelineBatch, on_step: StepCallback) -> list[Image.Image]:
        """Runs the pipeline once for every image of `batch`."""
        ...


ModelLoader = Callable[[ModelSettings, str], ModelRuntime]
"""Loads a configured model onto a device ("cpu", "cuda:0")."""


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """ "auto" is float16 on CUDA (half the memory, tensor cores) and float32 on the CPU."""
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[name]


def resolve_source(settings: ModelSettings, cache_dir: Path) -> str:
    """Where the model loads from: its source, or the tiny model (built on first use)."""
    return settings.source or str(ensure_tiny_model(cache_dir))


class DiffusersModel:
    """A diffusers text-to-image pipeline on one device."""

    def __init__(self, pipeline: Any, device: str, settings: ModelSettings) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self.device = device
        self.weights_bytes = sum(
            parameter.numel() * parameter.element_size()
            for component in pipeline.components.values()
            if isinstance(component, torch.nn.Module)
            for parameter in component.parameters()
        )
        unet = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        channels = getattr(getattr(unet, "config", None), "in_channels", None)
        self.latent_channels = channels if isinstance(channels, int) else None
        self.pipeline_name = type(pipeline).__name__
        self.dtype = str(getattr(pipeline, "dtype", "")).removeprefix("torch.")

    def run(self, batch: PipelineBatch, on_step: StepCallback) -> list[Image.Image]:
        """Runs the pipeline; one CPU generator per image keeps each image's noise its own."""
        progress = RequestedSteps(batch.steps)

        def step_end(
            pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            step = progress.after(step_index, int(pipeline.num_timesteps))
            if step is not None:
                on_step(step, batch.steps, kwargs.get("latents"))
            return kwargs

        # CPU generators: the same seed gives the same noise on every device.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch.seeds]
        self._configure_vae(batch)
        negatives = list(batch.negative_prompts) if any(batch.negative_prompts) else None
        # SDXL casts its VAE to float32 for the decode and back after it; an
        # exception in between (an out-of-memory at that peak) must not leave it so.
        with torch.inference_mode(), component_dtypes_kept(self._pipeline):
            result = self._pipeline(
                prompt=list(batch.prompts),
                negative_prompt=negatives,
                width=batch.width,
                height=batch.height,
                num_inference_steps=batch.steps,
                guidance_scale=batch.guidance_scale,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"] if batch.want_latents else [],
                output_type="pil",
            )
        return list(result.images)

    def _configure_vae(self, batch: PipelineBatch) -> None:
        vae = getattr(self._pipeline, "vae", None)
        if vae is None:
            return
        if hasattr(vae, "enable_slicing"):
            if self._settings.vae_slicing:
                vae.enable_slicing()
            else:
                vae.disable_slicing()
        threshold = self._settings.vae_tiling_above_pixels
        if hasattr(vae, "enable_tiling"):
            if threshold and batch.width * batch.height > threshold:
                vae.enable_tiling()
            else:
                vae.disable_tiling()


def _pipeline_class(name: str | None) -> Any:
    diffusers = importlib.import_module("diffusers")
    if name is None:
        return diffusers.AutoPipelineForText2Image
    found = getattr(diffusers, name, None)
    if found is None or not hasattr(found, "from_pretrained"):
        raise ValueError(f"diffusers has no pipeline class {name!r}")
    return found


def _without_pipeline_safety_checker(source: str) -> dict[str, Any]:
    """Loading arguments that leave out the pipeline's own safety checker, if it has one.

    Its verdict would blacken flagged images, which then go out as COMPLETE; the
    server's output checker (models/safety.py) alone decides, and reports FILTERED.
    """
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(source)
    if "safety_checker" not in index:
        return {}  # an SDXL-type pipeline: passing it would only draw a warning
    return {"safety_checker": None, "requires_safety_checker": False}


def load_model(settings: ModelSettings, device: str, cache_dir: Path) -> DiffusersModel:
    """Loads the configured model onto `device` (building the tiny test model when unset)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading progress bars mean nothing in a server's log.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    source = resolve_source(settings, cache_dir)
    dtype = resolve_dtype(settings.dtype, device)
    log.info(
        "loading model %s from %s on %s (%s, %s weights)",
        settings.id,
        source,
        device,
        dtype,
        settings.variant or "plain",
    )
    # A variant ("fp16") reads the half-precision files as stored: half the bytes
    # from disk and host memory, no float32 copy to cast.
    variant = {"variant": settings.variant} if settings.variant else {}
    pipeline = _pipeline_class(settings.pipeline).from_pretrained(
        source, dtype=dtype, **variant, **_without_pipeline_safety_checker(source)
    )
    if settings.scheduler is not None:
        scheduler_class = getattr(importlib.import_module("diffusers"), settings.scheduler, None)
        if scheduler_class is None or not hasattr(scheduler_class, "from_config"):
            raise ValueError(f"diffusers has no scheduler class {settings.scheduler!r}")
        config = dict(pipeline.scheduler.config)
        if settings.scheduler == "PNDMScheduler":
            # Stable Diffusion's PNDM skips the Runge-Kutta warm-up (PLMS only);
            # without that, fewer than 4 steps fail (the engine's warm-up takes 2).
            config.setdefault("skip_prk_steps", True)
        pipeline.scheduler = scheduler_class.from_config(config)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    # torch 2 runs attention through scaled_dot_product_attention (flash or
    # memory-efficient kernels on CUDA) with diffusers' default processors.
    return DiffusersModel(pipeline, device, settings)


class PromptTokenizer:
    """Counts prompt tokens for validation; used on the event loop thread only."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        length = getattr(tokenizer, "model_max_length", None)
        # Begin and end of text take two; "unlimited" sentinels mean no bound.
        self.max_tokens = length - 2 if isinstance(length, int) and length < 100_000 else None

    def count(self, text: str) -> int:
        """Tokens `text` takes, special tokens excluded."""
        encoded = self._tokenizer(text, add_special_tokens=False, truncation=False)
        return len(encoded["input_ids"])


def load_tokenizer(settings: ModelSettings, cache_dir: Path) -> PromptTokenizer | None:
    """The model's (first) tokenizer, or None when it has none that loads."""
    from transformers import AutoTokenizer

    source = resolve_source(settings, cache_dir)
    try:
        return PromptTokenizer(AutoTokenizer.from_pretrained(source, subfolder="tokenizer"))
    except (OSError, ValueError) as error:
        log.warning(
            "model %s: no tokenizer (%s); prompts bounded by bytes only",
            settings.id,
            type(error).__name__,
        )
        return None


__all__ = [
    "DiffusersModel",
    "Latents",
    "ModelLoader",
    "ModelRuntime",
    "PipelineBatch",
    "PromptTokenizer",
    "StepCallback",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_source",
]
