"""Draining at shutdown: waiting jobs go elsewhere at once, running ones finish, new ones are
refused with the retryable status (UNAVAILABLE with `grpc-retry-pushback-ms`)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from support import FakeRuntime, ServerUnderTest, generation_request, wait_for

from pixelgate.client import GeneratedImage, PixelgateClient
from pixelgate.server.core.config import EngineSettings, ModelSettings
from pixelgate.server.core.errors import PUSHBACK_TRAILER, ReplicaBusy
from pixelgate.server.core.generation import Queued
from pixelgate.server.core.model_card import ModelCard
from pixelgate.server.engine.engine import DRAINING_MESSAGE, GenerationEngine
from pixelgate.server.engine.memory_guard import MemoryGuard
from pixelgate.server.models.registry import ModelRegistry, RegisteredModel
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(90)


def _request(prompt: str, seed: int, steps: int = 2) -> pb.GenerateImageRequest:
    return pb.GenerateImageRequest(prompt=prompt, steps=steps, seed=seed)


def _trailers(error: grpc.RpcError) -> dict[str, Any]:
    return {m.key: m.value for m in error.trailing_metadata() or ()}  # type: ignore[attr-defined]


def _read_to_the_end(call: Any) -> tuple[list[Any], grpc.RpcError | None, float]:
    """Every message of a stream, how it ended (None: OK), and when (time.monotonic())."""
    messages = []
    try:
        for message in call:
            messages.append(message)
    except grpc.RpcError as error:
        return messages, error, time.monotonic()
    return messages, None, time.monotonic()


def _gated_server(start_server: Any) -> tuple[ServerUnderTest, FakeRuntime]:
    """One worker, one job a batch, a model whose calls wait at a gate (closed)."""
    fake = FakeRuntime(step_seconds=0.01)
    server = start_server(
        loader=lambda settings, device: fake,
        engine={"max_batch_images": 1, "warmup": False, "devices": ["cpu"]},
    )
    fake.gate.clear()
    return server, fake


def _wait_until_waiting(server: ServerUnderTest, count: int) -> None:
    def settled() -> bool:
        order = server.running.engine.queue.in_service_order()
        return len(order) == count and not any(job.held for job in order)

    wait_for(settled, what=f"{count} released jobs waiting")


def test_waiting_jobs_are_sent_away_at_once_while_the_running_one_finishes(start_server, channel):
    """stop(grace=10) with one job running and two waiting: the waiting callers get
    UNAVAILABLE with pushback within a second, while the running job is still held at its
    gate; then the running job ends with its image and the server stops."""
    server, fake = _gated_server(start_server)
    stub = pb_grpc.ImageServiceStub(channel(server))
    with ThreadPoolExecutor(3) as pool:
        try:
            running = stub.GenerateImage(_request("runs", 1), timeout=TIMEOUT)
            running_end = pool.submit(_read_to_the_end, running)
            wait_for(lambda: len(fake.calls) == 1, what="the first job started")
            waiting = [
                pool.submit(
                    _read_to_the_end, stub.GenerateImage(_request("waits", seed), timeout=TIMEOUT)
                )
                for seed in (2, 3)
            ]
            _wait_until_waiting(server, 2)

            stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
            stopping = time.monotonic()
            stopper.start()
            for each in waiting:
                messages, error, ended = each.result(timeout=5)
                assert error is not None, "a waiting job ran on a draining replica"
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert error.details() == DRAINING_MESSAGE
                assert _trailers(error)[PUSHBACK_TRAILER] == "100"
                assert ended - stopping < 1.5
                # Its queue position had reached the caller: past gRPC's own retry.
                assert [m.progress.state for m in messages] == [pb.Progress.STATE_QUEUED]
            assert not running_end.done() and len(fake.calls) == 1  # still at its gate
        finally:
            fake.gate.set()
        messages, error, _ = running_end.result(timeout=TIMEOUT)
    assert error is None
    assert any(m.HasField("complete") for m in messages)
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert len(fake.calls) == 1  # the drained jobs never ran
    statuses = sorted(e["status"] for e in server.audit_entries(3))
    assert statuses == ["OK", "UNAVAILABLE", "UNAVAILABLE"]


def test_a_draining_engine_refuses_new_jobs_with_pushback(start_server, channel):
    """Once draining began, a new generation is refused before any response, retryably."""
    server = start_server()
    server.running.engine.drain()
    stub = pb_grpc.ImageServiceStub(channel(server))
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.GenerateImage(_request("late", 1, steps=1), timeout=TIMEOUT))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == DRAINING_MESSAGE
    assert _trailers(refused.value)[PUSHBACK_TRAILER] == "100"
    assert refused.value.initial_metadata() == ()  # nothing reached the caller: retryable


def test_a_fleet_client_goes_to_another_replica_when_one_drains(start_server, pki, mint):
    """A replica that drains (its health not yet seen as NOT_SERVING by the client) refuses
    new jobs with pushback; gRPC's retry sends each one to the other replica."""
    draining, serving = start_server(), start_server()
    client = PixelgateClient(
        f"{draining.target},{serving.target}",
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        token=mint(),
    )
    try:
        draining.running.engine.drain()
        for seed in range(4):
            [image] = client.generate("a fox", steps=1, seed=seed, timeout=TIMEOUT)
            assert isinstance(image, GeneratedImage) and image.steps == 1
    finally:
        client.close()

    def generations(replica: ServerUnderTest) -> list[str]:
        return [
            e["status"] for e in replica.audit_entries(0) if e["method"].endswith("/GenerateImage")
        ]

    wait_for(lambda: len(generations(serving)) >= 4, what="4 audit lines")
    assert generations(serving) == ["OK"] * 4
    refused = generations(draining)
    assert refused and set(refused) == {"UNAVAILABLE"}, refused  # tried there, then retried


def test_drain_ends_waiting_jobs_and_keeps_a_started_one() -> None:
    """engine.drain(): waiting jobs end with ReplicaBusy after their Queued event; a started
    job back in the queue (retried after running out of memory) stays; submit refuses."""
    settings = ModelSettings(id="sd")
    model = RegisteredModel(settings, ModelCard.of(settings, None), ("cpu",), None)
    engine = GenerationEngine(
        ModelRegistry([model], "sd"),
        ["cpu"],  # no worker started: jobs only wait
        settings=EngineSettings(warmup=False),
        loader=lambda settings, device: FakeRuntime(),
        memory=MemoryGuard(None),
    )

    async def scenario() -> None:
        waiting = [engine.submit(generation_request(), caller=f"c{i}") for i in range(2)]
        retried = engine.submit(generation_request(), caller="c2")
        retried.started = True
        engine.drain()
        for job in waiting:
            events = job.events()
            assert isinstance(await anext(events), Queued)
            with pytest.raises(ReplicaBusy, match="shutting down"):
                await anext(events)
        assert engine.queue.in_service_order() == [retried]
        with pytest.raises(ReplicaBusy) as refused:
            engine.submit(generation_request(), caller="c3")
        assert refused.value.trailers == ((PUSHBACK_TRAILER, "100"),)
        assert engine.stats.jobs_failed == 2

    asyncio.run(scenario())
