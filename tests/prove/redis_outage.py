"""Redis killed and restored, then frozen and thawed, under two live replicas.

While Redis is gone or silent every tokened call fails closed (UNAVAILABLE)
within a bound, never hangs, and health says NOT_SERVING (so a load balancer
routes elsewhere); once it is back, calls succeed again on the same server
processes (no restart of pixelgate) and health says SERVING.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pixelgate.client import PixelgateClient, PixelgateError

from .calls import client, status_of
from .fleet import ServerProcess
from .plan import Context
from .report import Outcome

DOWN_BOUND_S = 3.0
"""Longest a call may take to fail while Redis is down (its timeout is 0.5 s)."""

RECOVERY_BOUND_S = 15.0

HEALTH_BOUND_S = 6.0
"""Redis is pinged every 2 s (redis_probe_interval_seconds); health follows within this."""


def _call(pixelgate: PixelgateClient, generate: bool) -> str:
    try:
        if generate:
            pixelgate.generate("a fail-closed check", steps=2, timeout=10)
        else:
            pixelgate.list_models(timeout=10)
        return "OK"
    except PixelgateError as error:
        return status_of(error)


def _while_down(ctx: Context, out: Outcome, replicas: list[ServerProcess], what: str) -> None:
    token = ctx.ids.mint(f"outage-{what}")
    slow = 0
    statuses = set()
    for index in range(ctx.sizes.outage_calls):
        with client(ctx.ids, replicas[index % len(replicas)].target, token) as pixelgate:
            started = time.monotonic()
            status = _call(pixelgate, generate=index % 3 == 2)
            elapsed = time.monotonic() - started
        out.record(status, elapsed)
        statuses.add(status)
        slow += elapsed > DOWN_BOUND_S
    out.check(statuses == {"UNAVAILABLE"}, f"Redis {what}: calls ended {sorted(statuses)}")
    out.check(slow == 0, f"Redis {what}: {slow} calls took over {DOWN_BOUND_S:.0f} s to fail")


def _recovers(ctx: Context, out: Outcome, replicas: list[ServerProcess], what: str) -> float:
    token = ctx.ids.mint(f"recovery-{what}", scopes=["models:read"])
    started = time.monotonic()
    for replica in replicas:
        with client(ctx.ids, replica.target, token) as pixelgate:
            while (status := _call(pixelgate, generate=False)) != "OK":
                if time.monotonic() - started > RECOVERY_BOUND_S:
                    out.fail(f"no recovery {RECOVERY_BOUND_S:.0f} s after Redis {what}: {status}")
                    return time.monotonic() - started
                time.sleep(0.2)
            out.record("OK")
    return time.monotonic() - started


def _health_becomes(ctx: Context, replica: ServerProcess, wanted: str) -> str:
    """Polls the replica's health until it says `wanted` (Redis is probed on a schedule)."""
    deadline = time.monotonic() + HEALTH_BOUND_S
    with client(ctx.ids, replica.target, None) as pixelgate:
        while True:
            try:
                status = pixelgate.health(timeout=5)
            except PixelgateError as error:
                status = status_of(error)
            if status == wanted or time.monotonic() > deadline:
                return status
            time.sleep(0.2)


def _phase(
    ctx: Context,
    out: Outcome,
    replicas: list[ServerProcess],
    what: str,
    down: Callable[[], None],
    up: Callable[[], None],
) -> None:
    down()
    try:
        _while_down(ctx, out, replicas, what)
        health = _health_becomes(ctx, replicas[0], "NOT_SERVING")
        out.note(f"health_{what}={health}")
        out.check(health == "NOT_SERVING", f"health said {health} with Redis {what}")
    finally:
        up()
    out.note(f"recovered_{what}={_recovers(ctx, out, replicas, what):.1f}s")
    health = _health_becomes(ctx, replicas[0], "SERVING")
    out.check(health == "SERVING", f"health said {health} once Redis was back")


def run(ctx: Context, out: Outcome) -> None:
    """Fail closed while Redis is killed or frozen; recover after, with no pixelgate restart."""
    replicas = [ctx.server("replica-0"), ctx.server("replica-1")]
    redis = ctx.fleet.redis
    assert redis is not None
    pids = [replica.pid for replica in replicas]
    out.check(_recovers(ctx, out, replicas, "up") < RECOVERY_BOUND_S, "calls fail with Redis up")

    _phase(ctx, out, replicas, "killed", redis.kill, redis.start)
    _phase(ctx, out, replicas, "frozen", redis.freeze, redis.thaw)

    out.check(
        [r.pid for r in replicas] == pids and all(r.alive() for r in replicas),
        "a replica exited during the outage",
    )
    out.check(
        all(r.stdout().count("serving on port") == 1 for r in replicas), "a replica restarted"
    )
