"""The `variant` setting: "fp16" reads the half-precision weight files, not the plain ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_pipelines import tiny_model_entry

from pixelgate.server.core.config import ModelSettings
from pixelgate.server.models.runtime import load_model
from pixelgate.server.models.tiny_model import ensure_tiny_model
from pixelgate.server.models.weight_files import weights_to_load

FP16_MARK = 0.25
"""conv_in's weights in the fp16 files only: which files were read shows in the model."""


def _save_tiny(model_cache: Path, target: Path, *, plain: bool) -> Path:
    """The tiny model saved with fp16 variant files (and, when `plain`, fp32 ones beside)."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        str(ensure_tiny_model(model_cache)), safety_checker=None, requires_safety_checker=False
    )
    if plain:
        pipeline.save_pretrained(str(target))
    pipeline.to(torch.float16)
    with torch.no_grad():
        pipeline.unet.conv_in.weight.fill_(FP16_MARK)
    pipeline.save_pretrained(str(target), variant="fp16")
    return target


@pytest.fixture(scope="module")
def both_variants(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot as hub repositories ship it: fp32 files and fp16 ones side by side."""
    return _save_tiny(model_cache, tmp_path_factory.mktemp("both"), plain=True)


@pytest.fixture(scope="module")
def fp16_only(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot downloaded with only the fp16 files."""
    return _save_tiny(model_cache, tmp_path_factory.mktemp("fp16-only"), plain=False)


def _conv_in(source: Path, variant: str | None) -> torch.Tensor:
    settings = ModelSettings(**tiny_model_entry(source, variant=variant, dtype="float32"))
    model = load_model(settings, "cpu", Path("/nonexistent"))
    return model._pipeline.unet.conv_in.weight


def test_variant_fp16_reads_the_fp16_files(both_variants: Path) -> None:
    """With fp32 and fp16 files side by side, variant "fp16" loads the fp16 weights."""
    assert torch.all(_conv_in(both_variants, "fp16") == FP16_MARK)


def test_no_variant_reads_the_plain_files(both_variants: Path) -> None:
    """Unset, the plain (fp32) files are read, as before the setting existed."""
    assert not torch.all(_conv_in(both_variants, None) == FP16_MARK)


def test_a_snapshot_with_only_fp16_files_needs_the_variant(fp16_only: Path) -> None:
    """Only fp16 files on disk: the variant loads them; without it the load fails, naming
    the missing file (not a silent random initialisation)."""
    assert torch.all(_conv_in(fp16_only, "fp16") == FP16_MARK)
    with pytest.raises(OSError, match="no file named"):
        _conv_in(fp16_only, None)


def test_the_weights_estimate_counts_only_the_variant_read(both_variants: Path) -> None:
    """The memory estimate before loading counts the fp16 files (about half the fp32 ones)."""
    fp16 = weights_to_load(str(both_variants), "fp16")
    plain = weights_to_load(str(both_variants), None)
    assert 0 < fp16 < plain * 0.6
