"""Pipeline-call times, measured from the calls the engine runs.

A call costs a fixed part and a part per denoising step. The fixed part is the
work before the first step (text encoding) and after the last (VAE decoding,
the safety check, handing the images over); the step callback times the steps
between the first and the last callback, so neither end is in the per-step
figure. Each model, size and image count keeps an exponential moving average
of both. An unseen shape is estimated from the model's measured ones by work
(pixels x images): interpolated between the two that bracket it, else
extrapolated from the nearest two, never faster than flat nor slower than
proportional (GPUs run a bigger batch per step in less than proportional
time). No measurement at all means no estimate, and then no job is refused
for its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

_SMOOTHING = 0.3
"""Weight of the newest measurement in the moving average."""


@dataclass(frozen=True)
class Shape:
    """What a call's time depends on, besides its steps."""

    model_id: str
    width: int
    height: int
    images: int

    @property
    def work(self) -> int:
        """Pixels to denoise per step."""
        return self.width * self.height * self.images


@dataclass(frozen=True)
class CallTime:
    """What one pipeline call of a shape costs: fixed seconds, and seconds per step."""

    overhead: float
    per_step: float

    def seconds(self, steps: int) -> float:
        """Estimated seconds for a call of `steps` steps."""
        return self.overhead + steps * self.per_step


class CallClock:
    """Times one pipeline call: its start, each step callback, its end. One thread only."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.started = clock()
        self._first: float | None = None
        self._last = 0.0
        self._ticks = 0

    def step(self) -> None:
        """Marks the end of a denoising step (call it from the step callback)."""
        now = self._clock()
        if self._first is None:
            self._first = now
        self._last = now
        self._ticks += 1

    def measure(self, steps: int) -> CallTime | None:
        """The call's cost, now that it has ended; None below two step marks (nothing to time).

        `steps` is what was asked for: a scheduler that calls back more than once
        per step (Heun's) still yields seconds per requested step.
        """
        ended = self._clock()
        if self._first is None or self._ticks < 2 or steps < 1:
            return None
        per_tick = (self._last - self._first) / (self._ticks - 1)
        denoising = per_tick * self._ticks
        return CallTime(
            overhead=max(0.0, ended - self.started - denoising), per_step=denoising / steps
        )


class StepTimer:
    """Pipeline-call times by model and shape, and estimates from them. Thread-safe."""

    def __init__(self) -> None:
        self._measured: dict[Shape, CallTime] = {}
        self._lock = threading.Lock()

    def observe(self, shape: Shape, measured: CallTime) -> None:
        """Folds a measured call into the shape's moving averages."""
        with self._lock:
            previous = self._measured.get(shape)
            self._measured[shape] = (
                measured
                if previous is None
                else CallTime(
                    overhead=_smoothed(previous.overhead, measured.overhead),
                    per_step=_smoothed(previous.per_step, measured.per_step),
                )
            )

    def estimate(self, shape: Shape) -> CallTime | None:
        """The expected cost of a call of `shape`, or None while its model has no measurement."""
        with self._lock:
            exact = self._measured.get(shape)
            if exact is not None:
                return exact
            known = [(s.work, t) for s, t in self._measured.items() if s.model_id == shape.model_id]
        if not known:
            return None
        by_work: dict[int, list[CallTime]] = {}
        for work, measured in known:
            by_work.setdefault(work, []).append(measured)
        points = sorted(
            (work, sum(t.overhead for t in ts) / len(ts), sum(t.per_step for t in ts) / len(ts))
            for work, ts in by_work.items()
        )
        return CallTime(
            overhead=_along_work([(w, o) for w, o, _ in points], shape.work),
            per_step=_along_work([(w, s) for w, _, s in points], shape.work),
        )

    def duration(self, shape: Shape, steps: int) -> float | None:
        """Estimated seconds for a call of `steps` steps of `shape`."""
        estimate = self.estimate(shape)
        return None if estimate is None else estimate.seconds(steps)


def _smoothed(previous: float, newest: float) -> float:
    return previous + _SMOOTHING * (newest - previous)


def _along_work(points: list[tuple[int, float]], work: int) -> float:
    """The value at `work` from measured (work, value) points sorted by work."""
    if len(points) == 1:
        measured_work, value = points[0]
        return value * work / measured_work
    for (low_work, low), (high_work, high) in pairwise(points):
        if low_work <= work <= high_work:
            return low + (high - low) * (work - low_work) / (high_work - low_work)
    (low_work, low), (high_work, high) = points[:2] if work < points[0][0] else points[-2:]
    anchor_work, anchor = (low_work, low) if work < low_work else (high_work, high)
    # Between flat (slope 0) and proportional (through the origin): a noisy pair of
    # points must not make a bigger call cheaper, nor extrapolate past linear.
    slope = min(max((high - low) / (high_work - low_work), 0.0), anchor / anchor_work)
    return anchor + slope * (work - anchor_work)


__all__ = ["CallClock", "CallTime", "Shape", "StepTimer"]
