"""Keeping a pipeline's component dtypes across a call, whatever happens in it.

SDXL's pipeline casts a float16 VAE to float32 for the decode (its
`force_upcast`) and back after it. An exception in between, most likely an
out-of-memory at that very peak, would leave the VAE in float32, and every
later call on it fails on mixed dtypes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger("pixelgate.models")


def _modules(pipeline: Any) -> dict[str, torch.nn.Module]:
    components = getattr(pipeline, "components", {})
    return {
        name: component
        for name, component in components.items()
        if isinstance(component, torch.nn.Module)
    }


def _dtype_of(module: torch.nn.Module) -> torch.dtype | None:
    # diffusers' and transformers' models say; a plain torch module by its parameters.
    declared = getattr(module, "dtype", None)
    if isinstance(declared, torch.dtype):
        return declared
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


@contextmanager
def component_dtypes_kept(pipeline: Any) -> Iterator[None]:
    """Runs the block, then casts back every component whose dtype the block changed."""
    before = {name: _dtype_of(module) for name, module in _modules(pipeline).items()}
    try:
        yield
    finally:
        for name, module in _modules(pipeline).items():
            wanted = before.get(name)
            if wanted is not None and _dtype_of(module) != wanted:
                log.warning("restoring %s to %s after an interrupted call", name, wanted)
                module.to(dtype=wanted)


__all__ = ["component_dtypes_kept"]
