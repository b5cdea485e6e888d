"""A tiny SDXL-shaped pipeline with random weights, for tests of SDXL-only behaviour.

Two text encoders (the second with a projection, whose pooled output joins the
time ids in the UNet's "text_time" added embedding), a VAE with `force_upcast`
and Euler: the parts of Stable Diffusion XL whose behaviour differs from 1.5
(zeroed empty negative prompts, the float32 VAE upcast). Built from configs,
saved, and loaded back through `from_pretrained` like the tiny SD model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pixelgate.server.models.tiny_model import (
    ensure_built,
    tiny_text_config,
    tiny_vae,
    write_tokenizer_files,
)

TINY_SDXL_NAME = "tiny-sdxl-v1"
"""Bump when the architecture below changes, so caches rebuild."""

_HIDDEN = 32
_TIME_EMBED = 8
_TIME_IDS = 6  # original size, crop corner, target size: two numbers each


def _build(directory: Path) -> None:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer_dir = directory / "_tokenizer_source"
    tokenizer_dir.mkdir()
    vocab_size = write_tokenizer_files(tokenizer_dir)
    tokenizers = [
        CLIPTokenizer(
            str(tokenizer_dir / "vocab.json"),
            str(tokenizer_dir / "merges.txt"),
            model_max_length=77,
        )
        for _ in range(2)
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights on every machine
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            # Both encoders' hidden states, concatenated.
            cross_attention_dim=2 * _HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED,
            # The time ids' embeddings plus the second encoder's pooled projection.
            projection_class_embeddings_input_dim=_TIME_IDS * _TIME_EMBED + _HIDDEN,
            norm_num_groups=32,
        )
        vae = tiny_vae(force_upcast=True)  # as SDXL's VAE: decoded in float32 under float16
        text_encoder = CLIPTextModel(tiny_text_config(vocab_size, projection_dim=_HIDDEN))
        text_encoder_2 = CLIPTextModelWithProjection(
            tiny_text_config(vocab_size, projection_dim=_HIDDEN)
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    shutil.rmtree(tokenizer_dir)
    pipeline.save_pretrained(str(directory))


def ensure_tiny_sdxl(cache_dir: Path) -> Path:
    """The tiny SDXL model's directory under `cache_dir`, built and saved there if missing."""
    return ensure_built(cache_dir / "models" / TINY_SDXL_NAME, _build)


__all__ = ["TINY_SDXL_NAME", "ensure_tiny_sdxl"]
