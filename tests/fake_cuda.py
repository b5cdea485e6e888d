"""A stand-in for torch.cuda's memory calls, for device-memory code on machines without a GPU."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

GIB = 1024**3


class FakeCuda:
    """Made-up free memory per device; records which device's cache was emptied and calls
    `on_empty_cache` (if given) at that moment."""

    def __init__(
        self,
        free: dict[str, int],
        *,
        total: int = 80 * GIB,
        on_empty_cache: Callable[[], None] | None = None,
    ) -> None:
        self.free = free
        self.total = total
        self.reserved = 0
        self.allocated = 0
        self.peak = 0
        self.current = "cuda:0"
        self.emptied: list[str] = []
        self.exception_at_release: list[object] = []
        """sys.exc_info()[1] each time the cache was emptied (None outside any handler)."""
        self.on_empty_cache = on_empty_cache

    def mem_get_info(self, device: str) -> tuple[int, int]:
        return self.free[device], self.total

    def memory_reserved(self, device: str) -> int:
        return self.reserved

    def memory_allocated(self, device: str) -> int:
        return self.allocated

    def reset_peak_memory_stats(self, device: str) -> None:
        self.peak = 0

    def max_memory_allocated(self, device: str) -> int:
        return self.peak

    @contextlib.contextmanager
    def device(self, device: str) -> Iterator[None]:
        previous, self.current = self.current, device
        try:
            yield
        finally:
            self.current = previous

    def empty_cache(self) -> None:
        self.emptied.append(self.current)
        self.exception_at_release.append(sys.exc_info()[1])
        if self.on_empty_cache is not None:
            self.on_empty_cache()
