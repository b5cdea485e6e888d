"""A stream whose reader stops taking messages is cut off, its slot and cost released.

A stalled reader is made the way a real one happens: a client starts a
GenerateImage stream, reads a little and then never asks for another message
while keeping the call open. Its HTTP/2 window fills and the server's next
send waits forever; the client channel here keeps that window small (no BDP
probing, 1 KiB lookahead) so the stall comes after a few KiB, not megabytes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from support import FakeRuntime, wait_for

from pixelgate.client.credentials import channel_credentials
from pixelgate.server.core.config import ConfigError, load_settings
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024))
"""Client channel options that keep a stream's receive window to a few KiB."""

STALL_TIMEOUT = 1.0

Stub = pb_grpc.ImageServiceStub


@pytest.fixture
def small_window_stub(pki, mint) -> Iterator[Callable[..., Stub]]:
    """Opens ImageService stubs over mTLS channels whose streams buffer little."""
    channels: list[grpc.Channel] = []

    def _open(server) -> Stub:
        credentials = channel_credentials(
            ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key, token=mint()
        )
        channels.append(grpc.secure_channel(server.target, credentials, options=SMALL_WINDOW))
        return pb_grpc.ImageServiceStub(channels[-1])

    yield _open
    for channel in channels:
        channel.close()


def _read_until(call, kind: str) -> None:
    """Reads the stream up to and including its first `kind` message, then stops."""
    for response in call:
        if response.WhichOneof("event") == kind:
            return
    raise AssertionError(f"the stream ended before any {kind}")


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_reader_that_stops_taking_image_bytes_is_cut_off_and_its_slot_comes_back(
    start_server, small_window_stub, connect, caplog
):
    """The stalled call is ended about one stall timeout after its send stuck, audited as a
    stalled reader; the caller (allowed one generation at a time) can generate again, and
    the stalled client, should it read on, finds CANCELLED, not the rest of the image."""
    server = start_server(
        stream_stall_timeout_seconds=STALL_TIMEOUT,
        chunk_size=1024,
        rate_limit={"max_concurrent_generations": 1},
    )
    stalled = small_window_stub(server).GenerateImage(
        pb.GenerateImageRequest(prompt="a fox", width=128, height=128, steps=1), timeout=30
    )
    _read_until(stalled, "chunk")  # then read nothing more, the call still open
    stalled_at = time.monotonic()

    [entry] = server.audit_entries(1, timeout=10)  # written as the call ends
    assert time.monotonic() - stalled_at < STALL_TIMEOUT + 4
    assert entry["status"] == "CANCELLED"
    assert entry["reason"] == "stalled_reader"
    assert entry["duration_ms"] >= STALL_TIMEOUT * 1000

    [image] = connect(server).generate("a fox again", steps=1)  # one at a time: the slot is back
    assert image.steps == 1
    with pytest.raises(grpc.RpcError) as ended:  # reading on: what was in flight, then the end
        for _ in stalled:
            pass
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    assert "stopped taking messages" in ended.value.details()
    assert _errors(caplog) == []


def test_a_reader_that_stalls_mid_generation_stops_the_pipeline(
    start_server, tiny_model, small_window_stub
):
    """Stalling on progress previews cancels the running job well short of its steps, and
    only the steps run are charged."""
    server = start_server(
        loader=lambda settings, device: FakeRuntime(
            copy.deepcopy(tiny_model), after_step=lambda step: time.sleep(0.05)
        ),
        engine={"warmup": False},  # no step times: the slowed steps are not refused
        stream_stall_timeout_seconds=STALL_TIMEOUT,
    )
    stats = server.running.engine.stats
    steps = 100
    stalled = small_window_stub(server).GenerateImage(
        pb.GenerateImageRequest(
            prompt="a fox", width=512, height=512, steps=steps, preview_every_steps=1
        ),
        timeout=60,
    )
    _read_until(stalled, "progress")

    wait_for(lambda: stats.jobs_cancelled == 1, 15, "the stalled job cancelled")
    assert stats.steps_run < steps
    assert stats.jobs_completed == 0
    [entry] = server.audit_entries(1, timeout=10)
    assert entry["reason"] == "stalled_reader"
    full_cost = 512 * 512 / 512**2 * steps
    assert entry["gpu_cost"] < full_cost  # the steps never run were given back


def test_a_slow_but_steady_reader_is_served_in_full(start_server, small_window_stub):
    """A reader that takes a message every 0.2 s keeps its stream, though the whole stream
    takes longer than the stall timeout: only a send that waits too long counts."""
    server = start_server(stream_stall_timeout_seconds=STALL_TIMEOUT, chunk_size=4096)
    call = small_window_stub(server).GenerateImage(
        pb.GenerateImageRequest(prompt="a fox", width=128, height=128, steps=1), timeout=60
    )
    data = bytearray()
    complete = None
    for response in call:
        time.sleep(0.2)
        if response.WhichOneof("event") == "chunk":
            data += response.chunk.data
        elif response.WhichOneof("event") == "complete":
            complete = response.complete

    assert call.code() == grpc.StatusCode.OK
    assert complete is not None and complete.size_bytes == len(data)
    [entry] = server.audit_entries(1)
    assert entry["status"] == "OK"
    assert "reason" not in entry
    assert entry["duration_ms"] > STALL_TIMEOUT * 1000  # longer than the timeout, in all


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_a_stalled_stream_the_client_ends_leaves_no_error_in_the_log(
    start_server, small_window_stub, caplog, ending
):
    """A client that cancels, or whose deadline passes, while the server's send waits on its
    full window is an ordinary cancellation: audited CANCELLED, no ERROR, no traceback."""
    # The default stall timeout (far away); no step times measured before the first call,
    # which warms the pipeline so the stalled one starts well within its deadline.
    server = start_server(chunk_size=1024, engine={"warmup": False})
    stub = small_window_stub(server)
    request = pb.GenerateImageRequest(prompt="a fox", width=128, height=128, steps=1)
    list(stub.GenerateImage(request, timeout=60))
    stalled = stub.GenerateImage(request, timeout=8 if ending == "deadline" else 60)
    _read_until(stalled, "chunk")
    # Nothing outside the server shows its send waiting; it fills the window in
    # milliseconds, so this pause only makes sure the cancel finds it waiting.
    time.sleep(0.3)
    if ending == "cancel":
        stalled.cancel()

    [_, entry] = server.audit_entries(2, timeout=10)
    assert entry["status"] == "CANCELLED"
    assert "reason" not in entry
    assert _errors(caplog) == []


@pytest.mark.parametrize("value", [0, -1, 3601])
def test_a_stall_timeout_that_is_not_positive_or_over_an_hour_stops_start_up(value):
    """The setting is validated like every other: a bad value is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="stream_stall_timeout_seconds: Input should be"):
        load_settings(None, stream_stall_timeout_seconds=value)
