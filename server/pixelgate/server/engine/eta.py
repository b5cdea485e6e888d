"""Finish-time estimates: the waiting queue played forward the way the workers will take it.

Each worker is free at some time (now, or when its running batch is expected
to end). The worker free soonest takes the next batch as FairQueue hands it
out: the first caller line, in round order, whose head is a model the worker
hosts; with that job, every compatible one (equal batch_key, not solo), one
per line per pass, up to the batch's image limit; the callers served go to
the back of the round. The batch's jobs finish together, when its estimated
duration has passed. A held job counts as released: the hold lasts only until
its caller has its first message. A batch of unknown duration (a model not
measured yet) leaves that worker's later jobs without an estimate, and a job
no worker hosts has none. Pure: no threads, no torch; the engine hands in a
snapshot. Each batch costs a pass over the waiting jobs per image it gathers,
so a plan is O(queue x batch size).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Plannable(Protocol):
    """What planning needs to know of a waiting job (FairQueue's view of it)."""

    @property
    def caller(self) -> str:
        """Whose line it waits in."""
        ...

    @property
    def model_id(self) -> str:
        """The model that runs it."""
        ...

    @property
    def images(self) -> int:
        """Images it adds to a batch."""
        ...

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys can share a pipeline call."""
        ...

    @property
    def solo(self) -> bool:
        """Runs alone."""
        ...


P = TypeVar("P", bound=Plannable)


@dataclass(frozen=True)
class WorkerView:
    """A worker as the plan sees it: the models it hosts, and seconds until it is free."""

    hosts: Callable[[str], bool]
    free_in: float | None
    """0 when idle; None when busy for a time nobody can estimate."""


def finish_times(
    lines: Sequence[tuple[str, Sequence[P]]],
    workers: Sequence[WorkerView],
    *,
    max_images: int,
    duration: Callable[[Sequence[P]], float | None],
) -> dict[P, float | None]:
    """Seconds from now until each waiting job is expected to finish (None: no estimate).

    `lines` are the callers' lines in round order, each first-in first-out;
    `duration` estimates one pipeline call running a batch.
    """
    waiting: OrderedDict[str, list[P]] = OrderedDict(
        (caller, list(jobs)) for caller, jobs in lines if jobs
    )
    free = [worker.free_in or 0.0 for worker in workers]
    known = [worker.free_in is not None for worker in workers]
    finishes: dict[P, float | None] = {}
    latest_start = 0.0  # a worker that found nothing to take waits for the next batch taken
    while waiting:
        taken = _next_batch(waiting, workers, free, max_images)
        if taken is None:
            break  # what is left, no worker hosts
        index, batch = taken
        start = max(free[index], latest_start)
        latest_start = start
        seconds = duration(batch) if known[index] else None
        if seconds is None:
            known[index] = False
            free[index] = start
        else:
            free[index] = start + seconds
        for job in batch:
            finishes[job] = free[index] if known[index] else None
    for line in waiting.values():
        for job in line:
            finishes[job] = None
    return finishes


def _next_batch(
    waiting: OrderedDict[str, list[P]],
    workers: Sequence[WorkerView],
    free: Sequence[float],
    max_images: int,
) -> tuple[int, list[P]] | None:
    for index in sorted(range(len(workers)), key=lambda i: (free[i], i)):
        first = _first_runnable(waiting, workers[index].hosts)
        if first is not None:
            return index, _gather(waiting, first, max_images)
    return None


def _first_runnable(waiting: OrderedDict[str, list[P]], hosts: Callable[[str], bool]) -> P | None:
    # As FairQueue._first_runnable: only a line's head can start a batch.
    for line in waiting.values():
        if hosts(line[0].model_id):
            return line[0]
    return None


def _gather(waiting: OrderedDict[str, list[P]], first: P, max_images: int) -> list[P]:
    # As FairQueue._gather, on the copy: keep the two in step.
    batch = [first]
    _remove(waiting, first)
    served = [first.caller]
    images = first.images
    added = not first.solo
    while added:
        added = False
        for caller in list(waiting):
            line = waiting.get(caller, [])
            candidate = next(
                (job for job in line if job.batch_key == first.batch_key and not job.solo), None
            )
            if candidate is None or images + candidate.images > max_images:
                continue
            batch.append(candidate)
            images += candidate.images
            _remove(waiting, candidate)
            served.append(caller)
            added = True
    for caller in served:  # served callers go to the back of the round
        if caller in waiting:
            waiting.move_to_end(caller)
    return batch


def _remove(waiting: OrderedDict[str, list[P]], job: P) -> None:
    line = waiting[job.caller]
    line.remove(job)
    if not line:
        del waiting[job.caller]


__all__ = ["Plannable", "WorkerView", "finish_times"]
