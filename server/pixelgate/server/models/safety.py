"""Content safety hooks: a prompt denylist and an output checker, both optional.

A prompt matching the denylist never reaches the GPU; an image the output
checker flags is never sent. Either way the caller gets FINISH_REASON_FILTERED
for the image, with no bytes. The output checker can be diffusers' Stable
Diffusion safety checker (CLIP-based); each worker loads its own copy onto
its device, as it does its pipelines.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("pixelgate.safety")


def _normalized(text: str) -> str:
    # Compatibility forms, case and spacing cannot smuggle a phrase past the list.
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", folded).strip()


class PromptDenylist:
    """Phrases that block a prompt: case-insensitive, whole words, spacing ignored."""

    def __init__(self, phrases: Iterable[str]) -> None:
        words = sorted({_normalized(p) for p in phrases if _normalized(p)}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b") if words else None
        )

    @classmethod
    def from_settings(cls, phrases: Sequence[str], path: Path | None) -> PromptDenylist:
        """The configured phrases plus those of the file, one per line (# comments)."""
        extra: list[str] = []
        if path is not None:
            lines = path.read_text(encoding="utf-8").splitlines()
            extra = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls([*phrases, *extra])

    def blocks(self, *texts: str) -> bool:
        """True when any of `texts` holds a listed phrase."""
        if self._pattern is None:
            return False
        return any(self._pattern.search(_normalized(text)) for text in texts)


class OutputChecker(Protocol):
    """Looks at finished images; called from one worker thread."""

    def flagged(self, images: Sequence[Image.Image]) -> list[bool]:
        """True for each image that must not be sent."""
        ...


class DiffusersSafetyChecker:
    """diffusers' StableDiffusionSafetyChecker with its CLIP feature extractor, on one device."""

    def __init__(self, source: str, device: str) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        self._device = device
        self._extractor = CLIPImageProcessor.from_pretrained(source)
        self._checker = StableDiffusionSafetyChecker.from_pretrained(source).to(device).eval()

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


def output_checker(kind: str, source: str, device: str) -> OutputChecker:
    """The configured checker, loaded for `device`."""
    if kind == "diffusers":
        log.info("loading the safety checker from %s on %s", source, device)
        return DiffusersSafetyChecker(source, device)
    return NoChecker()


CheckerFactory = Callable[[str], OutputChecker]
"""Loads the output checker for a device."""

__all__ = [
    "CheckerFactory",
    "DiffusersSafetyChecker",
    "NoChecker",
    "OutputChecker",
    "PromptDenylist",
    "output_checker",
]
