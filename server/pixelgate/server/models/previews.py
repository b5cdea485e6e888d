"""Preview frames: a cheap picture of the latents while a job denoises.

4-channel latents map to RGB well enough through their family's fixed linear
map (no VAE decode), at 1/8 of the image's size. The denoising thread only
takes a snapshot (an asynchronous device-to-host copy and an event marking it
done, no wait); the matrix product and the JPEG are made on another thread,
which waits for that event, so the GPU never stalls for a preview.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pixelgate.server.models.latent_formats import LatentFormat

PREVIEW_QUALITY = 70


@dataclass(frozen=True)
class LatentSnapshot:
    """One image's latents (channels x h x w) copied to the host, ready once `ready` fires."""

    latent: torch.Tensor
    ready: Any = None
    """A CUDA event recorded after the copy; None when the copy was already complete."""


def snapshot_latent(latent: torch.Tensor) -> LatentSnapshot:
    """Starts copying `latent` to the host; never waits for the device."""
    copy = latent.detach().to("cpu", non_blocking=True, copy=True)
    ready = None
    if latent.is_cuda:
        # The copy is queued on the current stream (into pinned memory); the event
        # tells the encoding thread when its bytes are there.
        ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
        ready.record()
    return LatentSnapshot(copy, ready)


def preview_jpeg(snapshot: LatentSnapshot, latent_format: LatentFormat) -> bytes | None:
    """A small JPEG of a snapshot through its family's matrix; None if the shapes disagree."""
    factors = torch.tensor(latent_format.rgb_factors)
    latent = snapshot.latent
    if latent.dim() != 3 or latent.shape[0] != factors.shape[0]:
        return None
    if snapshot.ready is not None:
        snapshot.ready.synchronize()  # this thread waits, the GPU does not
    with torch.inference_mode():
        rgb = torch.einsum("chw,cr->hwr", latent.float(), factors)
        rgb += torch.tensor(latent_format.rgb_bias)
        pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


__all__ = ["PREVIEW_QUALITY", "LatentSnapshot", "preview_jpeg", "snapshot_latent"]
