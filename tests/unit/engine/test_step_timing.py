"""Call-time estimates: fixed cost apart from step time, per shape, scaled to unseen shapes."""

from __future__ import annotations

import pytest

from pixelgate.server.engine.step_timing import CallClock, CallTime, Shape, StepTimer

ONE = Shape("tiny", 64, 64, 1)
TWO = Shape("tiny", 64, 64, 2)
FOUR = Shape("tiny", 64, 64, 4)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _timed_call(
    clock: FakeClock, *, before: float, step: float, steps: int, after: float
) -> CallClock:
    """A call: `before` seconds of text encoding, `steps` steps, `after` seconds of decoding."""
    call = CallClock(clock)
    clock.now += before
    for _ in range(steps):
        clock.now += step
        call.step()
    clock.now += after
    return call


def _estimate(shape: Shape, *measured: tuple[Shape, CallTime]) -> CallTime:
    """The estimate for `shape` once a timer has observed each (shape, call time) measured."""
    timer = StepTimer()
    for seen, took in measured:
        timer.observe(seen, took)
    estimate = timer.estimate(shape)
    assert estimate is not None
    return estimate


def test_a_calls_fixed_cost_is_measured_apart_from_its_step_time() -> None:
    """Text encoding before the first step and decoding after the last are not step time."""
    clock = FakeClock()
    call = _timed_call(clock, before=0.2, step=0.01, steps=4, after=0.1)

    measured = call.measure(4)

    assert measured is not None
    assert measured.per_step == pytest.approx(0.01)
    assert measured.overhead == pytest.approx(0.3)


def test_a_20_step_estimate_from_a_4_step_call_is_overhead_plus_20_steps() -> None:
    """A 4-step warm-up with 0.3 s fixed cost predicts 0.5 s for 20 steps, not 20 x (0.34 / 4)."""
    clock = FakeClock()
    measured = _timed_call(clock, before=0.2, step=0.01, steps=4, after=0.1).measure(4)
    assert measured is not None
    timer = StepTimer()
    timer.observe(ONE, measured)

    assert timer.duration(ONE, 20) == pytest.approx(0.3 + 20 * 0.01)


def test_a_call_with_fewer_than_two_steps_teaches_nothing() -> None:
    """One step mark cannot separate step time from fixed cost."""
    clock = FakeClock()
    assert _timed_call(clock, before=0.2, step=0.01, steps=1, after=0.1).measure(1) is None


def test_a_scheduler_that_calls_back_twice_a_step_still_gives_time_per_requested_step() -> None:
    """Heun-like schedulers call back 2n - 1 times for n steps; estimates are per step asked."""
    clock = FakeClock()
    measured = _timed_call(clock, before=0.0, step=0.01, steps=2 * 10 - 1, after=0.0).measure(10)
    assert measured is not None
    assert measured.seconds(10) == pytest.approx(19 * 0.01)


def test_no_measurement_of_a_model_means_no_estimate() -> None:
    """Without any measurement of its model a job gets no estimate (and so is never refused)."""
    timer = StepTimer()
    timer.observe(ONE, CallTime(overhead=0.1, per_step=0.01))

    assert timer.estimate(Shape("other-model", 64, 64, 1)) is None
    assert timer.duration(Shape("other-model", 64, 64, 1), 10) is None


def test_new_measurements_move_the_estimate_gradually() -> None:
    """One slow call shifts the estimate toward it without replacing the history."""
    estimate = _estimate(
        ONE,
        (ONE, CallTime(overhead=0.1, per_step=0.01)),
        (ONE, CallTime(overhead=0.5, per_step=0.05)),
    )
    assert 0.1 < estimate.overhead < 0.5
    assert 0.01 < estimate.per_step < 0.05


def test_a_bigger_batch_is_estimated_from_how_a_step_grew_from_one_image_to_two() -> None:
    """Four images per step cost what the 1 -> 2 image growth says, not four times one image."""
    four = _estimate(
        FOUR,
        (ONE, CallTime(overhead=0.30, per_step=0.006)),
        (TWO, CallTime(overhead=0.32, per_step=0.0065)),
    )
    assert four.per_step == pytest.approx(0.0075)
    assert four.overhead == pytest.approx(0.36)


def test_a_shape_between_two_measured_ones_is_interpolated() -> None:
    """Two images between measured one- and four-image calls lie on the line between them."""
    two = _estimate(
        TWO,
        (ONE, CallTime(overhead=0.1, per_step=0.010)),
        (FOUR, CallTime(overhead=0.4, per_step=0.016)),
    )
    assert two.per_step == pytest.approx(0.012)
    assert two.overhead == pytest.approx(0.2)


def test_a_lone_measurement_scales_with_pixels() -> None:
    """With one measured shape, a 4x bigger image is estimated at 4x its cost (as before)."""
    big = _estimate(Shape("tiny", 128, 128, 1), (ONE, CallTime(overhead=0.1, per_step=0.01)))
    assert big.per_step == pytest.approx(0.04)
    assert big.overhead == pytest.approx(0.4)


def test_noisy_measurements_never_make_a_bigger_call_cheaper() -> None:
    """If two images measured faster than one, four are estimated no cheaper than two."""
    four = _estimate(
        FOUR,
        (ONE, CallTime(overhead=0.1, per_step=0.012)),
        (TWO, CallTime(overhead=0.1, per_step=0.010)),
    )
    assert four.per_step == pytest.approx(0.010)


def test_a_steep_pair_of_measurements_extrapolates_no_worse_than_proportionally() -> None:
    """Beyond the measured shapes, cost grows at most in proportion to the pixels."""
    four = _estimate(
        FOUR,
        (ONE, CallTime(overhead=0.1, per_step=0.01)),
        (TWO, CallTime(overhead=0.2, per_step=0.05)),
    )
    assert four.per_step == pytest.approx(0.05 * 2)
