"""The memory guard: refuse a job that would not fit, rather than crash on it.

A job's peak memory on a device is predicted as the model's weights plus its
activations, which grow with megapixels x images. The starting figure per
megapixel comes from the model's settings; on CUDA every finished batch's
measured peak raises it if reality was hungrier. A request predicted to
exceed the device's budget gets RESOURCE_EXHAUSTED before it runs.
"""

from __future__ import annotations

import threading

from pixelgate.server.core.errors import ResourceExhausted

MIB = 1024 * 1024


class MemoryGuard:
    """Predicts peak memory per model and checks it against a per-device budget."""

    def __init__(self, budget_bytes: int | None) -> None:
        self.budget_bytes = budget_bytes
        self._weights: dict[str, int] = {}
        self._per_megapixel: dict[str, float] = {}
        self._lock = threading.Lock()

    def describe_model(self, model_id: str, weights_bytes: int, bytes_per_megapixel: float) -> None:
        """Sets what a model needs: its weights, and a starting activation estimate."""
        with self._lock:
            self._weights[model_id] = weights_bytes
            known = self._per_megapixel.get(model_id, 0.0)
            self._per_megapixel[model_id] = max(known, bytes_per_megapixel)

    def predict(self, model_id: str, width: int, height: int, images: int) -> int:
        """Predicted peak bytes of one pipeline call."""
        with self._lock:
            weights = self._weights.get(model_id, 0)
            per_megapixel = self._per_megapixel.get(model_id, 0.0)
        return int(weights + per_megapixel * width * height * images / 1e6)

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

    def observe_peak(
        self, model_id: str, width: int, height: int, images: int, peak_bytes: int
    ) -> None:
        """Learns from a measured peak: the activation estimate only ever grows."""
        megapixels = width * height * images / 1e6
        with self._lock:
            activations = peak_bytes - self._weights.get(model_id, 0)
            if megapixels > 0 and activations > 0:
                observed = activations / megapixels
                self._per_megapixel[model_id] = max(
                    self._per_megapixel.get(model_id, 0.0), observed
                )


__all__ = ["MIB", "MemoryGuard"]
