"""Device memory: what the engine asks of a device, with torch kept behind this module.

Only CUDA devices keep allocator statistics and a cache; on any other device
these calls do nothing (and read nothing). Each function and `DeviceMemory`
take the `torch.cuda` they talk to, so that tests can hand them a fake.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import torch

from pixelgate.server.core.config import EngineSettings

_MIB = 1024 * 1024
AUTO_BUDGET_SHARE = 0.95
"""Share of the smallest GPU's free memory at start-up the "auto" budget allows (the rest:
fragmentation). Free memory already leaves out the CUDA context and other processes."""

_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",  # "CUDA out of memory" (torch < 2.5 raises a bare RuntimeError), "HIP ..."
    "CUBLAS_STATUS_ALLOC_FAILED",  # cuBLAS could not allocate its workspace
    "CUDNN_STATUS_ALLOC_FAILED",
)


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    # torch.OutOfMemoryError is new in torch 2.5; torch.cuda's has been there since 1.13.
    found = {
        getattr(torch, "OutOfMemoryError", None),
        getattr(torch.cuda, "OutOfMemoryError", None),
    }
    return (MemoryError, *(kind for kind in found if isinstance(kind, type)))


def is_out_of_memory(error: BaseException) -> bool:
    """True when `error` says the device (or the host) ran out of memory, on any torch version."""
    if isinstance(error, _out_of_memory_types()):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error).lower()
    return any(marker.lower() in message for marker in _OUT_OF_MEMORY_MESSAGES)


def module_bytes(holder: object) -> int:
    """Bytes of the parameters and buffers of every torch module `holder` is or keeps as an
    attribute (0 for an object with none, such as a checker that checks nothing)."""
    modules = [holder] if isinstance(holder, torch.nn.Module) else []
    modules += [
        value
        for value in getattr(holder, "__dict__", {}).values()
        if isinstance(value, torch.nn.Module)
    ]
    return sum(
        tensor.numel() * tensor.element_size()
        for module in modules
        for tensor in (*module.parameters(), *module.buffers())
    )


class DeviceMemory:
    """One device's allocator: peak measurement, what is really free, and releasing the cache."""

    def __init__(self, cuda: Any = torch.cuda) -> None:
        self._cuda = cuda

    def reset_peak(self, device: str) -> None:
        """Starts a fresh peak-memory measurement on `device`."""
        if _is_cuda(device):
            self._cuda.reset_peak_memory_stats(device)

    def peak_bytes(self, device: str) -> int | None:
        """Peak bytes allocated on `device` since the last reset; None where it is not measured."""
        if not _is_cuda(device):
            return None
        return int(self._cuda.max_memory_allocated(device))

    def allocated_bytes(self, device: str) -> int | None:
        """Bytes tensors hold on `device` now; None where it is not measured (the CPU)."""
        if not _is_cuda(device):
            return None
        return int(self._cuda.memory_allocated(device))

    def free_bytes(self, device: str) -> int | None:
        """Bytes a new allocation could get now: the driver's free memory (after the CUDA context
        and other processes) plus the allocator's cached, unused blocks; None off CUDA."""
        if not _is_cuda(device):
            return None
        free, _total = self._cuda.mem_get_info(device)
        cached = self._cuda.memory_reserved(device) - self._cuda.memory_allocated(device)
        return int(free + max(cached, 0))

    def release(self, device: str) -> None:
        """Hands `device`'s cached blocks back, so that the next call starts from a clean slate.

        Call it outside any `except` block: a live traceback keeps the failed call's tensors.
        """
        if not _is_cuda(device):
            return
        gc.collect()  # frames of the failed call can sit in reference cycles
        with self._cuda.device(device):  # empty_cache() acts on the current device only
            self._cuda.empty_cache()


def memory_budget(
    settings: EngineSettings, devices: Sequence[str], cuda: Any = torch.cuda
) -> int | None:
    """The per-device memory budget in bytes ("auto": 95% of the smallest GPU's free memory
    at start-up; none on CPU)."""
    if settings.memory_budget_mb is None:
        return None
    if settings.memory_budget_mb == "auto":
        gpus = [device for device in devices if _is_cuda(device)]
        if not gpus:
            return None
        smallest = min(int(cuda.mem_get_info(gpu)[0]) for gpu in gpus)
        return int(smallest * AUTO_BUDGET_SHARE)
    return int(settings.memory_budget_mb * _MIB)


__all__ = [
    "AUTO_BUDGET_SHARE",
    "DeviceMemory",
    "is_out_of_memory",
    "memory_budget",
    "module_bytes",
]
