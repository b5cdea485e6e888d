"""The memory guard: refuses a request predicted not to fit, and learns from measured peaks."""

from __future__ import annotations

import pytest

from pixelgate.server.core.errors import ResourceExhausted
from pixelgate.server.engine.memory_guard import MIB, MemoryGuard

WEIGHTS = 100 * MIB
PER_MEGAPIXEL = 50 * MIB


def _guard(budget_mb: int | None) -> MemoryGuard:
    guard = MemoryGuard(None if budget_mb is None else budget_mb * MIB)
    guard.describe_model("tiny", WEIGHTS, PER_MEGAPIXEL)
    return guard


def test_a_request_predicted_over_the_budget_is_refused_and_says_by_how_much() -> None:
    """Weights + activations per megapixel x images over the budget: RESOURCE_EXHAUSTED."""
    guard = _guard(budget_mb=150)

    guard.check("tiny", 1000, 1000, 1)  # 100 + 50 MiB: fits exactly
    with pytest.raises(ResourceExhausted) as refused:
        guard.check("tiny", 1000, 1000, 2)  # 100 + 100 MiB

    assert "about 200 MiB" in str(refused.value)
    assert "150 MiB memory budget" in str(refused.value)


def test_without_a_budget_everything_fits() -> None:
    """No budget (a CPU device): the guard refuses nothing."""
    guard = _guard(budget_mb=None)

    assert guard.fits("tiny", 8192, 8192, 16)
    guard.check("tiny", 8192, 8192, 16)


def test_a_measured_peak_hungrier_than_predicted_raises_the_estimate() -> None:
    """After a batch peaked higher than predicted, a request that fit before is refused."""
    guard = _guard(budget_mb=200)
    assert guard.fits("tiny", 1000, 1000, 2)  # predicted 200 MiB

    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 80 * MIB)

    assert guard.predict("tiny", 1000, 1000, 2) == WEIGHTS + 160 * MIB
    assert not guard.fits("tiny", 1000, 1000, 2)


def test_a_lower_peak_never_lowers_the_estimate() -> None:
    """One light batch does not make the guard admit what an earlier peak showed too big."""
    guard = _guard(budget_mb=1000)

    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 10 * MIB)

    assert guard.predict("tiny", 1000, 1000, 1) == WEIGHTS + PER_MEGAPIXEL


def test_describing_a_loaded_model_keeps_what_was_learned() -> None:
    """Reloading a model sets its real weights but keeps the higher activation estimate."""
    guard = _guard(budget_mb=1000)
    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 80 * MIB)

    guard.describe_model("tiny", 60 * MIB, PER_MEGAPIXEL)

    assert guard.predict("tiny", 1000, 1000, 1) == 60 * MIB + 80 * MIB
