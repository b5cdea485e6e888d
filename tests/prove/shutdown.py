"""SIGTERM mid-stream: in-flight streams finish or end with a status, the process exits 0.

Runs last on the main server, after every other scenario has worked it.
"""

from __future__ import annotations

import signal
import threading
import time

from pixelgate.client import GeneratedImage, PixelgateError

from .calls import check_png, client, status_of
from .plan import GRACE_S, Context
from .report import Outcome

SIZE = (256, 256)
STEPS = 20
TEARDOWN_S = 6.0
"""After serving stops, the interpreter takes seconds to tear down torch, diffusers and
grpcio (3-4 s measured on a 2-core box, an idle server included)."""
CLEAN_ENDINGS = {"OK", "UNAVAILABLE", "CANCELLED"}
"""How an in-flight stream may end: done, or told the server is going away."""


def run(ctx: Context, out: Outcome) -> None:
    """Streams in flight at SIGTERM end cleanly within the grace; new calls are refused;
    the process exits 0 within the grace (and the interpreter's teardown)."""
    server = ctx.server("main")
    running = threading.Semaphore(0)
    endings: list[tuple[str, float]] = []
    lock = threading.Lock()

    def stream(index: int) -> None:
        token = ctx.ids.mint(f"sigterm-{index}", scopes=["images:generate"])
        status, told = "OK", False
        try:
            with client(ctx.ids, server.target, token) as pixelgate:
                for event in pixelgate.stream(
                    ctx.ids.prompt("a drain"),
                    width=SIZE[0],
                    height=SIZE[1],
                    steps=STEPS,
                    timeout=60,
                ):
                    if not told:  # admitted: queued or running, in flight either way
                        told = True
                        running.release()
                    if isinstance(event, GeneratedImage) and (fault := check_png(event, SIZE)):
                        status = f"BAD_IMAGE({fault})"
        except PixelgateError as error:
            status = status_of(error)
        finally:
            if not told:
                running.release()
            with lock:
                endings.append((status, time.monotonic()))

    threads = [
        threading.Thread(target=stream, args=(i,), daemon=True)
        for i in range(ctx.sizes.sigterm_streams)
    ]
    for thread in threads:
        thread.start()
    for _ in threads:
        running.acquire(timeout=60)
    in_flight = len(threads) - len(endings)
    out.note(f"in_flight_at_sigterm={in_flight}")
    out.check(in_flight > 0, "no stream was in flight at SIGTERM")

    server.signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    late = _late_call(ctx, server.target)
    out.check(late == "UNAVAILABLE", f"a call after SIGTERM got {late}")

    for thread in threads:
        thread.join(max(0.0, sigterm_at + GRACE_S + 5 - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    for status, _ in endings:
        out.record(status)
    out.check(hung == 0, f"{hung} streams still open {GRACE_S + 5:.0f} s after SIGTERM")
    unclean = [status for status, _ in endings if status not in CLEAN_ENDINGS]
    out.check(not unclean, f"streams ended {unclean}")

    code = server.wait_exit(GRACE_S + TEARDOWN_S - (time.monotonic() - sigterm_at))
    exited = time.monotonic() - sigterm_at
    drained = max((at for _, at in endings), default=sigterm_at) - sigterm_at
    out.note(f"drained={drained:.1f}s exit={code} after={exited:.1f}s")
    out.check(
        code == 0, f"exit code {code} (None: still running {GRACE_S + TEARDOWN_S:.0f} s after)"
    )


def _late_call(ctx: Context, target: str) -> str:
    """A new call made once the server says it is stopping."""
    token = ctx.ids.mint("sigterm-late", scopes=["models:read"])
    deadline = time.monotonic() + 5
    server = ctx.fleet.servers["main"]
    while "stopping" not in server.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the stop itself follows the log line at once
    with client(ctx.ids, target, token) as pixelgate:
        try:
            pixelgate.list_models(timeout=5)
            return "OK"
        except PixelgateError as error:
            return status_of(error)
