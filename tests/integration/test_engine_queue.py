"""The generation engine's queue: fairness, positions, batching, workers, memory."""

from __future__ import annotations

import contextlib
import copy
import io
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from PIL import Image
from support import FakeRuntime, seed_colour, wait_for

from pixelgate.client import DeadlineExceeded, GeneratedImage, RateLimited
from pixelgate.v1 import image_service_pb2 as pb


def _callers(server, connect, mint, count: int) -> list[Any]:
    return [connect(server, token=mint(subject=f"caller-{i}")) for i in range(count)]


def _wait_until_queued(engine, count: int) -> None:
    """`count` jobs wait in the queue, none held back (their callers have been answered)."""

    def settled() -> bool:
        order = engine.queue.in_service_order()
        return len(order) == count and not any(job.held for job in order)

    wait_for(settled, what=f"{count} released jobs in the queue")


@contextlib.contextmanager
def _worker_held(fake: FakeRuntime, busy: Any, *, started_calls: int = 1) -> Iterator[Any]:
    """Holds the only worker on a one-step job of `busy` while the body queues other jobs;
    the gate opens when the body ends. Yields the blocker's stream."""
    fake.gate.clear()
    try:
        blocker = busy.stream("occupies the worker", steps=1, seed=1)
        next(blocker)
        wait_for(lambda: len(fake.calls) == started_calls, what="the blocker started")
        yield blocker
    finally:
        fake.gate.set()


def _drain(streams: Sequence[Iterator[Any]]) -> list[list[Any]]:
    """Reads every stream to its end, all at once (one thread each)."""
    with ThreadPoolExecutor(len(streams)) as pool:
        return list(pool.map(list, streams))


def _images(events: Sequence[Any]) -> list[GeneratedImage]:
    return [e for e in events if isinstance(e, GeneratedImage)]


def _running_steps(events: Sequence[Any]) -> list[int]:
    return [
        e.step
        for e in events
        if isinstance(e, pb.Progress) and e.state == pb.Progress.STATE_RUNNING
    ]


def _queued(events: Sequence[Any]) -> list[pb.Progress]:
    return [e for e in events if isinstance(e, pb.Progress) and e.state == pb.Progress.STATE_QUEUED]


def _pixels(image: GeneratedImage) -> bytes:
    with Image.open(io.BytesIO(image.data)) as decoded:
        return decoded.convert("RGB").tobytes()


