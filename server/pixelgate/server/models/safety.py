"""The output checker (optional): an image it flags is never sent.

The caller gets FINISH_REASON_FILTERED for the image, with no bytes. The
checker can be diffusers' Stable Diffusion safety checker (CLIP-based); each
worker loads its own copy onto its device, as it does its pipelines. (Prompts
are screened before they reach a GPU: engine/prompt_denylist.py.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("pixelgate.safety")


class OutputChecker(Protocol):
    """Looks at finished images; called from one worker thread."""

    def flagged(self, images: Sequence[Image.Image]) -> list[bool]:
        """True for each image that must not be sent."""
        ...


class DiffusersSafetyChecker:
    """diffusers' StableDiffusionSafetyChecker with its CLIP feature extractor, on one device.

    `source` is a checker repository or a local pipeline directory that ships one
    (Stable Diffusion 1.x's): its verdict maps to FILTERED, never to a black image.
    """

    def __init__(self, source: str, device: str, dtype: torch.dtype = torch.float32) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        self._device = device
        # A pipeline's own directory holds them in subfolders (the server loads the
        # pipeline without them); a checker repository holds them at its root.
        within_pipeline = (Path(source) / "safety_checker" / "config.json").is_file()
        self._extractor = CLIPImageProcessor.from_pretrained(
            source, subfolder="feature_extractor" if within_pipeline else ""
        )
        self._checker = (
            StableDiffusionSafetyChecker.from_pretrained(
                source, subfolder="safety_checker" if within_pipeline else ""
            )
            .to(device, dtype)
            .eval()
        )

    def flagged(self, images: Sequence[Image.Image]) -> list[bool]:
        if not images:
            return []
        features = self._extractor(list(images), return_tensors="pt").pixel_values
        arrays = np.stack(
            [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
        )
        with torch.inference_mode():
            _, has_nsfw = self._checker(
                images=arrays, clip_input=features.to(self._device, self._checker.dtype)
            )
        return [bool(flag) for flag in has_nsfw]


class NoChecker:
    """Flags nothing (no output checker configured)."""

    def flagged(self, images: Sequence[Image.Image]) -> list[bool]:
        return [False] * len(images)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def output_checker(kind: str, source: str, device: str, dtype: str = "float32") -> OutputChecker:
    """The configured checker, loaded for `device` in `dtype` (the model's: half the memory
    and tensor-core speed on a GPU beside a float16 model)."""
    if kind == "diffusers":
        log.info("loading the safety checker from %s on %s (%s)", source, device, dtype)
        return DiffusersSafetyChecker(source, device, _DTYPES.get(dtype, torch.float32))
    return NoChecker()


class CheckerFactory(Protocol):
    """Loads the output checker for a device, in a dtype ("float16", "float32")."""

    def __call__(self, device: str, dtype: str) -> OutputChecker:
        """The checker, on `device`."""
        ...


__all__ = [
    "CheckerFactory",
    "DiffusersSafetyChecker",
    "NoChecker",
    "OutputChecker",
    "output_checker",
]
