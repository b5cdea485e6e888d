"""Cancellation storm: streams cancelled at random points leave nothing behind.

Afterwards every slot must be free, proved from outside: each storm caller
(max_concurrent_generations = 2) gets two generations admitted at once, and
the engine's queue admits exactly max_queued_jobs concurrent jobs (one more
is refused as full), which it would not if a cancelled job still held a place.
The process's file descriptors and threads must come back near where they were.
"""

from __future__ import annotations

import random
import time
from typing import Any

import grpc

from .calls import bearer, first_message, generate_request, images_stub, in_threads, tls_channel
from .fleet import ServerProcess
from .plan import Context
from .report import Outcome

STORM_STATUSES = {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
"""How a storm stream may end: done before its cancel point, cancelled, its deadline
passed, refused while its caller's previous cancellation was still being released, or
refused with pushback because the queue was full."""

FD_SLACK = 16
THREAD_SLACK = 8
SETTLE_S = 20.0
LONG_STEPS = 100
"""A probe job's steps: long enough to be still queued or running when it is counted."""


def _storm_stream(ctx: Context, rng: random.Random, stub: Any, token: str, out: Outcome) -> None:
    side = rng.choice((64, 128))
    request = generate_request(
        prompt=ctx.ids.prompt("a storm"),
        width=side,
        height=side,
        steps=rng.randint(2, 30),
        seed=rng.randrange(2**32),
    )
    way = rng.choice(("at-once", "after-messages", "after-messages", "deadline"))
    timeout = rng.uniform(0.05, 1.0) if way == "deadline" else 60.0
    cancel_after = rng.randint(1, 40)
    started = time.monotonic()
    call = stub.GenerateImage(request, metadata=bearer(token), timeout=timeout)
    try:
        if way == "at-once":
            call.cancel()
        for index, _response in enumerate(call):
            if way == "after-messages" and index + 1 >= cancel_after:
                call.cancel()
                break
        status = call.code().name
    except grpc.RpcError as error:
        status = error.code().name
    out.record(status, time.monotonic() - started)


def _admitted(ctx: Context, server: ServerProcess, tokens: list[str]) -> tuple[int, list[str]]:
    """Opens one long stream per token at once; how many were admitted, and the refusals."""
    channel = tls_channel(ctx.ids, server.target)
    stub = images_stub(channel)
    try:
        streams = [
            stub.GenerateImage(
                generate_request(prompt=ctx.ids.prompt("a probe"), steps=LONG_STEPS),
                metadata=bearer(token),
                timeout=30,
            )
            for token in tokens
        ]
        answers = [first_message(stream) for stream in streams]
        for stream in streams:
            stream.cancel()  # type: ignore[no-untyped-call]
    finally:
        channel.close()
    refused = [status for status, message in answers if message is None]
    return len(tokens) - len(refused), refused


def _settled(server: ServerProcess, fds: int, threads: int) -> tuple[int, int] | None:
    """Waits for the process's fds and threads to come back within the slack."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = server.resources()
        if now[0] <= fds + FD_SLACK and now[1] <= threads + THREAD_SLACK:
            return now
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def run(ctx: Context, out: Outcome) -> None:
    """Streams cancelled at random points: no odd status, no leaked slot, job, fd or thread."""
    server = ctx.server("main")
    sizes = ctx.sizes
    fds_before, threads_before = server.resources()
    callers = [
        ctx.ids.mint(f"storm-{i}", scopes=["images:generate"]) for i in range(sizes.storm_threads)
    ]
    per_caller = [sizes.storm_streams // len(callers)] * len(callers)
    per_caller[0] += sizes.storm_streams - sum(per_caller)

    def storm(index: int) -> None:
        rng = ctx.random(f"storm-{index}")
        channel = tls_channel(ctx.ids, server.target)
        try:
            stub = images_stub(channel)
            for _ in range(per_caller[index]):
                _storm_stream(ctx, rng, stub, callers[index], out)
        finally:
            channel.close()

    hung, errors = in_threads(storm, range(len(callers)), len(callers), timeout=240)
    for error in errors:
        out.fail(error)
    out.check(hung == 0, f"{hung} storm callers hung")
    odd = {s: n for s, n in out.statuses.items() if s not in STORM_STATUSES}
    out.check(not odd, f"streams ended {odd}")

    # Slots: each storm caller may run two generations at once, now as before.
    deadline = time.monotonic() + SETTLE_S
    while True:
        admitted, refused = _admitted(ctx, server, [t for t in callers for _ in range(2)])
        if admitted == 2 * len(callers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out.note(f"slots={admitted}/{2 * len(callers)}")
    out.check(admitted == 2 * len(callers), f"caller slots still held: refused {refused}")

    # The queue: exactly max_queued_jobs fit, one more is refused.
    capacity = sizes.max_queued_jobs
    fresh = [
        ctx.ids.mint(f"storm-probe-{i}", scopes=["images:generate"]) for i in range(capacity + 1)
    ]
    deadline = time.monotonic() + SETTLE_S
    while True:
        admitted, refused = _admitted(ctx, server, fresh)
        if admitted >= capacity or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out.note(f"queue={admitted}/{capacity}")
    out.check(
        admitted == capacity and refused == ["UNAVAILABLE"],
        f"queue admitted {admitted} of {capacity}+1 (refused {refused}): jobs leaked",
    )

    settled = _settled(server, fds_before, threads_before)
    after = settled or server.resources()
    out.note(f"fds={fds_before}->{after[0]} threads={threads_before}->{after[1]}")
    out.check(settled is not None, "file descriptors or threads leaked")
