"""Device memory: what the engine asks of a device, with torch kept behind this module.

Only CUDA devices keep allocator statistics and a cache; on any other device
these calls do nothing (and read nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelgate.server.core.config import EngineSettings

_MIB = 1024 * 1024
AUTO_BUDGET_SHARE = 0.9
"""Share of the smallest GPU's memory the "auto" budget allows (the rest: context, fragments)."""


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def is_out_of_memory(error: BaseException) -> bool:
    """True when `error` says the device (or the host) ran out of memory."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError))


def reset_peak_memory(device: str) -> None:
    """Starts a fresh peak-memory measurement on `device`."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: str) -> int | None:
    """Peak bytes allocated on `device` since the last reset; None where it is not measured."""
    if not _is_cuda(device):
        return None
    return int(torch.cuda.max_memory_allocated(device))


def release_cached_memory(device: str) -> None:
    """Hands the allocator's cached blocks back, so that the next call starts from a clean slate."""
    if _is_cuda(device):
        torch.cuda.empty_cache()


def memory_budget(settings: EngineSettings, devices: Sequence[str]) -> int | None:
    """The per-device memory budget in bytes ("auto": 90% of the smallest GPU; none on CPU)."""
    if settings.memory_budget_mb is None:
        return None
    if settings.memory_budget_mb == "auto":
        gpus = [device for device in devices if _is_cuda(device)]
        if not gpus:
            return None
        smallest = min(torch.cuda.get_device_properties(gpu).total_memory for gpu in gpus)
        return int(smallest * AUTO_BUDGET_SHARE)
    return int(settings.memory_budget_mb * _MIB)


__all__ = [
    "is_out_of_memory",
    "memory_budget",
    "peak_memory_bytes",
    "release_cached_memory",
    "reset_peak_memory",
]
