"""Finish-time estimates that model batching and workers, and admission with a measured margin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pixelgate.server.engine.admission import DeadlineAdmission
from pixelgate.server.engine.eta import WorkerView, finish_times
from pixelgate.server.engine.fair_queue import FairQueue
from pixelgate.server.engine.step_timing import CallTime, Shape, StepTimer

STEPS = 150
OVERHEAD = 0.3
PER_STEP = 0.006
"""One 150-step image: 0.3 s fixed + 150 x 6 ms = 1.2 s."""


@dataclass(eq=False)
class FakeJob:
    """A waiting job as the queue and the plan see it (compared by identity, as jobs are)."""

    caller: str
    steps: int = STEPS
    images: int = 1
    model_id: str = "tiny"
    width: int = 64
    solo: bool = False
    held: bool = False
    name: str = field(default="")

    @property
    def batch_key(self) -> tuple[str, int, int]:
        return (self.model_id, self.width, self.steps)


def _timer() -> StepTimer:
    """Measured like the warm-up does: one image and two images of the default size."""
    timer = StepTimer()
    timer.observe(Shape("tiny", 64, 64, 1), CallTime(overhead=OVERHEAD, per_step=PER_STEP))
    timer.observe(Shape("tiny", 64, 64, 2), CallTime(overhead=0.32, per_step=0.0065))
    return timer


def _duration(timer: StepTimer):
    def duration(batch: Sequence[FakeJob]) -> float | None:
        first = batch[0]
        shape = Shape(first.model_id, first.width, 64, sum(job.images for job in batch))
        return timer.duration(shape, first.steps)

    return duration


def _lines(*jobs: FakeJob) -> list[tuple[str, list[FakeJob]]]:
    lines: dict[str, list[FakeJob]] = {}
    for job in jobs:
        lines.setdefault(job.caller, []).append(job)
    return list(lines.items())


IDLE = WorkerView(hosts=lambda model: True, free_in=0.0)


def test_four_compatible_jobs_are_predicted_to_finish_together() -> None:
    """Four callers' compatible 150-step jobs end with one batch, not one after another."""
    jobs = [FakeJob(caller=f"caller-{i}") for i in range(4)]
    single = OVERHEAD + STEPS * PER_STEP

    finishes = finish_times(_lines(*jobs), [IDLE], max_images=8, duration=_duration(_timer()))

    assert len({finishes[job] for job in jobs}) == 1
    together = finishes[jobs[0]]
    assert together is not None
    assert single < together < 2 * single  # one 4-image call, not 4 x 1.2 s
    assert together == pytest.approx(0.36 + STEPS * 0.0075)


def test_incompatible_jobs_are_predicted_one_after_another() -> None:
    """Jobs that cannot share a call (other steps) add up."""
    short, long = FakeJob(caller="a", steps=20), FakeJob(caller="b", steps=STEPS)

    finishes = finish_times(_lines(short, long), [IDLE], max_images=8, duration=_duration(_timer()))

    assert finishes[short] == pytest.approx(OVERHEAD + 20 * PER_STEP)
    assert finishes[long] == pytest.approx(OVERHEAD + 20 * PER_STEP + OVERHEAD + STEPS * PER_STEP)


def test_a_queue_behind_a_running_batch_waits_for_what_is_left_of_it() -> None:
    """A busy worker's remaining time comes first, then the waiting batch."""
    job = FakeJob(caller="a")
    busy = WorkerView(hosts=lambda model: True, free_in=0.5)

    finishes = finish_times(_lines(job), [busy], max_images=8, duration=_duration(_timer()))

    assert finishes[job] == pytest.approx(0.5 + OVERHEAD + STEPS * PER_STEP)


def test_a_batch_stops_at_the_image_limit_and_the_rest_runs_next() -> None:
    """Ten one-image jobs with eight images a call: eight finish first, two after them."""
    jobs = [FakeJob(caller=f"caller-{i}") for i in range(10)]
    constant = 1.0

    finishes = finish_times(_lines(*jobs), [IDLE], max_images=8, duration=lambda batch: constant)

    assert sorted(finishes.values()) == [1.0] * 8 + [2.0] * 2


def test_a_solo_job_is_predicted_to_run_alone() -> None:
    """A job retried alone after running out of memory does not share a call."""
    solo, other = FakeJob(caller="a", solo=True), FakeJob(caller="b")

    finishes = finish_times(_lines(solo, other), [IDLE], max_images=8, duration=lambda b: 1.0)

    assert (finishes[solo], finishes[other]) == (1.0, 2.0)


