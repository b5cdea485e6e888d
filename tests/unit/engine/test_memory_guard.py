"""The memory guard: refuses a request predicted not to fit, and learns from measured peaks."""

from __future__ import annotations

import pytest

from pixelgate.server.core.errors import ResourceExhausted
from pixelgate.server.engine.memory_guard import FORGET_OUT_OF_MEMORY_S, MIB, MemoryGuard

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


def test_a_lower_peak_lowers_the_estimate_gradually() -> None:
    """A light call after a heavy one moves the estimate only part of the way down; repeated
    light calls bring it to what the device really needs (it no longer only grows)."""
    guard = _guard(budget_mb=1000)
    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 80 * MIB)

    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 40 * MIB)
    once = guard.predict("tiny", 1000, 1000, 1) - WEIGHTS
    for _ in range(30):
        guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 40 * MIB)

    assert 40 * MIB < once < 80 * MIB
    assert guard.predict("tiny", 1000, 1000, 1) - WEIGHTS == pytest.approx(40 * MIB, rel=0.01)


def test_describing_a_loaded_model_keeps_what_was_learned() -> None:
    """Reloading a model sets its real weights but keeps the higher activation estimate."""
    guard = _guard(budget_mb=1000)
    guard.observe_peak("tiny", 1000, 1000, 1, peak_bytes=WEIGHTS + 80 * MIB)

    guard.describe_model("tiny", 60 * MIB, PER_MEGAPIXEL)

    assert guard.predict("tiny", 1000, 1000, 1) == 60 * MIB + 80 * MIB


def test_a_small_image_does_not_inflate_the_estimate_of_a_larger_one() -> None:
    """Activations are learned per size: a tiny image's fixed overhead, huge per megapixel,
    leaves normal requests as they were (they used to be refused for good)."""
    guard = _guard(budget_mb=1000)

    guard.observe_peak("tiny", 64, 64, 1, peak_bytes=WEIGHTS + 200 * MIB)  # 50,000 MiB/MP

    assert guard.predict("tiny", 64, 64, 1) == WEIGHTS + 200 * MIB
    assert guard.predict("tiny", 1000, 1000, 1) == WEIGHTS + PER_MEGAPIXEL
    assert guard.fits("tiny", 1000, 1000, 4)


def test_other_resident_models_and_the_checker_are_not_counted_as_activations() -> None:
    """A peak on a device that also holds another model and the output checker teaches this
    model only its own activations."""
    guard = _guard(budget_mb=10_000)
    guard.describe_model("other", 3000 * MIB, PER_MEGAPIXEL)
    for model in ("tiny", "other"):
        guard.loaded("cuda:0", model)
    guard.checker_loaded("cuda:0", 600 * MIB)

    guard.observe_peak(
        "tiny",
        1000,
        1000,
        1,
        peak_bytes=WEIGHTS + 3000 * MIB + 600 * MIB + 30 * MIB,
        device="cuda:0",
    )

    assert guard.predict("tiny", 1000, 1000, 1) == WEIGHTS + 30 * MIB


def test_a_batch_that_would_not_fit_beside_what_is_loaded_does_not_fit_on_the_device() -> None:
    """The batch check counts every model resident on the device, the weights of one still to
    load, and what the device really has free."""
    guard = _guard(budget_mb=400)  # 100 MiB of weights + 50 MiB per image of 1 MP
    guard.describe_model("other", 200 * MIB, PER_MEGAPIXEL)
    guard.loaded("cuda:0", "other")

    assert guard.fits("tiny", 1000, 1000, 4)  # alone, 300 MiB fits the budget
    assert guard.fits_on("cuda:0", "tiny", 1000, 1000, 2)  # 200 + 100 + 100
    assert not guard.fits_on("cuda:0", "tiny", 1000, 1000, 3)  # 200 + 100 + 150
    assert guard.fits_on("cuda:1", "tiny", 1000, 1000, 4)  # nothing else there
    assert not guard.fits_on("cuda:1", "tiny", 1000, 1000, 4, free_bytes=250 * MIB)


def test_a_batch_size_that_ran_out_of_memory_is_not_gathered_again_for_a_while() -> None:
    """After 4 images ran out of memory on a device, batches of 4 or more of that size do not
    fit there (smaller ones, other sizes and other devices do), until the bar is forgotten."""
    now = [0.0]
    guard = MemoryGuard(None, clock=lambda: now[0])
    guard.describe_model("tiny", WEIGHTS, PER_MEGAPIXEL)

    guard.observe_out_of_memory("cuda:0", "tiny", 512, 512, 4)

    assert guard.fits_on("cuda:0", "tiny", 512, 512, 3)
    assert not guard.fits_on("cuda:0", "tiny", 512, 512, 4)
    assert not guard.fits_on("cuda:0", "tiny", 512, 512, 8)
    assert guard.fits_on("cuda:0", "tiny", 256, 256, 8)
    assert guard.fits_on("cuda:1", "tiny", 512, 512, 8)
    now[0] = FORGET_OUT_OF_MEMORY_S
    assert guard.fits_on("cuda:0", "tiny", 512, 512, 8)
