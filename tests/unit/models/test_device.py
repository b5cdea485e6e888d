"""Device memory: out-of-memory is recognised on every torch version, and the cache is released
on the failing device only; the "auto" budget is what is really free."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fake_cuda import GIB, FakeCuda

from pixelgate.server.core.config import EngineSettings
from pixelgate.server.models.device import (
    AUTO_BUDGET_SHARE,
    DeviceMemory,
    is_out_of_memory,
    memory_budget,
    module_bytes,
)
from pixelgate.server.models.safety import NoChecker


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        # torch < 2.5 without the typed error, and failures outside the caching allocator:
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        MemoryError(),
    ],
    ids=["typed", "message", "cuda-error", "cublas", "host"],
)
def test_out_of_memory_is_recognised_by_type_or_by_message(error: BaseException) -> None:
    """Every way torch reports running out of memory is treated as out of memory."""
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("out of range")],
)
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    """A real bug is not retried as if memory had run short."""
    assert not is_out_of_memory(error)


def test_release_empties_the_cache_of_the_failing_device_only() -> None:
    """empty_cache() acts on the current device: release() runs it under the failing one."""
    cuda = FakeCuda({"cuda:0": GIB, "cuda:1": GIB})

    DeviceMemory(cuda).release("cuda:1")
    DeviceMemory(cuda).release("cpu")

    assert cuda.emptied == ["cuda:1"]
    assert cuda.current == "cuda:0"


def test_free_memory_is_the_drivers_free_plus_the_unused_cache() -> None:
    """What a new allocation can get: the driver's free memory and the allocator's cached,
    unused blocks; nothing is measured off CUDA."""
    cuda = FakeCuda({"cuda:0": 10 * GIB})
    cuda.reserved, cuda.allocated = 6 * GIB, 4 * GIB

    assert DeviceMemory(cuda).free_bytes("cuda:0") == 12 * GIB
    assert DeviceMemory(cuda).free_bytes("cpu") is None


def test_the_auto_budget_is_what_the_smallest_gpu_really_has_free() -> None:
    """Not a share of the total: the CUDA context and other processes' memory are not ours."""
    cuda: Any = FakeCuda({"cuda:0": 70 * GIB, "cuda:1": 50 * GIB}, total=80 * GIB)

    budget = memory_budget(EngineSettings(), ["cuda:0", "cuda:1"], cuda)

    assert budget == int(50 * GIB * AUTO_BUDGET_SHARE)
    assert memory_budget(EngineSettings(), ["cpu"], cuda) is None


def test_a_checkers_weights_are_the_modules_it_keeps() -> None:
    """The memory guard learns a checker's resident bytes from the torch modules it holds; a
    checker that checks nothing holds none."""

    class Checker:
        def __init__(self) -> None:
            self._model = torch.nn.Linear(10, 10)  # 110 float32 parameters
            self._name = "not a module"

    assert module_bytes(Checker()) == 110 * 4
    assert module_bytes(NoChecker()) == 0
