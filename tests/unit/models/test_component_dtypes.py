"""A pipeline call that fails half-way leaves every component in the dtype it started with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pixelgate.server.models.component_dtypes import component_dtypes_kept


def _pipeline() -> SimpleNamespace:
    vae = torch.nn.Linear(2, 2).to(torch.float16)
    return SimpleNamespace(components={"vae": vae, "tokenizer": object(), "scheduler": None})


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def test_a_component_upcast_before_a_failure_is_cast_back():
    """The float32 decode upcast, then an out-of-memory: the VAE is float16 again."""
    pipeline = _pipeline()
    with pytest.raises(RuntimeError, match="out of memory"), component_dtypes_kept(pipeline):
        pipeline.components["vae"].to(torch.float32)
        raise RuntimeError("CUDA out of memory")
    assert _dtype(pipeline.components["vae"]) == torch.float16


def test_a_call_that_changes_nothing_leaves_the_components_as_they_are():
    """No failure, no cast: the same parameter tensors stay in place."""
    pipeline = _pipeline()
    weight = pipeline.components["vae"].weight
    with component_dtypes_kept(pipeline):
        pass
    assert pipeline.components["vae"].weight is weight
