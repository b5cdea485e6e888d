"""A fleet behind one client target: calls spread, unhealthy replicas skipped, busy ones retried.

Real replicas on loopback, one `ipv4:` target (built by the client from a
comma-separated list); gRPC's round_robin, client-side health checking and
service-config retries do the work. Each replica writes its own audit file,
so the lines say which replica answered what.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from support import ServerUnderTest, wait_for

from pixelgate.client import PixelgateClient, RateLimited
from pixelgate.v1 import image_service_pb2 as pb
from pixelgate.v1 import image_service_pb2_grpc as pb_grpc

TIMEOUT = 10.0
SERVICE = "pixelgate.v1.ImageService"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fleet_client(pki, mint) -> Callable[[Sequence[ServerUnderTest]], PixelgateClient]:
    """Opens one client whose target lists every replica given."""
    opened: list[PixelgateClient] = []

    def _open(replicas: Sequence[ServerUnderTest]) -> PixelgateClient:
        client = PixelgateClient(
            ",".join(replica.target for replica in replicas),
            ca_file=pki.ca_cert,
            cert_file=pki.client_cert,
            key_file=pki.client_key,
            token=mint(),
        )
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


def _calls(replica: ServerUnderTest, method: str) -> list[dict[str, Any]]:
    return [e for e in replica.audit_entries(0) if e["method"].endswith(f"/{method}")]


def _settled(replicas: Sequence[ServerUnderTest], method: str, total: int) -> list[int]:
    """Per replica, how many `method` calls it logged, once `total` lines are in."""
    wait_for(
        lambda: sum(len(_calls(r, method)) for r in replicas) >= total,
        what=f"{total} {method} audit lines",
    )
    return [len(_calls(r, method)) for r in replicas]


def _set_health(replica: ServerUnderTest, status: int) -> None:
    replica.loop.run(replica.running.health.set(SERVICE, status))


def test_calls_spread_over_every_replica(start_server, fleet_client):
    """Calls through one multi-address target reach all three replicas."""
    replicas = [start_server() for _ in range(3)]
    client = fleet_client(replicas)
    for _ in range(30):
        assert client.list_models(timeout=TIMEOUT)
    counts = _settled(replicas, "ListModels", 30)
    assert all(count > 0 for count in counts), counts


def test_a_replica_whose_health_says_not_serving_gets_no_calls(start_server, fleet_client):
    """A replica reporting NOT_SERVING gets no new calls; back to SERVING, it gets them again."""
    healthy, draining = start_server(), start_server()
    _set_health(draining, health_pb2.HealthCheckResponse.NOT_SERVING)
    client = fleet_client([healthy, draining])
    for _ in range(10):
        assert client.list_models(timeout=TIMEOUT)
    assert _settled([healthy, draining], "ListModels", 10) == [10, 0]

    _set_health(draining, health_pb2.HealthCheckResponse.SERVING)

    def reached_again() -> bool:
        client.list_models(timeout=TIMEOUT)
        return bool(_calls(draining, "ListModels"))

    wait_for(reached_again, what="calls on the replica serving again")


def test_a_busy_replica_pushes_back_and_the_call_succeeds_on_another(
    start_server, fleet_client, connect, channel
):
    """A replica with a full queue answers UNAVAILABLE with pushback; gRPC retries elsewhere."""
    busy, free = start_server(engine={"max_queued_jobs": 1}), start_server()
    occupying = connect(busy).stream("keeps the queue full", steps=60)
    next(occupying)
    with pytest.raises(grpc.RpcError) as refused:  # asked directly, the busy one pushes back
        list(
            pb_grpc.ImageServiceStub(channel(busy)).GenerateImage(
                pb.GenerateImageRequest(prompt="a fox", steps=1), timeout=TIMEOUT
            )
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("grpc-retry-pushback-ms", "100") in [
        (m.key, m.value) for m in refused.value.trailing_metadata()
    ]
    client = fleet_client([busy, free])
    for _ in range(4):
        [image] = client.generate("a fox", steps=1, seed=1, timeout=TIMEOUT)
        assert image.steps == 1
    occupying.close()
    wait_for(lambda: len(_calls(free, "GenerateImage")) >= 4, what="4 audit lines")
    assert [e["status"] for e in _calls(free, "GenerateImage")] == ["OK"] * 4
    refused = [e["status"] for e in _calls(busy, "GenerateImage")]
    assert refused.count("UNAVAILABLE") >= 2, refused  # the direct call, and a retried one


def test_a_caller_over_its_rate_is_not_retried(start_server, fleet_client):
    """RESOURCE_EXHAUSTED for a rate limit fails the call at once: one audit line per call."""
    limited = {"rate_limit": {"burst": 1, "requests_per_minute": 1}}
    replicas = [start_server(**limited), start_server(**limited)]
    client = fleet_client(replicas)
    made = 0
    with pytest.raises(RateLimited):
        for _ in range(3):
            made += 1
            client.list_models(timeout=TIMEOUT)
    counts = _settled(replicas, "ListModels", made)
    assert sum(counts) == made, counts