def _max_pixel_difference(first: GeneratedImage, second: GeneratedImage) -> int:
    a, b = _pixels(first), _pixels(second)
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _centre_colour(image: GeneratedImage) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(image.data)) as decoded:
        return decoded.convert("RGB").getpixel((decoded.width // 2, decoded.height // 2))


def test_one_callers_burst_does_not_starve_another_callers_single_job(start_server, connect, mint):
    """Bob's one job runs after at most one more of Alice's six, not after all of them."""
    fake = FakeRuntime(step_seconds=0.04)
    server = start_server(
        loader=lambda settings, device: fake,
        engine={"max_batch_images": 1, "warmup": False},
    )
    alice = connect(server, token=mint(subject="alice"))
    bob = connect(server, token=mint(subject="bob"))
    fake.gate.clear()
    try:
        alice_streams = [alice.stream("a fox", steps=2, seed=100 + i) for i in range(6)]
        next(alice_streams[0])  # queued; the worker takes it and waits at the gate
        wait_for(lambda: len(fake.calls) == 1, what="alice's first job started")
        for stream in alice_streams[1:]:
            assert next(stream).state == pb.Progress.STATE_QUEUED
        bob_stream = bob.stream("a bird", steps=2, seed=200)
        assert next(bob_stream).state == pb.Progress.STATE_QUEUED
        _wait_until_queued(server.running.engine, 6)
    finally:
        fake.gate.set()

    finished: dict[int, float] = {}

    def consume(stream: Iterator[Any]) -> None:
        for event in stream:
            if isinstance(event, GeneratedImage):
                finished[event.seed] = time.monotonic()

    with ThreadPoolExecutor(7) as pool:
        list(pool.map(consume, [*alice_streams, bob_stream]))

    started = [seeds[0] for seeds in fake.calls]
    alice_seeds = [100 + i for i in range(6)]
    assert [s for s in started if s != 200] == alice_seeds  # each caller's own jobs stay FIFO
    assert len(started[started.index(200) + 1 :]) >= 4
    completion_order = sorted(finished, key=finished.__getitem__)
    assert sorted(completion_order) == [*alice_seeds, 200]
    assert len(completion_order[completion_order.index(200) + 1 :]) >= 4


def test_queued_callers_see_their_position_count_down_with_an_eta(start_server, connect, mint):
    """A waiting caller is told how many jobs are ahead, counting down, and roughly how long."""
    fake = FakeRuntime(step_seconds=0.01)
    server = start_server(
        loader=lambda settings, device: fake, engine={"max_batch_images": 1}
    )  # warm-up on: step times are measured before the first request
    first, *waiting = _callers(server, connect, mint, 4)
    fake.gate.clear()
    try:
        running = first.stream("first", steps=3, seed=1)
        next(running)
        wait_for(lambda: len(fake.calls) == 1, what="the first job started")
        streams = [client.stream("later", steps=3, seed=10 + i) for i, client in enumerate(waiting)]
        heads = [next(stream) for stream in streams]
        _wait_until_queued(server.running.engine, 3)
    finally:
        fake.gate.set()
    rests = _drain([running, *streams])

    queued = [_queued([head, *rest]) for head, rest in zip(heads, rests[1:], strict=True)]
    assert [[p.queue_position for p in q] for q in queued] == [[1], [2, 1], [3, 2, 1]]
    assert all(p.eta_seconds > 0 for q in queued for p in q)
    assert all(p.total_steps == 3 for q in queued for p in q)
    assert queued[2][0].eta_seconds > queued[0][0].eta_seconds  # further back, later done
    for rest in rests[1:]:
        assert _running_steps(rest) == [1, 2, 3]
        assert len(_images(rest)) == 1


def test_compatible_requests_from_different_callers_run_as_one_batch(
    start_server, connect, mint, tiny_model
):
    """Four callers waiting with the same size and steps are served by one pipeline call."""
    gated = FakeRuntime(copy.deepcopy(tiny_model))
    server = start_server(loader=lambda settings, device: gated)
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, 5)
    requests = [(10, 1), (20, 2), (30, 1), (40, 1)]  # (seed, images)
    gated.gate.clear()
    try:
        long_job = busy.stream("occupies the worker", steps=2, width=128, seed=1)
        next(long_job)
        wait_for(lambda: len(gated.calls) == 1, what="the long job started")
        streams = [
            client.stream(f"prompt {seed}", steps=3, seed=seed, num_images=images)
            for client, (seed, images) in zip(callers, requests, strict=True)
        ]
        heads = [next(stream) for stream in streams]
        _wait_until_queued(server.running.engine, 4)
    finally:
        gated.gate.set()
    rests = _drain([long_job, *streams])

    wait_for(lambda: stats.jobs_completed == 5, what="every job counted")
    assert stats.batches_run == 2
    assert len(gated.calls) == 2
    assert sorted(gated.calls[1]) == [10, 20, 21, 30, 40]
    digests = set()
    for head, rest, (seed, count) in zip(heads, rests[1:], requests, strict=True):
        events = [head, *rest]
        images = _images(events)
        assert [i.index for i in images] == list(range(count))
        assert [i.seed for i in images] == [seed + i for i in range(count)]
        assert all(i.steps == 3 and (i.width, i.height) == (64, 64) for i in images)
        assert _running_steps(events) == [1, 2, 3]
        digests.update(i.sha256 for i in images)
    assert len(digests) == 5
    assert _running_steps(rests[0]) == [1, 2]


def test_batched_images_match_the_same_seeds_generated_alone(
    start_server, connect, mint, tiny_model
):
    """Batching is invisible in the pictures; a request of another size is not batched in."""
    gated = FakeRuntime(copy.deepcopy(tiny_model))
    server = start_server(loader=lambda settings, device: gated)
    busy, fox, bird, wide = _callers(server, connect, mint, 4)
    with _worker_held(gated, busy) as blocker:
        streams = [
            fox.stream("a red fox", steps=3, seed=500),
            bird.stream("a blue bird", steps=3, seed=600, num_images=2),
            wide.stream("a red fox", steps=3, seed=700, width=128),
        ]
        for stream in streams:
            next(stream)
        _wait_until_queued(server.running.engine, 3)
    _, fox_events, bird_events, wide_events = _drain([blocker, *streams])

    assert sorted(map(sorted, gated.calls[1:])) == [[500, 600, 601], [700]]
    [fox_batched], birds_batched = _images(fox_events), _images(bird_events)
    [wide_image] = _images(wide_events)
    assert (wide_image.width, wide_image.height) == (128, 64)

    [fox_alone] = fox.generate("a red fox", steps=3, seed=500)
    birds_alone = [bird.generate("a blue bird", steps=3, seed=seed)[0] for seed in (600, 601)]
    assert gated.calls[-3:] == [(500,), (600,), (601,)]
    assert _max_pixel_difference(fox_batched, fox_alone) <= 2
    for batched, alone in zip(birds_batched, birds_alone, strict=True):
        assert (batched.seed, batched.index) == (alone.seed, alone.seed - 600)
        assert _max_pixel_difference(batched, alone) <= 2
    # The check can tell the images apart: each one is its own seed's.
    assert _max_pixel_difference(birds_batched[0], birds_batched[1]) > 2
    assert _max_pixel_difference(fox_batched, birds_batched[0]) > 2


def test_a_cancelled_batch_member_does_not_disturb_the_others(
    start_server, connect, mint, tiny_model
):
    """One caller leaving mid-batch stops only its own job; the others get every step and image."""
    gated = FakeRuntime(copy.deepcopy(tiny_model))
    server = start_server(loader=lambda settings, device: gated)
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, 4)
    with _worker_held(gated, busy) as blocker:
        leaver, *stayers = [
            client.stream("a lighthouse", steps=30, seed=seed)
            for client, seed in zip(callers, (11, 22, 33), strict=True)
        ]
        for stream in (leaver, *stayers):
            next(stream)
        _wait_until_queued(server.running.engine, 3)
    list(blocker)
    for event in leaver:
        if isinstance(event, pb.Progress) and event.step >= 2:
            break
    leaver.close()  # cancels the call
    results = _drain(stayers)

    wait_for(lambda: stats.jobs_cancelled == 1, what="the leaver's job cancelled")
    assert sorted(gated.calls[1]) == [11, 22, 33]
    for events, seed in zip(results, (22, 33), strict=True):
        assert _running_steps(events) == list(range(1, 31))
        [image] = _images(events)
        assert (image.seed, image.steps) == (seed, 30)
    wait_for(lambda: stats.jobs_completed == 3, what="the others completed")
    assert stats.jobs_failed == 0
    assert stats.batches_run == 2


