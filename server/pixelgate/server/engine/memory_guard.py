"""The memory guard: refuse a job that would not fit, split a batch that would not, and learn.

A call's peak memory on a device is predicted as the model's weights plus its
activations. Activations are learned per model and batch shape (size and
images) from measured peaks, less everything resident on that device (every
loaded model's weights and the output checker's), as a maximum that decays
toward newer measurements; a size never measured uses the model's configured
figure per megapixel. A request predicted to exceed the budget gets
RESOURCE_EXHAUSTED before it runs; a batch predicted not to fit on its device
(the budget, or what is really free there) is cut to fewer images; and a batch
shape that ran out of memory on a device is not gathered again there for a while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pixelgate.server.core.errors import ResourceExhausted

MIB = 1024 * 1024
DECAY = 0.25
"""How far a lower measured peak moves a learned figure toward itself (a higher one replaces
it at once): one light call does not make the guard admit what an earlier one showed too big."""
FORGET_OUT_OF_MEMORY_S = 600.0
"""How long a batch size that ran out of memory on a device stays barred there (other
processes and fragmentation change)."""
CHECKER = "<output checker>"
"""The resident entry of a device's output checker."""


@dataclass(frozen=True)
class _Size:
    model_id: str
    width: int
    height: int


class MemoryGuard:
    """Predicts peak memory per model and batch shape, and checks it against a per-device budget."""

    def __init__(
        self, budget_bytes: int | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._weights: dict[str, int] = {}
        self._per_megapixel: dict[str, float] = {}
        self._learned: dict[_Size, dict[int, float]] = {}
        """Learned activation bytes per size, by images in the call."""
        self._resident: dict[str, dict[str, int]] = {}
        """Per device: what is loaded there and its bytes."""
        self._too_big: dict[tuple[str, _Size], tuple[int, float]] = {}
        """Per device and size: the fewest images that ran out of memory, and when."""
        self._lock = threading.Lock()

    def describe_model(self, model_id: str, weights_bytes: int, bytes_per_megapixel: float) -> None:
        """Sets what a model needs: its weights, and the activation figure for unmeasured sizes."""
        with self._lock:
            self._weights[model_id] = weights_bytes
            self._per_megapixel[model_id] = bytes_per_megapixel
            for resident in self._resident.values():
                if model_id in resident:
                    resident[model_id] = weights_bytes

    def loaded(self, device: str, model_id: str) -> None:
        """`model_id` is now resident on `device` (with the weights it was described with)."""
        with self._lock:
            self._resident.setdefault(device, {})[model_id] = self._weights.get(model_id, 0)

    def unloaded(self, device: str, model_id: str) -> None:
        """`model_id` no longer holds memory on `device` (it failed to load there)."""
        with self._lock:
            self._resident.get(device, {}).pop(model_id, None)

    def checker_loaded(self, device: str, weights_bytes: int) -> None:
        """The output checker is resident on `device`, holding `weights_bytes`."""
        with self._lock:
            self._resident.setdefault(device, {})[CHECKER] = weights_bytes

    def resident_bytes(self, device: str) -> int:
        """Bytes of everything loaded on `device`: every model's weights and the checker's."""
        with self._lock:
            return sum(self._resident.get(device, {}).values())

    def _activations(self, size: _Size, images: int) -> float:
        learned = self._learned.get(size)
        if learned:
            if images in learned:
                return learned[images]
            # Another batch size of this size: scale its per-image figure (the largest one:
            # a small batch's fixed share makes it the cautious one).
            return max(value / count for count, value in learned.items()) * images
        per_megapixel = self._per_megapixel.get(size.model_id, 0.0)
        return per_megapixel * size.width * size.height * images / 1e6

    def predict(self, model_id: str, width: int, height: int, images: int) -> int:
        """Predicted peak bytes of one pipeline call: the model's weights and its activations."""
        with self._lock:
            weights = self._weights.get(model_id, 0)
            activations = self._activations(_Size(model_id, width, height), images)
        return int(weights + activations)

    def fits(self, model_id: str, width: int, height: int, images: int) -> bool:
        """True when the call is predicted to fit the budget (or there is none)."""
        if self.budget_bytes is None:
            return True
        return self.predict(model_id, width, height, images) <= self.budget_bytes

    def check(self, model_id: str, width: int, height: int, images: int) -> None:
        """RESOURCE_EXHAUSTED when the request cannot fit, even alone."""
        if self.fits(model_id, width, height, images):
            return
        predicted = self.predict(model_id, width, height, images)
        raise ResourceExhausted(
            f"this request needs about {predicted // MIB} MiB, more than the"
            f" {(self.budget_bytes or 0) // MIB} MiB memory budget;"
            " ask for a smaller image or fewer images"
        )

    def fits_on(
        self,
        device: str,
        model_id: str,
        width: int,
        height: int,
        images: int,
        *,
        free_bytes: int | None = None,
    ) -> bool:
        """True when a batch is predicted to fit on `device` beside what is loaded there: within
        the budget, within `free_bytes` (what the device really has free now, when known), and
        smaller than a batch of this size that ran out of memory there."""
        size = _Size(model_id, width, height)
        with self._lock:
            barred = self._too_big.get((device, size))
            if barred is not None:
                if self._clock() - barred[1] >= FORGET_OUT_OF_MEMORY_S:
                    del self._too_big[(device, size)]
                elif images >= barred[0]:
                    return False
            resident = self._resident.get(device, {})
            to_load = 0 if model_id in resident else self._weights.get(model_id, 0)
            needed = to_load + self._activations(size, images)
            if (
                self.budget_bytes is not None
                and sum(resident.values()) + needed > self.budget_bytes
            ):
                return False
        return free_bytes is None or needed <= free_bytes

    def observe_peak(
        self,
        model_id: str,
        width: int,
        height: int,
        images: int,
        peak_bytes: int,
        *,
        device: str | None = None,
    ) -> None:
        """Learns a call's activations from its measured peak, less everything resident on
        `device` (without a device: this model's weights alone)."""
        size = _Size(model_id, width, height)
        with self._lock:
            resident = self._resident.get(device, {}) if device is not None else {}
            baseline = sum(resident.values()) if resident else self._weights.get(model_id, 0)
            observed = peak_bytes - baseline
            if images <= 0 or observed <= 0:
                return
            learned = self._learned.setdefault(size, {})
            known = learned.get(images)
            if known is None or observed >= known:
                learned[images] = float(observed)
            else:
                learned[images] = known + DECAY * (observed - known)

    def observe_out_of_memory(
        self, device: str, model_id: str, width: int, height: int, images: int
    ) -> None:
        """A call of `images` ran out of memory on `device`: batches of this size gathered
        there stay smaller than that for a while."""
        key = (device, _Size(model_id, width, height))
        with self._lock:
            barred = self._too_big.get(key)
            fewest = images if barred is None else min(images, barred[0])
            self._too_big[key] = (fewest, self._clock())


__all__ = ["CHECKER", "DECAY", "FORGET_OUT_OF_MEMORY_S", "MIB", "MemoryGuard"]
