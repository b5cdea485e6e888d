"""The work queue: fair across callers, and batching what can share a pipeline call.

Each caller has its own first-in-first-out line; free workers serve the lines
round-robin, so one caller's burst cannot delay another caller's single job
by more than one turn. When a worker takes a job it also takes compatible
jobs (same model, size, steps and guidance), one per caller per pass in the
same round-robin order, up to the batch's image limit. Thread-safe: the event
loop puts jobs in, worker threads take batches out.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class QueuedJob(Protocol):
    """What the queue needs to know of a job."""

    caller: str
    model_id: str
    images: int
    batch_key: Hashable
    solo: bool
    """Must run alone (it was part of a batch that ran out of memory)."""
    held: bool
    """Holds its place but may not start yet (its caller is still being answered)."""


J = TypeVar("J", bound=QueuedJob)


class FairQueue(Generic[J]):
    """Waiting jobs: one line per caller, served round-robin, batched when compatible."""

    def __init__(self) -> None:
        self._lines: OrderedDict[str, deque[J]] = OrderedDict()
        self._condition = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._condition:
            return sum(len(line) for line in self._lines.values())

    def put(self, job: J, *, front: bool = False) -> None:
        """Adds `job` at the end of its caller's line (or the front, to retry it first)."""
        with self._condition:
            line = self._lines.setdefault(job.caller, deque())
            if front:
                line.appendleft(job)
                self._lines.move_to_end(job.caller, last=False)
            else:
                line.append(job)
            self._condition.notify_all()

    def release(self, job: J) -> None:
        """Lets a held job start."""
        with self._condition:
            job.held = False
            self._condition.notify_all()

    def discard(self, job: J) -> bool:
        """Removes a waiting job; False if it was no longer waiting."""
        with self._condition:
            line = self._lines.get(job.caller)
            if line is None or job not in line:
                return False
            line.remove(job)
            if not line:
                del self._lines[job.caller]
            return True

    def remove_where(self, predicate: Callable[[J], bool]) -> list[J]:
        """Removes and returns every waiting job `predicate` picks."""
        with self._condition:
            removed = [job for line in self._lines.values() for job in line if predicate(job)]
            for job in removed:
                self._remove(job)
            return removed

    def lines(self) -> list[tuple[str, tuple[J, ...]]]:
        """A snapshot of the waiting jobs: each caller's line, in round order."""
        with self._condition:
            return [(caller, tuple(line)) for caller, line in self._lines.items()]

    def in_service_order(self) -> list[J]:
        """Every waiting job, in the order round-robin would start them one by one."""
        with self._condition:
            lines = [list(line) for line in self._lines.values()]
        order: list[J] = []
        depth = 0
        while True:
            layer = [line[depth] for line in lines if depth < len(line)]
            if not layer:
                return order
            order.extend(layer)
            depth += 1

    def take_batch(
        self,
        hosted: Callable[[str], bool],
        max_images: int,
        *,
        max_delay: float = 0.0,
    ) -> list[J] | None:
        """Blocks until a job for a model `hosted` accepts is waiting; returns its batch.

        None once the queue is closed.
        """
        with self._condition:
            while True:
                first = self._wait_for_runnable(hosted)
                if first is None:
                    return None
                if max_delay > 0 and not first.solo:
                    self._wait_for_company(first, max_images, max_delay)
                    if not self._is_waiting(first):
                        continue  # cancelled while we waited: start over
                if self._is_closed():
                    return None
                return self._gather(first, max_images)

    def _wait_for_runnable(self, hosted: Callable[[str], bool]) -> J | None:
        while not self._is_closed():
            first = self._first_runnable(hosted)
            if first is not None:
                return first
            self._condition.wait()
        return None

    def _is_closed(self) -> bool:
        return self._closed

    def _is_waiting(self, job: J) -> bool:
        return job in self._lines.get(job.caller, ())

    def close(self) -> None:
        """Wakes every waiting worker; take_batch returns None from now on."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def drain(self) -> list[J]:
        """Removes and returns every waiting job (at shutdown)."""
        with self._condition:
            jobs = [job for line in self._lines.values() for job in line]
            self._lines.clear()
            return jobs

    def _first_runnable(self, hosted: Callable[[str], bool]) -> J | None:
        for line in self._lines.values():
            if line and not line[0].held and hosted(line[0].model_id):
                return line[0]
        return None

    def _compatible(self, first: J) -> int:
        return sum(
            job.images
            for line in self._lines.values()
            for job in line
            if job.batch_key == first.batch_key and not job.solo and not job.held
        )

    def _wait_for_company(self, first: J, max_images: int, max_delay: float) -> None:
        deadline = time.monotonic() + max_delay
        while self._compatible(first) < max_images and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or first not in self._lines.get(first.caller, ()):
                return
            self._condition.wait(remaining)

    def _gather(self, first: J, max_images: int) -> list[J]:
        batch = [first]
        self._remove(first)
        served = [first.caller]
        images = first.images
        added = not first.solo
        while added:
            added = False
            for caller in list(self._lines):
                line = self._lines.get(caller)
                candidate = next(
                    (
                        job
                        for job in line or ()
                        if job.batch_key == first.batch_key and not job.solo and not job.held
                    ),
                    None,
                )
                if candidate is None or images + candidate.images > max_images:
                    continue
                batch.append(candidate)
                images += candidate.images
                self._remove(candidate)
                served.append(caller)
                added = True
        for caller in served:  # served callers go to the back of the round
            if caller in self._lines:
                self._lines.move_to_end(caller)
        return batch

    def _remove(self, job: J) -> None:
        line = self._lines[job.caller]
        line.remove(job)
        if not line:
            del self._lines[job.caller]


__all__ = ["FairQueue", "QueuedJob"]