def test_two_workers_run_two_callers_jobs_at_the_same_time(start_server, connect, mint, tiny_model):
    """With two devices configured, a second caller does not wait for the first one's job."""
    together = threading.Barrier(2, timeout=15)

    def meet(step: int) -> None:
        if step == 1:  # both jobs must be past step 1 at once, or this breaks
            together.wait()

    server = start_server(
        loader=lambda settings, device: FakeRuntime(copy.deepcopy(tiny_model), after_step=meet),
        engine={"devices": ["cpu", "cpu"]},
    )
    stats = server.running.engine.stats
    alice, bob = _callers(server, connect, mint, 2)
    first = alice.stream("a fox", steps=20, seed=1)
    second = bob.stream("a bird", steps=20, seed=2, width=128)  # not batchable with the first

    def until_running(stream: Iterator[Any]) -> list[Any]:
        seen = []
        for event in stream:
            seen.append(event)
            if isinstance(event, pb.Progress) and event.state == pb.Progress.STATE_RUNNING:
                return seen
        raise AssertionError("the stream ended before running")

    heads = [until_running(first), until_running(second)]
    assert stats.jobs_completed == 0  # both are running, neither has finished
    rests = _drain([first, second])
    for head, rest, seed in zip(heads, rests, (1, 2), strict=True):
        events = [*head, *rest]
        assert _running_steps(events) == list(range(1, 21))
        [image] = _images(events)
        assert (image.seed, image.steps) == (seed, 20)
    assert stats.jobs_failed == 0
    assert not together.broken


