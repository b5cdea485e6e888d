"""Health while the shared rate-limit Redis is down: what a load balancer sees.

Failing closed, every tokened call is refused while Redis is down, so health says
NOT_SERVING (load balancers route elsewhere) and SERVING again once Redis answers, with
no restart of pixelgate. Failing open, calls go through, so health stays SERVING.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import RedisServer
from support import wait_for

from pixelgate.client import Unavailable
from pixelgate.server.app import SERVICE_NAME

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def redis(tmp_path):
    """A Redis of this test's own, which the test stops and starts again."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _limits(redis: RedisServer, on_failure: str = "fail_closed") -> dict[str, object]:
    return {
        "backend": "redis",
        "redis_url": redis.url,
        "redis_timeout_seconds": 0.2,
        "redis_probe_interval_seconds": 0.1,
        "on_backend_failure": on_failure,
    }


def _statuses(ch: grpc.Channel) -> set[int]:
    """The health status of the whole server and of the ImageService."""
    stub = health_pb2_grpc.HealthStub(ch)
    return {
        stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
        for service in ("", SERVICE_NAME)
    }


def test_failing_closed_health_follows_redis_down_and_back(start_server, connect, channel, redis):
    """Redis stops: health turns NOT_SERVING (and calls are UNAVAILABLE); Redis comes back on
    the same port: health turns SERVING and calls work, with the same pixelgate process."""
    server = start_server(rate_limit=_limits(redis))
    ch, client = channel(server, token=None), connect(server)
    assert _statuses(ch) == {SERVING}
    assert client.list_models(timeout=TIMEOUT)

    redis.stop()
    wait_for(lambda: _statuses(ch) == {NOT_SERVING}, 10, "health NOT_SERVING with Redis down")
    with pytest.raises(Unavailable, match="rate limiting is unavailable"):
        client.list_models(timeout=TIMEOUT)

    redis.start()
    wait_for(lambda: _statuses(ch) == {SERVING}, 10, "health SERVING with Redis back")
    assert client.list_models(timeout=TIMEOUT)


def test_a_replica_failing_open_stays_serving_while_one_failing_closed_does_not(
    start_server, connect, channel, redis
):
    """Two replicas on one Redis, one failing closed and one open: with Redis down, only the
    one that refuses calls leaves the load balancer; the other keeps serving them."""
    closed = start_server(rate_limit=_limits(redis))
    open_ = start_server(rate_limit=_limits(redis, "fail_open"))
    closed_ch, open_ch = channel(closed, token=None), channel(open_, token=None)
    assert _statuses(closed_ch) == _statuses(open_ch) == {SERVING}

    redis.stop()
    wait_for(lambda: _statuses(closed_ch) == {NOT_SERVING}, 10, "the fail-closed replica out")
    assert _statuses(open_ch) == {SERVING}  # it probes as often, and would have turned by now
    assert connect(open_).list_models(timeout=TIMEOUT)
