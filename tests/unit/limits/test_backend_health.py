"""Health that follows the rate-limit backend: the probe, the gate, Redis's ping."""

from __future__ import annotations

import asyncio
import socket

import pytest
from grpc_health.v1 import health, health_pb2

from pixelgate.server.core.errors import Unavailable
from pixelgate.server.core.quota import Decision, Limit
from pixelgate.server.limits.backend_probe import BackendProbe, ServingHealth
from pixelgate.server.limits.buckets import BackendUnavailable, Limiter
from pixelgate.server.limits.redis_backend import RedisBackend

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
A_LIMIT = Limit("requests", capacity=3, per_second=0.5)


class _Backend:
    """A backend that answers while `up`, counting pings."""

    def __init__(self) -> None:
        self.up = True
        self.pings = 0
        self.pinged = asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        self.pinged.set()
        if not self.up:
            raise BackendUnavailable("down")

    async def take(self, key: str, limit: Limit, cost: float) -> Decision:
        if not self.up:
            raise BackendUnavailable("down")
        return Decision(True, limit.capacity - cost, 0.0, 0.0)

    async def give_back(self, key: str, limit: Limit, amount: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Changes:
    """Records what a probe reports."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self.changed = asyncio.Event()

    async def __call__(self, reachable: bool) -> None:
        self.seen.append(reachable)
        self.changed.set()


async def _until(condition, event: asyncio.Event) -> None:
    """Waits (5 s at most) until `condition` holds, looking again each time `event` is set."""
    async with asyncio.timeout(5):
        while True:
            event.clear()
            if condition():
                return
            await event.wait()


def test_the_probe_reports_each_change_of_reachability_once() -> None:
    """Down is reported at the first failed ping, up at the first answer; repeats are not."""
    backend, changes = _Backend(), _Changes()
    probe = BackendProbe(backend, interval_seconds=60, on_change=changes)

    async def scenario() -> None:
        assert await probe.check() is True
        backend.up = False
        assert await probe.check() is False
        assert await probe.check() is False
        backend.up = True
        assert await probe.check() is True

    asyncio.run(scenario())
    assert changes.seen == [False, True]
    assert backend.pings == 4


def test_the_probe_pings_every_interval() -> None:
    """Left running, the probe pings again each interval and reports an outage it finds."""
    backend, changes = _Backend(), _Changes()
    probe = BackendProbe(backend, interval_seconds=0.01, on_change=changes)

    async def scenario() -> None:
        running = asyncio.create_task(probe.run())
        await _until(lambda: backend.pings >= 3, backend.pinged)
        backend.up = False
        await _until(lambda: changes.seen == [False], changes.changed)
        running.cancel()

    asyncio.run(scenario())


def test_a_call_that_fails_makes_the_probe_ping_at_once() -> None:
    """A limiter call that cannot reach the backend wakes the probe now, not at its next
    interval (an hour here); a failure the probe already knows of pings nothing more."""
    backend, changes = _Backend(), _Changes()
    probe = BackendProbe(backend, interval_seconds=3600, on_change=changes)
    limiter = Limiter(backend, observer=probe)

    async def scenario() -> None:
        running = asyncio.create_task(probe.run())
        await _until(lambda: backend.pings == 1, backend.pinged)
        backend.up = False
        with pytest.raises(Unavailable):
            await limiter.take("alice", A_LIMIT)
        await _until(lambda: changes.seen == [False], changes.changed)
        with pytest.raises(Unavailable):
            await limiter.take("alice", A_LIMIT)
        for _ in range(20):  # turns for a wrongly woken probe to ping (it must not)
            await asyncio.sleep(0)
        assert backend.pings == 2
        backend.up = True
        assert (await limiter.take("alice", A_LIMIT)).allowed  # an answer: ping to confirm
        await _until(lambda: changes.seen == [False, True], changes.changed)
        running.cancel()

    asyncio.run(scenario())


def test_an_unexpected_probe_error_counts_as_unreachable() -> None:
    """A ping that fails in a way nobody foresaw does not leave health SERVING."""
    changes = _Changes()

    class _Broken(_Backend):
        async def ping(self) -> None:
            raise RuntimeError("bug")

    probe = BackendProbe(_Broken(), interval_seconds=60, on_change=changes)
    assert asyncio.run(probe.check()) is False
    assert changes.seen == [False]


def _status(servicer, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return asyncio.run(servicer.Check(request, None)).status


def test_health_is_serving_only_while_every_condition_holds() -> None:
    """The model ready and the backend reachable: SERVING; either missing: NOT_SERVING, for
    the whole server and the service alike. Redis coming back before the model is ready
    does not make health SERVING."""
    servicer = health.aio.HealthServicer()
    gate = ServingHealth(servicer, ("", "pixelgate.v1.ImageService"), ("model", "limits"))

    def statuses() -> set[int]:
        return {_status(servicer, service) for service in ("", "pixelgate.v1.ImageService")}

    asyncio.run(gate.set("limits", True))
    assert statuses() == {NOT_SERVING}  # the model is not ready yet
    asyncio.run(gate.set("model", True))
    assert statuses() == {SERVING}
    asyncio.run(gate.set("limits", False))
    assert statuses() == {NOT_SERVING}
    asyncio.run(gate.set("limits", True))
    assert statuses() == {SERVING}


def test_redis_ping_fails_within_its_timeout_when_nothing_answers() -> None:
    """Redis's ping, used by the probe, becomes BackendUnavailable, not a hang or a crash."""
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        backend = RedisBackend.from_url(
            f"redis://127.0.0.1:{port}/0", key_prefix="t:", timeout_seconds=0.2
        )

        async def attempt() -> None:
            try:
                async with asyncio.timeout(2):
                    await backend.ping()
            finally:
                await backend.aclose()

        with pytest.raises(BackendUnavailable):
            asyncio.run(attempt())


def test_redis_ping_answers_when_redis_is_up(redis_url: str) -> None:
    """Against a live Redis the ping returns."""
    backend = RedisBackend.from_url(redis_url, key_prefix="t:", timeout_seconds=0.5)

    async def attempt() -> None:
        try:
            await backend.ping()
        finally:
            await backend.aclose()

    asyncio.run(attempt())
