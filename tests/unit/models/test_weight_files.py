"""The size estimate of a model not loaded yet counts only the files its load reads."""

from __future__ import annotations

import json
from pathlib import Path

from pixelgate.server.models.weight_files import weights_to_load

MB = 1_000_000


def _file(path: Path, size: int) -> None:
    # Sparse: the estimate reads sizes, never contents.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)


def _sdxl_snapshot(root: Path) -> Path:
    """An SDXL-like snapshot: fp32 and fp16 variants, .bin copies, a root checkpoint."""
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "image_encoder": [None, None],
    }
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    _file(root / "sd_xl_base_1.0.safetensors", 6900 * MB)
    _file(root / "sd_xl_base_1.0_0.9vae.safetensors", 6900 * MB)
    _file(root / "unet/diffusion_pytorch_model.safetensors", 10_200 * MB)
    _file(root / "unet/diffusion_pytorch_model.fp16.safetensors", 5100 * MB)
    _file(root / "unet/diffusion_pytorch_model.bin", 10_200 * MB)
    _file(root / "vae/diffusion_pytorch_model.safetensors", 330 * MB)
    _file(root / "vae/diffusion_pytorch_model.fp16.safetensors", 165 * MB)
    _file(root / "text_encoder/model.safetensors", 490 * MB)
    _file(root / "text_encoder/model.fp16.safetensors", 245 * MB)
    _file(root / "text_encoder_2/model.fp16-00001-of-00002.safetensors", 700 * MB)
    _file(root / "text_encoder_2/model.fp16-00002-of-00002.safetensors", 690 * MB)
    _file(root / "text_encoder_2/model-00001-of-00002.safetensors", 1400 * MB)
    _file(root / "text_encoder_2/model-00002-of-00002.safetensors", 1380 * MB)
    _file(root / "safety_checker/model.safetensors", 1200 * MB)
    (root / "tokenizer").mkdir()
    (root / "scheduler").mkdir()
    return root


def test_an_fp16_load_counts_the_fp16_files_of_each_component(tmp_path: Path) -> None:
    """variant fp16: each component's fp16 safetensors (shards too), nothing at the root, no
    fp32 copies, no .bin copies, not the pipeline's safety checker (not loaded)."""
    root = _sdxl_snapshot(tmp_path / "sdxl")

    assert weights_to_load(str(root), "fp16") == (5100 + 165 + 245 + 700 + 690) * MB


def test_a_load_without_variant_counts_the_plain_files(tmp_path: Path) -> None:
    """No variant: the plain safetensors of each component (not the .bin copy beside them)."""
    root = _sdxl_snapshot(tmp_path / "sdxl")

    assert weights_to_load(str(root)) == (10_200 + 330 + 490 + 1400 + 1380) * MB


def test_a_component_without_the_variant_counts_its_plain_files(tmp_path: Path) -> None:
    """Where a component has no fp16 file, diffusers reads its plain one, and so does the count."""
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "model_index.json").write_text(
        json.dumps({"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "X"]})
    )
    _file(root / "unet/diffusion_pytorch_model.fp16.safetensors", 50 * MB)
    _file(root / "unet/diffusion_pytorch_model.safetensors", 100 * MB)
    _file(root / "vae/diffusion_pytorch_model.bin", 30 * MB)

    assert weights_to_load(str(root), "fp16") == (50 + 30) * MB


def test_a_hub_id_counts_nothing(tmp_path: Path) -> None:
    """A source that is no local folder has no files to count yet."""
    assert weights_to_load("stabilityai/stable-diffusion-xl-base-1.0", "fp16") == 0