def test_two_workers_hosting_the_model_serve_in_parallel() -> None:
    """With two workers free, two incompatible jobs both finish after their own time."""
    short, long = FakeJob(caller="a", steps=20), FakeJob(caller="b", steps=STEPS)
    workers = [IDLE, WorkerView(hosts=lambda model: True, free_in=0.0)]

    finishes = finish_times(
        _lines(short, long), workers, max_images=8, duration=_duration(_timer())
    )

    assert finishes[short] == pytest.approx(OVERHEAD + 20 * PER_STEP)
    assert finishes[long] == pytest.approx(OVERHEAD + STEPS * PER_STEP)


def test_a_job_waits_for_the_worker_that_hosts_its_model() -> None:
    """A job for a model only the busy worker holds waits for it, not for the idle one."""
    job = FakeJob(caller="a", model_id="big")
    idle_other = WorkerView(hosts=lambda model: model == "tiny", free_in=0.0)
    busy_host = WorkerView(hosts=lambda model: model == "big", free_in=3.0)

    finishes = finish_times(
        _lines(job), [idle_other, busy_host], max_images=8, duration=lambda batch: 1.0
    )

    assert finishes[job] == pytest.approx(4.0)


def test_without_a_measurement_or_a_host_there_is_no_estimate() -> None:
    """Unknown durations and unhosted models give no estimate (and so no refusal)."""
    unknown, behind = FakeJob(caller="a", model_id="new"), FakeJob(caller="a", model_id="new")
    orphan = FakeJob(caller="b", model_id="nowhere")
    hosts = WorkerView(hosts=lambda model: model == "new", free_in=0.0)

    finishes = finish_times(
        _lines(unknown, behind, orphan), [hosts], max_images=1, duration=lambda batch: None
    )

    assert finishes == {unknown: None, behind: None, orphan: None}


def test_the_plan_batches_exactly_as_the_fair_queue_hands_batches_out() -> None:
    """Over a mixed queue (callers, keys, sizes, solo), planned batches are the real ones."""
    jobs = [
        FakeJob(caller="alice", steps=20),
        FakeJob(caller="alice", steps=20, images=3),
        FakeJob(caller="alice", steps=30),
        FakeJob(caller="bob", steps=30, images=2),
        FakeJob(caller="bob", steps=20, images=4),
        FakeJob(caller="carol", steps=20, solo=True),
        FakeJob(caller="carol", steps=20),
        FakeJob(caller="dave", steps=30, images=4),
        FakeJob(caller="dave", steps=20, images=2),
        FakeJob(caller="erin", steps=20, images=1),
    ]
    queue: FairQueue[FakeJob] = FairQueue()
    for job in jobs:
        queue.put(job)
    snapshot = queue.lines()
    taken = []
    while len(queue):
        batch = queue.take_batch(lambda model: True, 6)
        assert batch is not None
        taken.append(batch)

    finishes = finish_times(snapshot, [IDLE], max_images=6, duration=lambda batch: 1.0)

    planned: dict[float | None, set[int]] = {}
    for job, finish in finishes.items():
        planned.setdefault(finish, set()).add(id(job))
    assert [planned[float(i + 1)] for i in range(len(taken))] == [
        {id(job) for job in batch} for batch in taken
    ]


def test_admission_refuses_only_what_cannot_finish_allowing_for_measured_overshoot() -> None:
    """Estimates that ran 40% long are discounted 40%: 10 s estimated fits 7 s, not 5 s."""
    admission = DeadlineAdmission()
    for _ in range(20):
        admission.record(estimated=10.0, actual=6.0)

    assert admission.margin == pytest.approx(0.4)
    assert not admission.refuses(eta=10.0, seconds_left=7.0)
    assert admission.refuses(eta=10.0, seconds_left=5.0)


def test_the_margin_covers_all_but_the_worst_tenth_of_recent_estimates() -> None:
    """One wild overestimate in twenty does not widen the margin."""
    admission = DeadlineAdmission()
    for _ in range(19):
        admission.record(estimated=1.0, actual=0.9)
    admission.record(estimated=1.0, actual=0.1)

    assert admission.margin == pytest.approx(0.1)


def test_estimates_that_fell_short_leave_the_rule_at_the_estimate_itself() -> None:
    """Jobs that took longer than estimated make the margin 0: refuse when eta > time left."""
    admission = DeadlineAdmission()
    for _ in range(10):
        admission.record(estimated=1.0, actual=1.5)

    assert admission.margin == 0.0
    assert not admission.refuses(eta=2.0, seconds_left=2.0)
    assert admission.refuses(eta=2.1, seconds_left=2.0)


def test_the_margin_starts_from_a_prior_and_never_exceeds_one_half() -> None:
    """Before five samples a 25% margin; however wrong, a job estimated at over 2x is refused."""
    admission = DeadlineAdmission()
    assert admission.margin == pytest.approx(0.25)
    for _ in range(10):
        admission.record(estimated=10.0, actual=1.0)

    assert admission.margin == pytest.approx(0.5)
    assert admission.refuses(eta=10.0, seconds_left=4.9)
