"""Graceful shutdown: health goes NOT_SERVING, in-flight streams finish, new calls are refused."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixelgate.client import GeneratedImage, Unavailable
from pixelgate.v1 import image_service_pb2 as pb


def test_in_flight_generation_finishes_during_the_grace_period(server, connect, pki):
    """Stopping with a grace period lets a running stream deliver its image."""
    client = connect(server)
    stream = client.stream("a fox", steps=40, seed=3)
    for event in stream:
        if isinstance(event, pb.Progress) and event.step >= 1:
            break

    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    channel = grpc.secure_channel(server.target, credentials)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

    stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()  # an open Watch would hold the server for the whole grace period

    rest = list(stream)
    images = [e for e in rest if isinstance(e, GeneratedImage)]
    assert len(images) == 1 and images[0].steps == 40
    with pytest.raises(Unavailable):
        connect(server).list_models()
    stopper.join(15)
    assert not stopper.is_alive(), "the server waited out the grace period with nothing in flight"
    channel.close()