def _out_of_memory(message: str = "CUDA out of memory. Tried to allocate 9 GiB (/opt/secret)"):
    return torch.OutOfMemoryError(message)


def test_a_batch_that_runs_out_of_memory_is_retried_one_job_at_a_time(start_server, connect, mint):
    """Callers whose batch did not fit in device memory still each get their image."""

    def fail(batch: Any) -> None:
        if len(batch.seeds) > 1:
            raise _out_of_memory()

    fake = FakeRuntime(fail=fail)
    server = start_server(loader=lambda settings, device: fake, engine={"warmup": False})
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, 4)
    with _worker_held(fake, busy) as blocker:
        streams = [
            client.stream("a fox", steps=2, seed=seed)
            for client, seed in zip(callers, (7, 8, 9), strict=True)
        ]
        for stream in streams:
            next(stream)
        _wait_until_queued(server.running.engine, 3)
    _, *results = _drain([blocker, *streams])

    assert sorted(fake.calls[1]) == [7, 8, 9]
    assert sorted(fake.calls[2:]) == [(7,), (8,), (9,)]
    for events, seed in zip(results, (7, 8, 9), strict=True):
        [image] = _images(events)
        assert image.seed == seed
        assert _centre_colour(image) == seed_colour(seed)  # its own picture, not a neighbour's
    wait_for(lambda: stats.jobs_completed == 4, what="every job completed")
    assert stats.jobs_failed == 0


def test_a_job_retried_after_running_out_of_memory_counts_once_and_never_steps_back(
    start_server, connect, mint
):
    """A batch that ran out of memory at step 3: each caller sees steps 1..4 once, in order, and
    no queue position after it started running; each job counts as started once."""

    def fail(batch: Any) -> None:
        if len(batch.seeds) > 1:
            raise _out_of_memory()

    fake = FakeRuntime(fail=fail, fail_at_step=2)
    server = start_server(loader=lambda settings, device: fake, engine={"warmup": False})
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, 4)
    with _worker_held(fake, busy) as blocker:
        streams = [
            client.stream("a fox", steps=4, seed=seed)
            for client, seed in zip(callers, (7, 8, 9), strict=True)
        ]
        for stream in streams:
            next(stream)
        _wait_until_queued(server.running.engine, 3)
    _, *results = _drain([blocker, *streams])

    assert sorted(fake.calls[2:]) == [(7,), (8,), (9,)]  # the batch of three was retried
    for events, seed in zip(results, (7, 8, 9), strict=True):
        assert _running_steps(events) == [1, 2, 3, 4]
        progress = [e for e in events if isinstance(e, pb.Progress)]
        first_running = next(
            i for i, e in enumerate(progress) if e.state == pb.Progress.STATE_RUNNING
        )
        assert not _queued(progress[first_running:])
        [image] = _images(events)
        assert (image.seed, image.steps) == (seed, 4)
    wait_for(lambda: stats.jobs_completed == 4, what="every job completed")
    assert stats.jobs_started == 4
    assert stats.jobs_failed == 0


