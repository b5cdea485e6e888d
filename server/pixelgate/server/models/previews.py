"""Preview frames: a cheap picture of the latents while a job denoises.

Stable Diffusion's 4-channel latents map to RGB well enough through one fixed
linear map (no VAE decode), at 1/8 of the image's size: a glimpse of where the
image is going for the price of a tiny JPEG. Other latent spaces get none.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

# Least-squares fit of Stable Diffusion 1.x/2.x latent channels to RGB.
_LATENT_TO_RGB = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)

PREVIEW_QUALITY = 70


def preview_jpeg(latent: torch.Tensor) -> bytes | None:
    """A small JPEG of one image's latents (channels x h x w); None unless 4 channels."""
    if latent.dim() != 3 or latent.shape[0] != _LATENT_TO_RGB.shape[0]:
        return None
    with torch.inference_mode():
        rgb = torch.einsum("chw,cr->hwr", latent.float().cpu(), _LATENT_TO_RGB)
        pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


__all__ = ["PREVIEW_QUALITY", "preview_jpeg"]
