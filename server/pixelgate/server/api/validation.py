"""Request validation: every GenerateImage field checked, normalized, defaulted.

All violations are collected, so a caller fixes a request in one round trip;
each names the field and the bound, in the message and as google.rpc.BadRequest
field violations. Prompts are NFC-normalized; one of only whitespace and
invisible characters (zero-width, format, other default-ignorable ones) is
empty; one is refused if it holds control or bidirectional-override characters
(which can make logged or displayed text read differently from what the model
sees), or exceeds the byte or token bound. Nothing here echoes a prompt back.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from collections.abc import Callable, Mapping
from typing import Protocol

from pixelgate.server.api.generation_ask import GenerationAsk
from pixelgate.server.core.config import OutputSettings
from pixelgate.server.core.errors import FieldViolation, NotFound, RequestInvalid
from pixelgate.server.core.generation import GenerationRequest
from pixelgate.server.core.model_card import ModelCard

MAX_GUIDANCE_SCALE = 30.0
MAX_QUALITY = 100
_SEED_SPACE = 2**64


class KnownModel(Protocol):
    """What validation needs of a model: its bounds and its tokenizer."""

    card: ModelCard

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes, special tokens excluded."""
        ...


class RequestValidator:
    """Turns what a caller asked for into a GenerationRequest, or raises."""

    def __init__(
        self,
        models: Mapping[str, KnownModel],
        default_model: str,
        *,
        max_prompt_bytes: int,
        max_images: int,
        output: OutputSettings | None = None,
        random_seed: Callable[[], int] = lambda: secrets.randbits(63),
    ) -> None:
        self._models = models
        self._default_model = default_model
        self._max_prompt_bytes = max_prompt_bytes
        self._max_images = max_images
        self._output = output or OutputSettings()
        self._random_seed = random_seed

    def validate(self, request: GenerationAsk) -> GenerationRequest:
        """Checks every field; raises NotFound (unknown model) or RequestInvalid."""
        model_id = request.model or self._default_model
        model = self._models.get(model_id)
        if model is None:
            raise NotFound("model not found; ListModels shows the available ids")
        card = model.card
        violations: list[FieldViolation] = []

        prompt = self._text("prompt", request.prompt, model, violations, required=True)
        negative = self._text("negative_prompt", request.negative_prompt, model, violations)
        width = _size(
            "width", request.width, card.default_width, card.min_size, card.max_width, violations
        )
        height = _size(
            "height",
            request.height,
            card.default_height,
            card.min_size,
            card.max_height,
            violations,
        )
        steps = request.steps or card.default_steps
        if not 1 <= steps <= card.max_steps:
            violations.append(
                FieldViolation("steps", f"steps must be from 1 to {card.max_steps} (got {steps})")
            )
        guidance = card.default_guidance_scale
        if request.guidance_scale is not None:
            guidance = request.guidance_scale
            if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE_SCALE):
                violations.append(
                    FieldViolation(
                        "guidance_scale", f"guidance_scale must be from 0 to {MAX_GUIDANCE_SCALE:g}"
                    )
                )
        count = request.num_images or 1
        if count > self._max_images:
            violations.append(
                FieldViolation(
                    "num_images", f"num_images must be from 1 to {self._max_images} (got {count})"
                )
            )
        image_format = request.output_format
        if image_format is None:
            violations.append(
                FieldViolation("output_format", "output_format must be PNG, JPEG or WEBP")
            )
        quality = request.quality or self._output.default_quality
        if not 1 <= quality <= MAX_QUALITY:
            violations.append(
                FieldViolation(
                    "quality", f"quality must be from 1 to {MAX_QUALITY} (got {quality})"
                )
            )
        if request.include_metadata and not self._output.allow_metadata:
            violations.append(
                FieldViolation("include_metadata", "include_metadata is turned off on this server")
            )
        preview_every = request.preview_every_steps
        if preview_every and not self._output.allow_previews:
            violations.append(
                FieldViolation("preview_every_steps", "previews are turned off on this server")
            )
        preview_every = (
            max(preview_every, self._output.min_preview_interval_steps) if preview_every else 0
        )
        if violations:
            raise RequestInvalid(violations)
        assert image_format is not None
        seed = request.seed if request.seed is not None else self._random_seed()
        return GenerationRequest(
            model_id=model_id,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance,
            seeds=tuple((seed + i) % _SEED_SPACE for i in range(count)),
            output_format=image_format,
            quality=quality,
            include_metadata=request.include_metadata,
            preview_every=preview_every,
        )

    def _text(
        self,
        field: str,
        value: str,
        model: KnownModel,
        violations: list[FieldViolation],
        *,
        required: bool = False,
    ) -> str:
        text = unicodedata.normalize("NFC", value)
        if _is_blank(text):
            if required:
                violations.append(FieldViolation(field, f"{field} is required"))
            return ""
        size = len(text.encode("utf-8"))
        if size > self._max_prompt_bytes:
            # Checked before tokenizing, so an oversized prompt costs no tokenizer time.
            violations.append(
                FieldViolation(
                    field, f"{field} must be at most {self._max_prompt_bytes} bytes (got {size})"
                )
            )
            return text
        control = next((c for c in text if _is_forbidden(c)), None)
        if control is not None:
            violations.append(
                FieldViolation(
                    field,
                    f"{field} must not contain control or bidi-override characters"
                    f" (found U+{ord(control):04X})",
                )
            )
            return text
        limit = model.card.max_prompt_tokens
        if limit is not None:
            tokens = model.count_tokens(text)
            if tokens > limit:
                violations.append(
                    FieldViolation(
                        field,
                        f"{field} must be at most {limit} tokens for this model (got {tokens})",
                    )
                )
        return text


_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
"""Embeddings, overrides and isolates (LRE..RLO, LRI..PDI): the "Trojan Source" characters."""


_INVISIBLE = frozenset(
    map(
        chr,
        [
            0x034F,  # combining grapheme joiner
            0x115F,  # Hangul fillers
            0x1160,
            0x3164,
            0xFFA0,
            0x17B4,  # Khmer inherent vowels
            0x17B5,
            *range(0x180B, 0x1810),  # Mongolian variation selectors
            *range(0xFE00, 0xFE10),  # variation selectors
            *range(0xE0100, 0xE01F0),
        ],
    )
)
"""Unicode's default-ignorable characters outside category Cf: shown as nothing."""


def _is_blank(text: str) -> bool:
    # Usually decided by the first character; a prompt that renders as nothing is empty.
    for character in text:
        if not (
            character.isspace()
            or character in _INVISIBLE
            or unicodedata.category(character) == "Cf"
        ):
            return False
    return True


def _is_forbidden(character: str) -> bool:
    return unicodedata.category(character) == "Cc" or character in _BIDI_CONTROLS


def _size(
    field: str,
    value: int,
    default: int,
    low: int,
    high: int,
    violations: list[FieldViolation],
) -> int:
    size = value or default
    if size % 8 or not low <= size <= high:
        violations.append(
            FieldViolation(
                field, f"{field} must be a multiple of 8 from {low} to {high} (got {size})"
            )
        )
    return size


__all__ = ["FieldViolation", "KnownModel", "RequestInvalid", "RequestValidator"]
