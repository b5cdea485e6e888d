"""What a scenario measured and concluded, and the one line it prints."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

# Statuses listed first in a line, in this order; any other follows alphabetically.
STATUS_ORDER = (
    "OK",
    "CANCELLED",
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "NOT_FOUND",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


@dataclass
class Outcome:
    """One scenario's figures: calls by final status, latencies, findings. Thread-safe."""

    name: str
    calls: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    """Extra `key=value` figures, in the order they were noted."""
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: str, latency: float | None = None) -> None:
        """Counts one call that ended with `status` (a gRPC status name, or OK)."""
        with self._lock:
            self.calls += 1
            self.statuses[status] += 1
            if latency is not None:
                self.latencies.append(latency)

    def note(self, figure: str) -> None:
        """Adds a `key=value` figure to the line."""
        with self._lock:
            self.figures.append(figure)

    def fail(self, reason: str) -> None:
        """Marks the scenario failed, saying why (each reason once)."""
        with self._lock:
            if reason not in self.failures:
                self.failures.append(reason)

    def check(self, condition: bool, reason: str) -> bool:
        """Fails with `reason` unless `condition` holds; returns `condition`."""
        if not condition:
            self.fail(reason)
        return condition

    @property
    def passed(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def line(self) -> str:
        """`name PASS|FAIL calls=.. STATUS=n .. p50=.. p99=.. figures .. seconds -- reasons`."""
        ordered = [s for s in STATUS_ORDER if s in self.statuses]
        ordered += sorted(s for s in self.statuses if s not in STATUS_ORDER)
        parts = [f"{self.name:<16}", "PASS" if self.passed else "FAIL", f"calls={self.calls}"]
        parts += [f"{status}={self.statuses[status]}" for status in ordered]
        if len(self.latencies) >= 2:
            parts.append(f"p50={_duration(percentile(self.latencies, 0.5))}")
            parts.append(f"p99={_duration(percentile(self.latencies, 0.99))}")
        parts += self.figures
        parts.append(f"{self.seconds:.1f}s")
        text = " ".join(parts)
        if self.failures:
            text += " -- " + "; ".join(self.failures)
        return text


__all__ = ["Outcome", "percentile"]
