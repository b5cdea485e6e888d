"""Step-time estimates, measured from the jobs the engine runs.

Each finished batch teaches the estimator how long one denoising step took for
its model, size and image count (an exponential moving average). Estimates
for an unseen shape scale the model's nearest measured one by pixels x
images. No measurement at all means no estimate, and then no job is refused
for its deadline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

_SMOOTHING = 0.3
"""Weight of the newest measurement in the moving average."""


@dataclass(frozen=True)
class Shape:
    """What a step's time depends on."""

    model_id: str
    width: int
    height: int
    images: int

    @property
    def work(self) -> int:
        """Pixels to denoise per step."""
        return self.width * self.height * self.images


class StepTimer:
    """Seconds per denoising step, by model and shape. Thread-safe."""

    def __init__(self) -> None:
        self._seconds: dict[Shape, float] = {}
        self._lock = threading.Lock()

    def observe(self, shape: Shape, seconds_per_step: float) -> None:
        """Records a measured step time."""
        with self._lock:
            previous = self._seconds.get(shape)
            self._seconds[shape] = (
                seconds_per_step
                if previous is None
                else previous + _SMOOTHING * (seconds_per_step - previous)
            )

    def per_step(self, shape: Shape) -> float | None:
        """Estimated seconds per step for `shape`, or None without any measurement."""
        with self._lock:
            exact = self._seconds.get(shape)
            if exact is not None:
                return exact
            known = [(s, t) for s, t in self._seconds.items() if s.model_id == shape.model_id]
        if not known:
            return None
        nearest, seconds = min(known, key=lambda item: abs(item[0].work - shape.work))
        return seconds * shape.work / nearest.work

    def duration(self, shape: Shape, steps: int) -> float | None:
        """Estimated seconds for `steps` steps of `shape`."""
        per_step = self.per_step(shape)
        return None if per_step is None else per_step * steps


__all__ = ["Shape", "StepTimer"]
