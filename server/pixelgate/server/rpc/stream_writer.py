"""Writing a server stream to a reader that may stall or vanish mid-send.

A send completes once HTTP/2 flow control lets its bytes go: a reader that
stops taking messages, while keeping its call open, holds the next send (and
with it the call's generation slot and finished image) until its own deadline,
if it set one. The writer times each send; one held longer than the stall
timeout cancels the call's task, so the handler's clean-up runs at once.

What grpcio (1.85) offers, read from its aio server and seen in tests: a
cancelled handler task sends nothing (no status, no RST_STREAM), and nothing
in Python resets one server stream. So the writer also sends a CANCELLED
status; it queues behind the data the reader has not taken and reaches a
reader that reads on. One that never reads again keeps only its HTTP/2 stream
(a message and a window of bytes in the transport; no slot, no job) until its
deadline or until its connection closes (`connections.max_age_seconds`).

A send that fails because the call ended under it (the client cancelled, its
deadline passed, the connection dropped) is an ordinary cancellation, not an
error; grpcio would log it at ERROR with a traceback ("ExecuteBatchError
raised in core") were it left to surface from the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc.aio

STALLED_READER = "stalled_reader"
"""The audit reason of a call ended because its reader stopped reading."""

STALLED_DETAILS = "stream cancelled: its reader stopped taking messages"
"""The status message a stalled reader gets, should it read on."""

_ENDING: set[asyncio.Task[None]] = set()
"""Status sends in flight (the loop keeps only weak references to tasks)."""


class StreamWriter:
    """Writes one call's responses; a send its reader holds too long cancels the call.

    One timer per call, armed when a send starts with none armed and re-armed
    only when it fires during a later send: a send costs a counter and a clock
    read, not a timer. Create it in the call's task.
    """

    __slots__ = (
        "_context",
        "_loop",
        "_sending",
        "_sends",
        "_started",
        "_task",
        "_timeout",
        "_timer",
        "stalled",
    )

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], stall_timeout: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a StreamWriter belongs to a call's task")
        self._context = context
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._timeout = stall_timeout
        self._sends = 0
        self._started = 0.0
        self._sending = False
        self._timer: asyncio.TimerHandle | None = None
        self.stalled = False
        """True once a send waited past the stall timeout and the call was cancelled."""

    async def write(self, message: Any) -> None:
        """Sends `message`; raises CancelledError if the call stalls or ends meanwhile."""
        self._sends += 1
        self._started = self._loop.time()
        self._sending = True
        if self._timer is None:
            self._arm()
        try:
            await self._context.write(message)
        except grpc.aio.InternalError:
            # grpcio's ExecuteBatchError: the transport failed the send because the call
            # is over. grpcio reads a cancellation as one and logs it at DEBUG only.
            raise asyncio.CancelledError from None
        finally:
            self._sending = False

    def close(self) -> None:
        """Disarms the timer (the call has ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._started + self._timeout, self._check, self._sends)

    def _check(self, armed_for: int) -> None:
        self._timer = None
        if not self._sending:
            return  # idle between sends (the pipeline is running): not a stall
        if self._sends != armed_for:  # a later send: give it its own full timeout
            self._arm()
            return
        self.stalled = True
        self._task.cancel()
        # Beside the task: the status completes only once the reader takes what precedes it.
        ending = self._loop.create_task(_tell_stalled_reader(self._context))
        _ENDING.add(ending)
        ending.add_done_callback(_ENDING.discard)


async def _tell_stalled_reader(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # Ends when the status is sent (the reader read on) or the call ends otherwise
    # (deadline, cancel, connection closed): both are expected, neither is logged.
    with contextlib.suppress(grpc.aio.AbortError, grpc.aio.InternalError):
        await context.abort(grpc.StatusCode.CANCELLED, STALLED_DETAILS)


__all__ = ["STALLED_DETAILS", "STALLED_READER", "StreamWriter"]
