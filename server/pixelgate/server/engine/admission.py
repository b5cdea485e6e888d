"""Deadline admission: how far past estimates overshot, and the rule that allows for it.

Every job that runs to its end is one sample: the finish time estimated when
it was admitted against the time it really took. Admission refuses a job only
when even an estimate cut by the overshoot seen so far misses the deadline:

    eta x (1 - margin) > seconds left

where the margin is the 90th percentile of (estimated - actual) / estimated
over the last 100 jobs, at least 0 and at most 0.5 (nothing predicted to take
over twice the time left is admitted). Until 5 jobs have finished the margin
is 0.25. Estimates that fell short (the job took longer) do not tighten the
rule: admission errs toward admitting, and the deadline still stops a job
that overruns it.
"""

from __future__ import annotations

import math
import threading
from collections import deque

WINDOW = 100
"""Finished jobs whose estimates the margin is computed from."""
QUANTILE = 0.9
"""Which overshoot the margin covers: 0.9 = all but the worst tenth."""
PRIOR_MARGIN = 0.25
"""The margin before MIN_SAMPLES jobs have finished."""
MIN_SAMPLES = 5
"""Finished jobs needed before the measured margin replaces the prior."""
MAX_MARGIN = 0.5
"""The most an estimate is discounted, however wrong past ones were."""


class DeadlineAdmission:
    """Decides whether a job can finish before its deadline, allowing for measured error."""

    def __init__(
        self,
        *,
        window: int = WINDOW,
        quantile: float = QUANTILE,
        prior_margin: float = PRIOR_MARGIN,
        min_samples: int = MIN_SAMPLES,
        max_margin: float = MAX_MARGIN,
    ) -> None:
        self._overshoots: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._min_samples = min_samples
        self._max = max_margin
        self._margin = min(prior_margin, max_margin)
        self._lock = threading.Lock()

    @property
    def margin(self) -> float:
        """The fraction an estimate is discounted by before it is held against a deadline."""
        with self._lock:
            return self._margin

    def record(self, estimated: float, actual: float) -> None:
        """Notes a finished job: its estimated and its real seconds from admission to the end."""
        if estimated <= 0 or actual < 0:
            return  # nothing to learn a ratio from
        with self._lock:
            self._overshoots.append((estimated - actual) / estimated)
            if len(self._overshoots) < self._min_samples:
                return
            ordered = sorted(self._overshoots)
            rank = min(len(ordered) - 1, max(0, math.ceil(self._quantile * len(ordered)) - 1))
            self._margin = min(max(ordered[rank], 0.0), self._max)

    def refuses(self, eta: float, seconds_left: float) -> bool:
        """True when a job estimated to finish in `eta` seconds cannot make its deadline."""
        return eta * (1.0 - self.margin) > seconds_left


__all__ = ["DeadlineAdmission"]
