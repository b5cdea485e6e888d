"""The embedded test model: a tiny Stable-Diffusion-shaped pipeline, random weights.

Built from configs (no download), saved with `save_pretrained` to the cache on
first use, then loaded through `from_pretrained` like any real model, so the
real loading path is what tests and `make serve` exercise. Its images are
noise-like patterns; a 64x64, 10-step image takes well under a second on a CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("pixelgate.models")

TINY_MODEL_NAME = "tiny-sd-v2"
"""Bump when the architecture below changes, so caches rebuild."""


def _byte_to_unicode() -> dict[int, str]:
    # The byte-level BPE alphabet (as in GPT-2/CLIP): every byte maps to a
    # printable character, so any UTF-8 text tokenizes without unknown tokens.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def write_tokenizer_files(directory: Path) -> int:
    """Writes a byte-level CLIP vocab.json and an empty merges.txt; returns the vocab size."""
    symbols = list(_byte_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": len(symbols) + i for i, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def tiny_text_config(vocab_size: int, **extra: Any) -> Any:
    """A tiny CLIP text encoder's config for the byte-level vocabulary (`extra`: e.g. the
    projection size of SDXL's second encoder)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **extra,
    )


def tiny_vae(*, force_upcast: bool = True) -> Any:
    """A tiny random AutoencoderKL with Stable Diffusion's shape: four blocks, so the
    latent is 1/8 of the image, four latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        force_upcast=force_upcast,
    )


def _build(directory: Path) -> None:
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer_dir = directory / "_tokenizer_source"
    tokenizer_dir.mkdir()
    vocab_size = write_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=77
    )
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
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = tiny_vae()
        text_encoder = CLIPTextModel(tiny_text_config(vocab_size))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    shutil.rmtree(tokenizer_dir)
    pipeline.save_pretrained(str(directory))


def ensure_tiny_model(cache_dir: Path) -> Path:
    """The tiny model's directory under `cache_dir`, built and saved there if missing."""
    return ensure_built(cache_dir / "models" / TINY_MODEL_NAME, _build)


def ensure_built(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, a saved pipeline that `build` writes there (atomically) if missing."""
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny test model in %s", target)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)  # atomic: readers see no half-written model
        except OSError:
            if not (target / "model_index.json").is_file():
                raise  # not a lost race with another builder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = ["TINY_MODEL_NAME", "ensure_built", "ensure_tiny_model", "write_tokenizer_files"]
