"""The fair queue: round-robin across callers, batching by batch key, held and solo jobs, close."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pixelgate.server.engine.fair_queue import FairQueue


@dataclass(eq=False)
class FakeJob:
    """A waiting job as the queue sees it (compared by identity, as jobs are)."""

    caller: str
    name: str
    images: int = 1
    model_id: str = "tiny"
    size: int = 64
    solo: bool = False
    held: bool = False

    @property
    def batch_key(self) -> tuple[str, int]:
        return (self.model_id, self.size)


def _every_model(model_id: str) -> bool:
    return True


def _names(batch: list[FakeJob] | None) -> list[str]:
    assert batch is not None
    return [job.name for job in batch]


def _queue(*jobs: FakeJob) -> FairQueue[FakeJob]:
    queue: FairQueue[FakeJob] = FairQueue()
    for job in jobs:
        queue.put(job)
    return queue


def test_one_callers_burst_does_not_delay_another_caller_by_more_than_one_turn() -> None:
    """Alice queued three jobs before Bob's one: Bob's runs second, not fourth."""
    queue = _queue(
        FakeJob("alice", "a1"), FakeJob("alice", "a2"), FakeJob("alice", "a3"), FakeJob("bob", "b1")
    )

    taken = [_names(queue.take_batch(_every_model, max_images=1)) for _ in range(4)]

    assert taken == [["a1"], ["b1"], ["a2"], ["a3"]]


def test_compatible_jobs_of_different_callers_share_a_batch_up_to_the_image_limit() -> None:
    """Same model and size batch together, one per caller per pass, never past the image limit."""
    queue = _queue(
        FakeJob("alice", "a", images=2),
        FakeJob("bob", "b-big", size=128),  # another size: not batchable with the others
        FakeJob("carol", "c"),
        FakeJob("dave", "d"),
    )

    assert _names(queue.take_batch(_every_model, max_images=3)) == ["a", "c"]
    assert _names(queue.take_batch(_every_model, max_images=3)) == ["b-big"]
    assert _names(queue.take_batch(_every_model, max_images=3)) == ["d"]


def test_a_held_job_keeps_its_place_but_starts_only_once_released() -> None:
    """A held job is passed over (and joins no batch) until release(); then it runs."""
    held = FakeJob("alice", "held", held=True)
    queue = _queue(held, FakeJob("bob", "b"), FakeJob("carol", "c"))

    assert _names(queue.take_batch(_every_model, max_images=4)) == ["b", "c"]
    queue.release(held)
    assert _names(queue.take_batch(_every_model, max_images=4)) == ["held"]


def test_a_solo_job_runs_alone_even_when_compatible_jobs_wait() -> None:
    """A job retried after running out of memory takes no company, and joins none."""
    queue = _queue(FakeJob("alice", "solo", solo=True), FakeJob("bob", "b"), FakeJob("carol", "c"))

    assert _names(queue.take_batch(_every_model, max_images=4)) == ["solo"]
    assert _names(queue.take_batch(_every_model, max_images=4)) == ["b", "c"]


def test_a_job_waits_for_a_worker_that_hosts_its_model() -> None:
    """A worker passes over jobs for models it does not host."""
    queue = _queue(FakeJob("alice", "other", model_id="other"), FakeJob("bob", "tiny"))

    assert _names(queue.take_batch(lambda model: model == "tiny", max_images=4)) == ["tiny"]
    assert [job.name for job in queue.in_service_order()] == ["other"]


def test_a_discarded_job_leaves_the_queue_once() -> None:
    """discard() removes a waiting job and says so; a second discard finds nothing."""
    gone = FakeJob("alice", "gone")
    queue = _queue(gone, FakeJob("alice", "stays"))

    assert queue.discard(gone)
    assert not queue.discard(gone)
    assert [job.name for job in queue.in_service_order()] == ["stays"]
    assert len(queue) == 1


def test_jobs_put_back_at_the_front_run_before_the_callers_others() -> None:
    """Retried jobs go back to the head of the queue, ahead of every line."""
    queue = _queue(FakeJob("alice", "a"), FakeJob("bob", "b"))
    queue.put(FakeJob("bob", "retry"), front=True)

    assert [job.name for job in queue.in_service_order()] == ["retry", "a", "b"]


def test_closing_wakes_a_waiting_worker_and_drain_returns_what_was_left() -> None:
    """A worker blocked on an empty (or unservable) queue gets None at close; drain empties it."""
    queue = _queue(FakeJob("alice", "unhosted", model_id="other"))
    taken: list[list[FakeJob] | None] = []
    worker = threading.Thread(
        target=lambda: taken.append(queue.take_batch(lambda model: model == "tiny", max_images=1))
    )
    worker.start()

    queue.close()
    worker.join(5)

    assert not worker.is_alive()
    assert taken == [None]
    assert [job.name for job in queue.drain()] == ["unhosted"]
    assert queue.take_batch(_every_model, max_images=1) is None
