"""Rate-limit values as plain data: a bucket's shape and one decision taken from it.

Limits (limits/) makes and enforces them; the per-call record keeps the ones a
call drew on, and the quota metadata tells them to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Limit:
    """A token bucket: `capacity` units, refilled at `per_second` units a second."""

    name: str
    """Names the limit to callers ("requests", "gpu", "peer")."""
    capacity: float
    per_second: float

    @property
    def window_seconds(self) -> float:
        """Time an empty bucket takes to fill: the window of `capacity` units."""
        return self.capacity / self.per_second


class Decision(NamedTuple):
    """The outcome of taking from a bucket (a tuple: made on every call, so cheap)."""

    allowed: bool
    remaining: float
    """Units left in the bucket after this decision."""
    retry_after: float
    """Seconds until the cost would fit (0 when allowed)."""
    reset_after: float
    """Seconds until the bucket is full again."""

    @staticmethod
    def unknown(limit: Limit) -> Decision:
        """An allowed decision made without a backend (failing open)."""
        return Decision(allowed=True, remaining=limit.capacity, retry_after=0.0, reset_after=0.0)


__all__ = ["Decision", "Limit"]
