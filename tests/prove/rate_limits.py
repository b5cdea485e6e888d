"""Rate-limit exactness: a caller with burst B sending M > B calls at once gets exactly B.

In memory on one server, then across three replicas sharing one Redis, where
the calls are spread over the replicas and the total admitted must still be B.
The buckets refill one call in hours, so nothing refills during the burst.
"""

from __future__ import annotations

import itertools
import time

from pixelgate.client import PixelgateClient, PixelgateError

from .calls import client, in_threads, status_of
from .fleet import ServerProcess
from .plan import Context
from .report import Outcome

THREADS = 12


def _burst(
    ctx: Context, out: Outcome, servers: list[ServerProcess], calls: int, subject: str
) -> None:
    token = ctx.ids.mint(subject, scopes=["models:read"])
    clients = [client(ctx.ids, server.target, token) for server in servers]
    try:
        for each in clients:  # connect first: the burst measures the limiter, not handshakes
            each.health(timeout=10)
        targets = itertools.cycle(clients)
        plan = [next(targets) for _ in range(calls)]

        def one(pixelgate: PixelgateClient) -> None:
            started = time.monotonic()
            try:
                pixelgate.list_models(timeout=10)
                out.record("OK", time.monotonic() - started)
            except PixelgateError as error:
                out.record(status_of(error), time.monotonic() - started)

        hung, errors = in_threads(one, plan, THREADS, timeout=60)
    finally:
        for each in clients:
            each.close()
    for error in errors:
        out.fail(error)
    burst = ctx.sizes.burst
    out.check(hung == 0, f"{hung} calls hung")
    out.check(out.statuses["OK"] == burst, f"admitted {out.statuses['OK']}, burst is {burst}")
    out.check(
        out.statuses["RESOURCE_EXHAUSTED"] == calls - burst,
        f"refused {out.statuses['RESOURCE_EXHAUSTED']} of {calls - burst} over the burst",
    )
    out.check(out.calls == calls, f"{calls - out.calls} calls lost")


def run_memory(ctx: Context, out: Outcome) -> None:
    """One server, in-memory buckets: exactly B of M admitted."""
    _burst(ctx, out, [ctx.server("limited")], ctx.sizes.memory_calls, "burst-memory")
    out.note(f"burst={ctx.sizes.burst}")


def run_replicas(ctx: Context, out: Outcome) -> None:
    """Three replicas on one Redis, calls spread over them: exactly B of M admitted in all."""
    replicas = [ctx.server(f"replica-{i}") for i in range(3)]
    _burst(ctx, out, replicas, ctx.sizes.replica_calls, "burst-replicas")
    out.note(f"burst={ctx.sizes.burst} replicas=3")