def test_a_batch_size_that_ran_out_of_memory_is_not_gathered_again(start_server, connect, mint):
    """A cuBLAS allocation failure in a batch of three is out of memory: its callers still get
    their images, and three more such jobs run in smaller batches instead of failing again."""

    def fail(batch: Any) -> None:
        if len(batch.seeds) >= 3:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")

    fake = FakeRuntime(fail=fail)
    server = start_server(loader=lambda settings, device: fake, engine={"warmup": False})
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, 4)

    def three_jobs_behind_a_blocker(seeds: tuple[int, ...]) -> list[list[Any]]:
        fake.gate.clear()
        try:
            blocker = busy.stream("occupies the worker", steps=1, seed=1, width=128)
            next(blocker)
            wait_for(lambda: fake.calls and fake.calls[-1] == (1,), what="the blocker started")
            streams = [
                client.stream("a fox", steps=2, seed=seed)
                for client, seed in zip(callers, seeds, strict=True)
            ]
            for stream in streams:
                next(stream)
            _wait_until_queued(server.running.engine, 3)
        finally:
            fake.gate.set()
        return _drain([blocker, *streams])[1:]

    first = three_jobs_behind_a_blocker((7, 8, 9))
    calls_before = len(fake.calls)
    second = three_jobs_behind_a_blocker((10, 11, 12))

    assert sorted(fake.calls[2:calls_before]) == [(7,), (8,), (9,)]  # after the failed three
    later = fake.calls[calls_before + 1 :]
    assert all(len(call) < 3 for call in later)
    assert sorted(seed for call in later for seed in call) == [10, 11, 12]
    for events, seed in zip([*first, *second], (7, 8, 9, 10, 11, 12), strict=True):
        [image] = _images(events)
        assert image.seed == seed
    assert stats.jobs_failed == 0


def test_out_of_memory_fails_only_the_request_that_caused_it(start_server, connect):
    """A request too big for the device is RESOURCE_EXHAUSTED; the next request still works."""

    def fail(batch: Any) -> None:
        if 13 in batch.seeds:
            raise _out_of_memory()

    fake = FakeRuntime(fail=fail)
    server = start_server(loader=lambda settings, device: fake)
    stats = server.running.engine.stats
    client = connect(server)
    with pytest.raises(RateLimited, match="out of memory") as refused:
        client.generate("a fox", steps=2, seed=13)
    assert "/opt/secret" not in refused.value.details
    assert "9 GiB" not in refused.value.details
    [image] = client.generate("a fox", steps=2, seed=14)
    assert image.seed == 14
    assert _centre_colour(image) == seed_colour(14)
    assert (stats.jobs_failed, stats.jobs_completed) == (1, 1)


def test_a_request_predicted_to_exceed_the_memory_budget_is_refused_at_once(
    start_server, connect, tiny_model
):
    """Too big for the device's memory budget: refused before it runs, smaller ones still run."""
    per_megapixel_mb = 100.0
    mib = 1024 * 1024
    weights_mb = tiny_model.weights_bytes / mib
    budget_mb = weights_mb + 10
    # Predicted: weights + 100 MiB per megapixel x images. 64x64 -> +0.4 MiB, 256x256 ->
    # +6.6 MiB (fits), 2 x 256x256 -> +13.1 MiB and 512x512 -> +26.2 MiB (do not fit).
    server = start_server(
        models=[{"activation_mb_per_megapixel": per_megapixel_mb}],
        engine={"memory_budget_mb": budget_mb},
    )
    stats = server.running.engine.stats
    client = connect(server)

    started = time.monotonic()
    with pytest.raises(RateLimited, match="memory budget") as refused:
        client.generate("a fox", steps=50, width=512, height=512)
    assert time.monotonic() - started < 5  # at admission, not after 50 steps of 512x512
    assert f"{int(budget_mb * mib) // mib} MiB memory budget" in refused.value.details
    with pytest.raises(RateLimited, match="memory budget"):
        client.generate("a fox", steps=1, width=256, height=256, num_images=2)
    assert stats.jobs_started == 0

    [image] = client.generate("a fox", steps=1, width=256, height=256)
    assert (image.width, image.height) == (256, 256)
    [image] = client.generate("a fox", steps=2, width=64, height=64)
    assert stats.jobs_started == 2


