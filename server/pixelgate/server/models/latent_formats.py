"""Each model family's latent space, as far as previews need it: a linear map to RGB.

Stable Diffusion 1.x/2.x and SDXL both denoise 4-channel latents, but their VAEs
differ, so a preview through the wrong matrix shows the wrong colours. The
factors are least-squares fits of latent channels to RGB, as ComfyUI's
`latent_formats.py` publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentFormat:
    """How one family's latents map to RGB: rgb = latent_channels @ factors + bias."""

    family: str
    rgb_factors: tuple[tuple[float, float, float], ...]
    """A row per latent channel: its weight in red, green and blue."""
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


SD1_FORMAT = LatentFormat(
    family="sd1",
    rgb_factors=(
        (0.298, 0.207, 0.208),
        (0.187, 0.286, 0.173),
        (-0.158, 0.189, 0.264),
        (-0.184, -0.271, -0.473),
    ),
)
"""Stable Diffusion 1.x and 2.x (the same VAE latent space)."""

SDXL_FORMAT = LatentFormat(
    family="sdxl",
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)
"""Stable Diffusion XL (its own VAE)."""


def latent_format_for(pipeline_name: str, latent_channels: int | None) -> LatentFormat | None:
    """The format of a pipeline class's latents; None where no linear preview is known."""
    if latent_channels != len(SD1_FORMAT.rgb_factors):
        return None
    if "StableDiffusionXL" in pipeline_name:
        return SDXL_FORMAT
    return SD1_FORMAT


__all__ = ["SD1_FORMAT", "SDXL_FORMAT", "LatentFormat", "latent_format_for"]
