"""Cancelled and expired calls stop the pipeline at its next step and free the worker."""

from __future__ import annotations

import time

import pytest
from support import wait_for

from pixelgate.client import DeadlineExceeded, Unavailable
from pixelgate.v1 import image_service_pb2 as pb


def test_cancelling_mid_stream_stops_the_pipeline(server, connect):
    """A caller that walks away after two steps leaves the pipeline far short of 100 steps."""
    client = connect(server)
    stats = server.running.engine.stats
    stream = client.stream("a fox", steps=100, seed=1)
    for event in stream:
        if isinstance(event, pb.Progress) and event.step >= 2:
            break
    stream.close()  # cancels the call

    wait_for(lambda: stats.jobs_cancelled == 1)
    assert stats.steps_run < 20
    assert stats.jobs_completed == 0
    [image] = client.generate("a fox", steps=2)  # the worker is free again
    assert image.steps == 2


def test_a_deadline_that_cannot_be_met_is_refused_at_admission(server, connect):
    """With step times measured, a job that cannot finish in time is refused before it runs."""
    stats = server.running.engine.stats
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline would pass"):
        connect(server).generate("a fox", steps=100, width=512, height=512, timeout=1.0)
    assert time.monotonic() - started < 0.9  # refused at once, not after waiting
    assert stats.jobs_started == 0


def test_an_expired_deadline_stops_the_pipeline(start_server, connect):
    """A call whose deadline passes mid-run gets DEADLINE_EXCEEDED and its job stops early."""
    server = start_server(engine={"warmup": False})  # no step times yet: nothing refused
    stats = server.running.engine.stats
    with pytest.raises(DeadlineExceeded):
        connect(server).generate("a fox", steps=100, timeout=0.5)
    wait_for(lambda: stats.jobs_cancelled == 1)
    assert stats.jobs_started == 1
    assert stats.steps_run < 100


def test_a_job_cancelled_while_queued_never_runs(server, connect):
    """A queued job whose caller leaves is dropped before it starts."""
    client = connect(server)
    stats = server.running.engine.stats
    running = client.stream("first", steps=60, seed=1)
    next(running)  # queued
    next(running)  # step 1: the worker is busy
    queued = client.stream("second", steps=60, seed=2)
    first_event = next(queued)
    assert first_event.state == pb.Progress.STATE_QUEUED
    assert first_event.queue_position == 1
    queued.close()
    running.close()
    wait_for(lambda: stats.jobs_cancelled == 2)
    assert stats.jobs_started == 1


def test_a_full_queue_is_unavailable_at_once(start_server, connect):
    """Beyond max_queued_jobs a generation is refused immediately, not queued forever."""
    server = start_server(engine={"max_queued_jobs": 1})
    client = connect(server)
    busy = client.stream("first", steps=60)
    next(busy)
    with pytest.raises(Unavailable, match="queue is full"):
        client.generate("second", steps=2)
    busy.close()
