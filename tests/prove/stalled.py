"""Stalled readers: streams whose client stops reading are cancelled by the server.

Each stalled caller (max_concurrent_generations = 2) opens two streams, each
on a connection of its own with a small HTTP/2 window, reads up to the first
image chunk and then reads nothing while keeping the calls open. The server
must end every one within its stall timeout (each gets its audit line, not
OK); then the caller can generate again (its slots came back), and reading on
finds a status, not a whole image, and no hang. One more stalled stream is
cancelled by its own client, which must be an ordinary cancellation.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from pixelgate.client import PixelgateError

from .calls import bearer, client, generate_request, images_stub, status_of, tls_channel
from .fleet import ServerProcess
from .plan import STALL_TIMEOUT_S, Context, stall_setting
from .report import Outcome

SMALL_WINDOW = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024),
    ("grpc.use_local_subchannel_pool", 1),  # a connection per channel, no shared window
)
"""Client channel options that keep a stream's receive window to a few KiB."""

SIDE = 512
"""A 512x512 noise PNG is ~700 KiB: far beyond the window, so the server's send waits."""

END_BOUND_S = STALL_TIMEOUT_S + 12
"""From the stall to the server ending the call: the timeout, the generation, a margin."""


DRAIN_BOUND_S = 10.0
"""Reading on, a stream the server ended must end within this too."""


def _read_until_chunk(call: Any) -> bool:
    for response in call:
        if response.WhichOneof("event") == "chunk":
            return True
    return False


def _drain(call: Any, result: dict[str, str]) -> None:
    try:
        for _ in call:
            pass
        result["status"] = "OK"
    except grpc.RpcError as error:
        result["status"] = status_of(error)


def _is_stalled_call(entry: dict[str, Any]) -> bool:
    subject = (entry.get("principal") or {}).get("sub", "")
    return subject.startswith("stalled-") and (entry.get("request") or {}).get("width") == SIDE


def _generates(ctx: Context, server: ServerProcess, token: str) -> str:
    with client(ctx.ids, server.target, token) as pixelgate:
        try:
            pixelgate.generate(ctx.ids.prompt("after a stall"), steps=2, timeout=30)
            return "OK"
        except PixelgateError as error:
            return status_of(error)


def _cancelled_while_stalled(ctx: Context, server: ServerProcess) -> str:
    """A stalled stream its own client cancels while the server's send waits: an ordinary
    cancellation (audited CANCELLED; the log scan finds no traceback for it)."""
    channel = tls_channel(ctx.ids, server.target, options=SMALL_WINDOW)
    try:
        call = images_stub(channel).GenerateImage(
            generate_request(prompt=ctx.ids.prompt("a stall"), width=SIDE, height=SIDE, steps=2),
            metadata=bearer(ctx.ids.mint("cancels-its-stall", scopes=["images:generate"])),
            timeout=60,
        )
        _read_until_chunk(call)
        time.sleep(0.5)  # the server's send is waiting on the full window by now
        call.cancel()  # type: ignore[no-untyped-call]
        return str(call.code().name)
    finally:
        channel.close()


def run(ctx: Context, out: Outcome) -> None:
    """Stalled streams are ended by the server, audited, and their caller's slots come back."""
    if stall_setting() is None:
        out.fail("the server has no stalled-reader timeout setting")
    server = ctx.server("main")
    channels: list[grpc.Channel] = []
    stalled: list[Any] = []
    callers = [
        ctx.ids.mint(f"stalled-{i}", scopes=["images:generate"])
        for i in range(ctx.sizes.stalled_callers)
    ]
    try:
        for token in callers:
            for _ in range(2):
                channels.append(tls_channel(ctx.ids, server.target, options=SMALL_WINDOW))
                call = images_stub(channels[-1]).GenerateImage(
                    generate_request(
                        prompt=ctx.ids.prompt("a stall"), width=SIDE, height=SIDE, steps=2
                    ),
                    metadata=bearer(token),
                    timeout=60,  # a hang shows as DEADLINE_EXCEEDED at worst
                )
                stalled.append(call)
                out.check(_read_until_chunk(call), "a stalled stream ended before its first chunk")
        stalled_at = time.monotonic()
        out.record(_cancelled_while_stalled(ctx, server))

        # The server ends each stalled call: its audit line is written as it ends.
        ended = server.wait_audit(len(stalled), timeout=END_BOUND_S, where=_is_stalled_call)
        took = time.monotonic() - stalled_at
        reasons = sorted({f"{e['status']}/{e.get('reason', '-')}" for e in ended})
        out.note(f"ended={len(ended)}/{len(stalled)} after={took:.1f}s as={','.join(reasons)}")
        out.check(
            len(ended) == len(stalled),
            f"{len(stalled) - len(ended)} stalled calls still open {END_BOUND_S:.0f} s after"
            " the stall: not cancelled",
        )
        out.check(all(e["status"] != "OK" for e in ended), f"stalled calls audited {reasons}")

        # Each caller (two at a time) generates again: the stalled calls' slots are back.
        refused = [s for s in (_generates(ctx, server, token) for token in callers) if s != "OK"]
        out.check(not refused, f"caller slots still held after the stall: {refused}")

        # Reading on: a stream the server cut off ends with a status, not an image.
        results: list[dict[str, str]] = [{} for _ in stalled]
        readers = [
            threading.Thread(target=_drain, args=(call, result), daemon=True)
            for call, result in zip(stalled, results, strict=True)
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + DRAIN_BOUND_S
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        for result in results:
            out.record(result.get("status", "HUNG"))
        out.check(
            "HUNG" not in out.statuses,
            f"{out.statuses['HUNG']} stalled streams the server ended never ended for the client"
            f" (read on for {DRAIN_BOUND_S:.0f} s: no status)",
        )
        out.check(
            out.statuses["OK"] == 0,
            f"{out.statuses['OK']} stalled streams were served in full, never cut off",
        )
    finally:
        for call in stalled:
            call.cancel()
        for channel in channels:
            channel.close()
