"""The stream writer: a send held too long ends the call; slow but moving streams go on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc.aio
import pytest

from pixelgate.server.rpc.stream_writer import StreamWriter


class _Peer:
    """Stands in for a call's context: each write takes `send_seconds`, or never ends."""

    def __init__(self, send_seconds: float | None = 0.0, fail: bool = False) -> None:
        self.send_seconds = send_seconds
        self.fail = fail
        self.written: list[Any] = []
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: Any) -> None:
        if self.fail:
            raise grpc.aio.InternalError('Failed "execute_batch"')
        if self.send_seconds is None:
            await asyncio.Event().wait()  # a reader that never reads
        await asyncio.sleep(self.send_seconds)
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise grpc.aio.AbortError("Locally aborted.")


async def _stream(
    peer: _Peer, messages: int, stall_timeout: float, pause: float = 0.0
) -> StreamWriter:
    writer = StreamWriter(peer, stall_timeout)  # type: ignore[arg-type]
    try:
        for index in range(messages):
            await writer.write(index)
            await asyncio.sleep(pause)
    finally:
        writer.close()
    return writer


def test_a_send_held_past_the_timeout_cancels_the_call():
    """A write its reader never takes ends the call about one timeout later, marked stalled,
    with CANCELLED queued for the reader should it read on."""

    peer = _Peer(send_seconds=None)

    async def run() -> tuple[StreamWriter, float]:
        writer = StreamWriter(peer, 0.1)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await writer.write("stuck")
        waited = time.monotonic() - started
        await asyncio.sleep(0.01)  # the status send runs beside the call's task
        return writer, waited

    writer, waited = asyncio.run(_in_task(run()))
    assert writer.stalled
    assert 0.09 <= waited < 1.0
    assert peer.status is not None and peer.status[0] == grpc.StatusCode.CANCELLED


def test_a_stream_longer_than_the_timeout_is_not_cut_off_while_each_send_is_quick():
    """Twenty sends of 10 ms each outlast a 100 ms timeout in all, and all are written."""
    peer = _Peer(send_seconds=0.01)
    writer = asyncio.run(_in_task(_stream(peer, 20, stall_timeout=0.1)))
    assert peer.written == list(range(20))
    assert not writer.stalled


def test_time_between_sends_is_not_a_stall():
    """While the pipeline runs nothing is being sent: pauses longer than the timeout are fine."""
    peer = _Peer(send_seconds=0.0)
    writer = asyncio.run(_in_task(_stream(peer, 4, stall_timeout=0.05, pause=0.1)))
    assert peer.written == [0, 1, 2, 3]
    assert not writer.stalled


def test_a_send_that_fails_because_the_call_ended_is_a_cancellation():
    """grpcio's ExecuteBatchError (the peer left mid-send) becomes CancelledError, not a crash."""

    async def run() -> StreamWriter:
        writer = StreamWriter(_Peer(fail=True), 1.0)  # type: ignore[arg-type]
        with pytest.raises(asyncio.CancelledError):
            await writer.write("late")
        writer.close()
        return writer

    assert not asyncio.run(_in_task(run())).stalled


async def _in_task(coroutine: Any) -> Any:
    # The writer cancels the task it was made in: give each scenario its own.
    return await asyncio.create_task(coroutine)
