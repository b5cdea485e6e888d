"""A model's card: its id, description and the request bounds it accepts.

Shared by the model registry (which builds cards) and request validation
(which checks requests against them), so it lives here, free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelgate.server.core.config import ModelSettings


@dataclass(frozen=True)
class ModelCard:
    """A model's id, description and the request bounds it accepts."""

    id: str
    description: str
    is_test_model: bool
    min_size: int
    max_width: int
    max_height: int
    default_width: int
    default_height: int
    default_steps: int
    max_steps: int
    default_guidance_scale: float
    max_prompt_tokens: int | None
    """Tokens the text encoder reads, special tokens excluded; None = no tokenizer bound."""

    @classmethod
    def of(cls, settings: ModelSettings, max_prompt_tokens: int | None) -> ModelCard:
        """The card for a configured model."""
        return cls(
            id=settings.id,
            description=settings.description,
            is_test_model=settings.is_test_model,
            min_size=settings.min_size,
            max_width=settings.max_width,
            max_height=settings.max_height,
            default_width=settings.default_width,
            default_height=settings.default_height,
            default_steps=settings.default_steps,
            max_steps=settings.max_steps,
            default_guidance_scale=settings.default_guidance_scale,
            max_prompt_tokens=max_prompt_tokens,
        )


__all__ = ["ModelCard"]
