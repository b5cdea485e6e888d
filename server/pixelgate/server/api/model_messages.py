"""Registered models as ListModels entries: field for field."""

from __future__ import annotations

from pixelgate.server.models.registry import ModelState, RegisteredModel
from pixelgate.v1 import image_service_pb2 as pb

_STATES = {
    ModelState.NOT_LOADED: pb.ModelInfo.STATE_NOT_LOADED,
    ModelState.LOADING: pb.ModelInfo.STATE_LOADING,
    ModelState.READY: pb.ModelInfo.STATE_READY,
    ModelState.FAILED: pb.ModelInfo.STATE_FAILED,
}


def model_info(model: RegisteredModel, is_default: bool) -> pb.ModelInfo:
    """The ListModels entry for `model`: its card, where it runs, how far it has loaded."""
    card = model.card
    return pb.ModelInfo(
        id=card.id,
        description=card.description,
        is_default=is_default,
        is_test_model=card.is_test_model,
        min_size=card.min_size,
        max_width=card.max_width,
        max_height=card.max_height,
        default_width=card.default_width,
        default_height=card.default_height,
        default_steps=card.default_steps,
        max_steps=card.max_steps,
        max_prompt_tokens=card.max_prompt_tokens or 0,
        state=_STATES[model.state],
        load_error=model.error,
        pipeline=model.pipeline_name or model.settings.pipeline or "",
        devices=list(model.devices),
        dtype=model.dtype,
        cost_factor=model.settings.cost_factor,
    )


__all__ = ["model_info"]