def test_the_memory_guard_covers_a_model_not_loaded_yet(start_server, connect, tiny_model):
    """A lazily loaded model is guarded from its first request (by its weights on disk)."""
    mib = 1024 * 1024
    budget_mb = tiny_model.weights_bytes / mib + 10
    server = start_server(
        models=[{"activation_mb_per_megapixel": 100.0, "preload": False}],
        engine={"memory_budget_mb": budget_mb},
    )
    with pytest.raises(RateLimited, match="memory budget"):
        connect(server).generate("a fox", steps=1, width=512, height=512)
    assert server.running.engine.stats.jobs_started == 0


def test_a_cold_first_call_does_not_inflate_the_first_estimate(start_server, connect):
    """On a fresh server a 20-step job's first ETA is about 20 steps' time, not the cold start's."""
    step_seconds, cold_seconds = 0.01, 0.5
    fake = FakeRuntime(cold_seconds=cold_seconds, step_seconds=step_seconds)
    server = start_server(loader=lambda settings, device: fake)
    stream = connect(server).stream("a fox", steps=20, seed=1)

    first = next(stream)
    rest = list(stream)

    assert first.state == pb.Progress.STATE_QUEUED
    # The cold call spread over a 4-step warm-up would say 20 x 0.135 s = 2.7 s.
    assert 20 * step_seconds * 0.5 < first.eta_seconds < 0.6
    assert len(_images(rest)) == 1


BATCH = 8
BATCH_STEPS = 100


def test_compatible_jobs_whose_deadline_fits_one_batch_are_all_admitted_and_finish(
    start_server, connect, mint, tiny_model
):
    """Eight callers whose deadline fits one batched call, not eight runs, all get their image;
    a deadline no run could meet is still refused at once with DEADLINE_EXCEEDED."""
    gated = FakeRuntime(copy.deepcopy(tiny_model))
    server = start_server(loader=lambda settings, device: gated)
    stats = server.running.engine.stats
    busy, *callers = _callers(server, connect, mint, BATCH + 1)
    started = time.monotonic()
    busy.generate("one run, timed", steps=BATCH_STEPS, seed=2)
    one_run = time.monotonic() - started
    deadline = 0.6 * BATCH * one_run  # well short of eight runs one after another

    with _worker_held(gated, busy, started_calls=2) as blocker:
        streams = [
            client.stream("a lighthouse", steps=BATCH_STEPS, seed=10 + i, timeout=deadline)
            for i, client in enumerate(callers)
        ]
        heads = [next(stream) for stream in streams]  # a refusal raises here
        _wait_until_queued(server.running.engine, BATCH)
    _, *results = _drain([blocker, *streams])

    assert all(head.state == pb.Progress.STATE_QUEUED for head in heads)
    assert sorted(gated.calls[2]) == [10 + i for i in range(BATCH)]  # one call for all eight
    for events, seed in zip(results, range(10, 10 + BATCH), strict=True):
        [image] = _images(events)
        assert (image.seed, image.steps) == (seed, BATCH_STEPS)

    with pytest.raises(DeadlineExceeded, match="deadline would pass"):  # refused, never run
        callers[0].generate("a lighthouse", steps=BATCH_STEPS, seed=99, timeout=one_run / 4)
    assert stats.jobs_started == BATCH + 2
