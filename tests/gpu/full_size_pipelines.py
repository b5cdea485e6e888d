"""Random-weight Stable Diffusion 1.5 and SDXL pipelines at their real sizes, from configs.

The configs are those of the published models (runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0: UNet, VAE, CLIP text encoders), so
memory and speed are those of the real models; the weights are random, the
images noise. `scale="tiny"` shrinks every width and depth (same structure) so
the script itself can be checked on a CPU.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelgate.server.models.tiny_model import write_tokenizer_files


@dataclass(frozen=True)
class Family:
    """One model family as the GPU report runs it."""

    name: str
    pipeline: str
    scheduler: str
    width: int
    height: int
    steps: int


SD15 = Family("sd15", "StableDiffusionPipeline", "PNDMScheduler", 512, 512, 20)
SDXL = Family("sdxl", "StableDiffusionXLPipeline", "EulerDiscreteScheduler", 1024, 1024, 20)


def _unet_sd15(tiny: bool) -> dict[str, Any]:
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1 if tiny else 2,
        "block_out_channels": (32, 32, 64, 64) if tiny else (320, 640, 1280, 1280),
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "cross_attention_dim": 32 if tiny else 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def _unet_sdxl(tiny: bool) -> dict[str, Any]:
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1 if tiny else 2,
        "block_out_channels": (32, 64, 64) if tiny else (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 1) if tiny else (1, 2, 10),
        "attention_head_dim": (2, 4, 4) if tiny else (5, 10, 20),
        "cross_attention_dim": 64 if tiny else 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8 if tiny else 256,
        "projection_class_embeddings_input_dim": (6 * 8 + 32) if tiny else 2816,
        "norm_num_groups": 32,
    }


def _vae(tiny: bool, *, sdxl: bool) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 32, 32) if tiny else (128, 256, 512, 512),
        "layers_per_block": 1 if tiny else 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 1024 if sdxl else 512,
        "scaling_factor": 0.13025 if sdxl else 0.18215,
        "force_upcast": sdxl,  # SDXL's VAE overflows in float16: diffusers decodes in fp32
    }


def _clip_l(tiny: bool, vocab_size: int) -> dict[str, Any]:
    """CLIP ViT-L/14's text tower (SD1.5's encoder, SDXL's first)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32 if tiny else 768,
        "intermediate_size": 37 if tiny else 3072,
        "num_hidden_layers": 2 if tiny else 12,
        "num_attention_heads": 4 if tiny else 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 32 if tiny else 768,
    }


def _clip_big_g(tiny: bool, vocab_size: int) -> dict[str, Any]:
    """OpenCLIP ViT-bigG/14's text tower (SDXL's second encoder, with projection)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32 if tiny else 1280,
        "intermediate_size": 37 if tiny else 5120,
        "num_hidden_layers": 2 if tiny else 32,
        "num_attention_heads": 4 if tiny else 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 32 if tiny else 1280,
    }


def _tokenizer(directory: Path) -> tuple[Any, int]:
    from transformers import CLIPTokenizer

    vocab_size = write_tokenizer_files(directory)
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    return tokenizer, vocab_size


def build_and_save(family: Family, target: Path, *, device: str, scale: str = "full") -> Path:
    """Builds `family` with random weights on `device` in float16 (float32 on a CPU) and saves
    it with the fp16 variant's file names, as hub snapshots ship them."""
    import diffusers
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    tiny = scale == "tiny"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    sdxl = family is SDXL
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, vocab_size = _tokenizer(Path(scratch))
        # Built on the device: a random init of 3.5 billion parameters on a CPU takes minutes.
        with torch.device(device):
            torch.manual_seed(0)
            unet = diffusers.UNet2DConditionModel(**(_unet_sdxl if sdxl else _unet_sd15)(tiny))
            vae = diffusers.AutoencoderKL(**_vae(tiny, sdxl=sdxl))
            text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_l(tiny, vocab_size)))
            scheduler_config = {
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000,
                "steps_offset": 1,
            }
            if sdxl:
                text_encoder_2 = CLIPTextModelWithProjection(
                    CLIPTextConfig(**_clip_big_g(tiny, vocab_size))
                )
                pipeline = diffusers.StableDiffusionXLPipeline(
                    vae=vae,
                    text_encoder=text_encoder,
                    text_encoder_2=text_encoder_2,
                    tokenizer=tokenizer,
                    tokenizer_2=tokenizer,
                    unet=unet,
                    scheduler=diffusers.EulerDiscreteScheduler(**scheduler_config),
                )
            else:
                pipeline = diffusers.StableDiffusionPipeline(
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                    unet=unet,
                    scheduler=diffusers.PNDMScheduler(skip_prk_steps=True, **scheduler_config),
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
        pipeline.to(dtype=dtype)
        pipeline.save_pretrained(str(target), variant="fp16")
    del pipeline
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return target


__all__ = ["SD15", "SDXL", "Family", "build_and_save"]
