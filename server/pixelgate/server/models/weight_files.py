"""Which weight files loading a model will read, and their size: the memory guard's figure
for a model not loaded yet.

A diffusers snapshot often holds more than one load reads: fp32 and fp16
variants side by side, .bin copies of .safetensors files, single-file
checkpoints at its root, the pipeline's own safety checker (which the server
does not load). Summing them all overstates a model several times, and a lazy
model can be refused for good. This counts, per component folder named in
model_index.json, the files of the configured variant (or the plain ones when
the folder has no such variant), in the one format diffusers picks
(safetensors when present).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SHARD = re.compile(r"-\d{5}-of-\d{5}")
SKIPPED_COMPONENTS = frozenset({"safety_checker"})
"""Components the loader passes as None: the server runs its own checker."""


def _variant_of(path: Path) -> str | None:
    # "diffusion_pytorch_model.fp16-00001-of-00002.safetensors" -> "fp16"; plain names -> None.
    stem = _SHARD.sub("", path.name.removesuffix(path.suffix))
    _, dot, variant = stem.rpartition(".")
    return variant if dot else None


def _component_files(folder: Path, variant: str | None) -> list[Path]:
    weights = [
        path for path in folder.iterdir() if path.is_file() and path.suffix in _WEIGHT_SUFFIXES
    ]
    chosen = [path for path in weights if variant is not None and _variant_of(path) == variant]
    if not chosen:  # no such variant here: diffusers reads the plain files
        chosen = [path for path in weights if _variant_of(path) is None]
    safetensors = [path for path in chosen if path.suffix == ".safetensors"]
    return safetensors or chosen


def _components(root: Path) -> list[Path]:
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    return [
        root / name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and value[0] is not None
        and name not in SKIPPED_COMPONENTS
        and (root / name).is_dir()
    ]


def weights_to_load(source: str, variant: str | None = None) -> int:
    """Bytes of the weight files loading `source` with `variant` reads (0 for a hub id)."""
    root = Path(source)
    if not root.is_dir():
        return 0
    # A diffusers pipeline reads its component folders; files at its root (single-file
    # checkpoints) are not part of that load. Any other folder is one component.
    folders = _components(root) if (root / "model_index.json").is_file() else [root]
    return sum(
        path.stat().st_size for folder in folders for path in _component_files(folder, variant)
    )


__all__ = ["SKIPPED_COMPONENTS", "weights_to_load"]
